"""Distillation knobs: the shipped spaces compile and replay with optuna's FixedTrial."""

from __future__ import annotations

import pytest
import yaml
from optuna.trial import FixedTrial

from compress.recipe import parse_recipe
from compress.search.space import load_space, parse_space
from compress.shipped import SPACES_DIR


def kinds(recipe) -> list[str]:
    return [t.kind for t in recipe.transforms]


def test_miniature_distill_space_builds_each_method() -> None:
    space = load_space("miniature-distill")
    lcm = space.suggest(
        FixedTrial(
            {
                "method": "steps",
                "step_method": "consistency",
                "student_steps": 2,
                "guidance_embedding": False,
                "lora_rank": 8,
            }
        )
    )
    assert kinds(lcm) == ["distill_steps"]  # no sampler: the student sets its own
    [cfg] = lcm.transforms
    assert (cfg.student_steps, cfg.lora_rank, cfg.guidance_embedding) == (2, 8, False)
    assert cfg.data == "miniature-digits" and cfg.guidance_scale == 4.0
    assert parse_recipe(yaml.safe_load(lcm.to_yaml())) == lcm

    embedded = space.suggest(
        FixedTrial(
            {
                "method": "steps",
                "step_method": "trajectory",
                "student_steps": 1,
                "guidance_embedding": True,
            }
        )
    )
    [cfg] = embedded.transforms
    assert cfg.method == "trajectory" and cfg.guidance_embedding and cfg.lora_rank == 0
    with pytest.raises(ValueError, match="lora_rank"):  # asked only without an embedding
        space.suggest(
            FixedTrial(
                {
                    "method": "steps",
                    "step_method": "consistency",
                    "student_steps": 1,
                    "guidance_embedding": False,
                }
            )
        )

    guided = space.suggest(FixedTrial({"method": "guidance", "steps": 8}))
    assert kinds(guided) == ["distill_guidance", "sampler"]
    assert guided.transforms[1].steps == 8
    assert kinds(space.suggest(FixedTrial({"method": "none", "steps": 20}))) == ["sampler"]
    # none and guidance: 5 step counts each; steps: 2 methods x 4 counts x (embedding or 3 ranks)
    assert space.size() == 5 + 5 + 2 * 4 * (1 + 3)


def test_default_miniature_space_has_no_distillation() -> None:
    space = load_space("miniature")
    assert not {"distill_guidance", "distill_steps"} & set(space.spec.transforms)


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_commented_distillation_knobs_compile(name: str) -> None:
    """The `#~` block of the GPU spaces, uncommented, gives valid distillation recipes."""
    text = (SPACES_DIR / f"{name}.yaml").read_text()
    assert "#~" in text and "distill_steps" not in load_space(name).spec.transforms
    space = parse_space(yaml.safe_load(text.replace("#~", "")), f"{name} (uncommented)")
    lcm = space.suggest(
        FixedTrial(
            {
                "method": "steps",
                "step_method": "consistency",
                "student_steps": 4,
                "guidance_embedding": False,
                "lora_rank": 16,
                "precision": "full",
            }
        )
    )
    assert kinds(lcm) == ["distill_steps"] and lcm.transforms[0].lora_rank == 16
    params = {
        "method": "guidance",
        "scheduler": "euler",
        "karras_sigmas": False,
        "steps": 8,
        "guidance_scale": 5.0,
        "precision": "full",
    }
    assert kinds(space.suggest(FixedTrial(params))) == ["distill_guidance", "sampler"]
