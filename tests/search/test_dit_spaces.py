"""The shipped transformer spaces (pixart, sd3): valid, and sampling covers all four stages."""

from __future__ import annotations

import optuna
import pytest

from compress.search.space import load_space
from compress.transforms.base import registry


@pytest.mark.parametrize("name", ["pixart", "sd3"])
def test_transformer_spaces_sample_every_stage(name: str) -> None:
    space = load_space(name)
    sampler = optuna.samplers.RandomSampler(seed=0)
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=sampler)
    stages, kinds = set(), set()
    for _ in range(40):
        trial = study.ask()
        recipe = space.suggest(trial)
        stages |= {registry()[t.kind].stage.name for t in recipe.transforms}
        kinds |= {t.kind for t in recipe.transforms}
        for t in recipe.transforms:
            if t.kind == "sampler" and name == "sd3":
                assert t.scheduler.startswith("flow-")
            if t.kind == "prune_blocks":
                assert t.importance and t.calibration.prompts == 8
        study.tell(trial, [1.0, 1.0])
    assert stages == {"structure", "training", "numeric", "runtime"}
    assert kinds == {"prune_blocks", "distill", "distill_steps", "quantize", "sampler"}
