"""The shipped BK-SDM-like recipes and the miniature pruning search space."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import FixedTrial

from compress.context import RunContext
from compress.errors import CompressError
from compress.models.tiny import build_tiny_pipeline
from compress.recipe import load_recipe
from compress.search.space import load_space
from compress.transforms.prune.blocks import apply_prune_blocks

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.mark.parametrize("preset", ["base", "small", "tiny"])
def test_bk_sdm_recipes_validate_and_prune(preset: str) -> None:
    recipe = load_recipe(RECIPES / f"bk-sdm-{preset}-like.yaml")
    assert [t.kind for t in recipe.transforms] == ["prune_blocks", "distill"]
    prune = recipe.transforms[0]
    pipe = build_tiny_pipeline()
    if preset == "tiny":  # the tiny model's stages differ in width, like the miniature's
        with pytest.raises(CompressError, match="same width"):
            apply_prune_blocks(pipe, prune, RunContext())
        return
    md = apply_prune_blocks(pipe, prune, RunContext())
    assert md["params"] < md["before"]["params"]


def test_pruning_space_builds_a_valid_recipe_at_every_point() -> None:
    space = load_space("miniature-pruning")
    kinds = set()
    for point in space.grid():
        recipe = space.suggest(FixedTrial(point))
        kinds.add(tuple(t.kind for t in recipe.transforms))
    assert kinds == {
        ("sampler",),
        ("prune_blocks", "distill", "sampler"),
        ("prune_channels", "distill", "sampler"),
    }
