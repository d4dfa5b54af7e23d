"""Distillation knobs: the shipped spaces compile and replay with optuna's FixedTrial."""

from __future__ import annotations

import pytest
import yaml
from optuna.trial import FixedTrial

from compress.recipe import parse_recipe
from compress.search.space import load_space
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


def test_default_miniature_space_is_joint() -> None:
    space = load_space("miniature")
    stages = {"structure", "training", "numeric", "runtime"}
    from compress.transforms.base import registry

    assert {registry()[k].stage.name for k in space.spec.transforms} == stages
    combined = space.suggest(
        FixedTrial(
            {
                "structure": "blocks",
                "block_preset": "small",
                "student": "trajectory",
                "trajectory": "trajectory",
                "student_steps": 3,
                "lora_rank": 0,
                "full_lr": 0.0002,
                "precision": "mixed",
                "quant_down": "none",
                "quant_up": "int8_dynamic",
                "caching": "none",
                "compiled": True,
            }
        )
    )
    assert kinds(combined) == ["prune_blocks", "distill", "distill_steps", "quantize", "compile"]
    assert combined.transforms[2].student_steps == 3
    assert combined.transforms[2].method == "trajectory"
    lcm = space.suggest(
        FixedTrial(
            {
                "structure": "none",
                "student": "consistency",
                "consistency": "consistency",
                "lora_rank": 16,
                "lora_lr": 0.001,
                "precision": "full",
                "lcm_scheduler": "lcm",
                "lcm_steps": 3,
                "lcm_guidance": 1.0,
                "caching": "deepcache",
                "cache_interval": 2,
                "cache_branch": 1,
                "cache_schedule": "uniform",
                "compiled": False,
            }
        )
    )
    assert kinds(lcm) == ["distill_steps", "sampler", "cache"]  # cache after the sampler
    assert (lcm.transforms[1].scheduler, lcm.transforms[1].steps) == ("lcm", 3)
    plain = space.suggest(
        FixedTrial(
            {
                "structure": "none",
                "student": "none",
                "precision": "full",
                "scheduler": "unipc",
                "steps": 8,
                "guidance_scale": 3.0,
                "caching": "none",
                "compiled": False,
            }
        )
    )
    assert kinds(plain) == ["sampler"]


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_gpu_spaces_search_every_stage_with_nothing_commented_out(name: str) -> None:
    text = (SPACES_DIR / f"{name}.yaml").read_text()
    assert "#~" not in text
    space = load_space(name)
    params = {
        "structure": "blocks",
        "block_preset": "small",
        "student": "steps",
        "step_method": "consistency",
        "student_steps": 4,
        "lora_rank": 64,
        "precision": "mixed",
        "quant_down": "int8_dynamic",
        "quant_mid": "none",
        "quant_up": "float8_dynamic",
        "caching": "none",
        "compiled": True,
        "compile_mode": "max-autotune-no-cudagraphs",
    }
    if name == "sdxl":
        params["transformer_depth"] = "half"
    recipe = space.suggest(FixedTrial(params))
    assert kinds(recipe) == ["prune_blocks", "distill", "distill_steps", "quantize", "compile"]
    assert recipe.transforms[2].lora_rank == 64
    assert recipe.transforms[4].mode == "max-autotune-no-cudagraphs"
