"""prune_blocks: BK-SDM presets and names, standard configs, exact restore, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compress.apply import apply_recipe, restore
from compress.context import RunContext
from compress.errors import CompressError, RecipeError
from compress.models.tiny import build_tiny_pipeline, build_tiny_sdxl_pipeline
from compress.models.unet import count_params, example_inputs, feature_pairs, forward
from compress.recipe import Recipe, parse_recipe
from compress.transforms.prune.blocks import PruneBlocksConfig, apply_prune_blocks

CONFIGS = [
    PruneBlocksConfig(preset="base"),
    PruneBlocksConfig(preset="small"),
    PruneBlocksConfig(preset="tiny"),
    PruneBlocksConfig(remove=("down_blocks.1.1", "up_blocks.0.1", "mid_block")),
    PruneBlocksConfig(preset="base", transformer_depth={"down_blocks.1": 1, "mid_block": 1}),
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_config_round_trips_through_recipe_yaml(cfg: PruneBlocksConfig) -> None:
    import yaml

    text = Recipe(name="r", transforms=[cfg]).to_yaml()
    assert parse_recipe(yaml.safe_load(text)).transforms == [cfg]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"remove": ["down_block.1"]}, "not block names"),
        ({"remove": ["mid_block", "mid_block"]}, "twice"),
        ({}, "nothing to prune"),
        ({"preset": "huge"}, "preset"),
        ({"transformer_depth": {"down_blocks.1": 0}}, "values >= 1"),
        ({"preset": "base", "ratio": 0.5}, "ratio"),
    ],
)
def test_bad_configs_are_rejected_by_the_schema(data: dict, match: str) -> None:
    recipe = {"name": "r", "transforms": [{"kind": "prune_blocks", **data}]}
    with pytest.raises(RecipeError, match=match):
        parse_recipe(recipe)


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        (PruneBlocksConfig(remove=("down_blocks.2.1", "up_blocks.0.1")), "down_blocks 0-1"),
        (PruneBlocksConfig(transformer_depth={"down_blocks.1": 2, "mid_block": 2}), "depths"),
        (PruneBlocksConfig(remove=("down_blocks.0.0", "down_blocks.0.1")), "every pair"),
        (PruneBlocksConfig(remove=("down_blocks.0.1",)), "as many pairs"),
        (PruneBlocksConfig(preset="tiny"), "same width"),
        (PruneBlocksConfig(remove=("down_blocks.0",)), "innermost stage"),
        (PruneBlocksConfig(remove=("up_blocks.1.0", "down_blocks.0.1")), "no longer fit"),
    ],
)
def test_impossible_configs_fail_before_any_work(cfg: PruneBlocksConfig, match: str) -> None:
    pipe = build_tiny_pipeline()
    unet, n = pipe.unet, count_params(pipe.unet)
    with pytest.raises(CompressError, match=match):
        apply_prune_blocks(pipe, cfg, RunContext())
    assert pipe.unet is unet and count_params(unet) == n


def test_sdxl_depth_must_name_the_tied_mid_block() -> None:
    pipe = build_tiny_sdxl_pipeline()
    with pytest.raises(CompressError, match="mid_block: 1"):
        apply_prune_blocks(
            pipe, PruneBlocksConfig(transformer_depth={"down_blocks.1": 1}), RunContext()
        )


def test_small_preset_copies_bk_sdm_pairs_and_lowers_params() -> None:
    pipe = build_tiny_pipeline()
    old = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    ctx = RunContext()
    md = apply_prune_blocks(pipe, PruneBlocksConfig(preset="small"), ctx)
    unet = pipe.unet
    assert unet.config.layers_per_block == [1, 1] and unet.config.mid_block_type is None
    assert md["params"] == count_params(unet) < md["before"]["params"]
    assert md["removed"] == sorted(
        ["down_blocks.0.1", "down_blocks.1.1", "up_blocks.0.1", "up_blocks.1.1", "mid_block"]
    )
    new = unet.state_dict()
    # the first down pair stays; an up block keeps its first and last pair (BK-SDM)
    torch.testing.assert_close(
        new["down_blocks.0.attentions.0.proj_in.weight"],
        old["down_blocks.0.attentions.0.proj_in.weight"],
    )
    torch.testing.assert_close(
        new["up_blocks.0.resnets.1.conv1.weight"], old["up_blocks.0.resnets.2.conv1.weight"]
    )
    assert feature_pairs(unet)[-1] == ("up_blocks.1", "up_blocks.1")
    assert forward(unet, example_inputs(unet)).shape[1] == 4


@pytest.mark.parametrize("build", [build_tiny_pipeline, build_tiny_sdxl_pipeline])
def test_saved_folder_loads_with_plain_diffusers(build, tmp_path: Path) -> None:
    from diffusers import DiffusionPipeline

    depth = {"down_blocks.1": 1, "mid_block": 1} if build is build_tiny_sdxl_pipeline else {}
    pipe = build()
    apply_prune_blocks(
        pipe, PruneBlocksConfig(preset="base", transformer_depth=depth), RunContext()
    )
    pipe.save_pretrained(tmp_path, safe_serialization=True)
    plain = DiffusionPipeline.from_pretrained(tmp_path)
    assert plain.unet.config.layers_per_block == [1, 1]
    a, b = pipe.unet.state_dict(), plain.unet.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    inputs = example_inputs(pipe.unet)
    with torch.no_grad():  # equal weights; memory-mapped tensors may differ in the last ulp
        torch.testing.assert_close(
            forward(plain.unet, inputs), forward(pipe.unet, inputs), rtol=0, atol=1e-5
        )


def test_restore_reproduces_identical_weights() -> None:
    pipe = build_tiny_pipeline()
    recipe = Recipe(name="r", transforms=[PruneBlocksConfig(preset="small")])
    applied = apply_recipe(pipe, recipe)
    fresh = build_tiny_pipeline()
    restore(fresh, applied)
    a, b = pipe.unet.state_dict(), fresh.unet.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    from compress.errors import RestoreMismatch

    with pytest.raises(RestoreMismatch, match="layers_per_block"):
        restore(fresh, applied)  # already pruned: the recorded layout no longer matches
