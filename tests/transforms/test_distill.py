"""distill: recovery KD (task + output + BK-SDM feature losses) on the shared training loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from compress.apply import apply_recipe
from compress.context import RunContext
from compress.errors import CompressError, RecipeError
from compress.models.tiny import build_tiny_pipeline
from compress.recipe import Recipe, parse_recipe
from compress.transforms.distill.recovery import DistillConfig, apply_distill
from compress.transforms.prune.blocks import PruneBlocksConfig
from compress.transforms.prune.channels import PruneChannelsConfig

PROMPTS = ["a red digit seven", "the blue digit two", "a green one", "an eight"]
FAST = {"steps": 2, "batch_size": 2, "samples": 2, "teacher_steps": 2}


def test_config_round_trips_and_rejects_bad_input() -> None:
    cfg = DistillConfig(steps=10, data="prompts", feature_weight=0.5, mixed_precision="bf16")
    text = Recipe(name="r", transforms=[PruneBlocksConfig(preset="small"), cfg]).to_yaml()
    assert parse_recipe(yaml.safe_load(text)).transforms[1] == cfg
    for bad, match in [
        ({"task_weight": 0, "output_weight": 0, "feature_weight": 0}, "must be > 0"),
        ({"data": "laion"}, "data"),
        ({"lr": 0}, "lr"),
    ]:
        with pytest.raises(RecipeError, match=match):
            parse_recipe({"name": "r", "transforms": [{"kind": "distill", **bad}]})
    with pytest.raises(RecipeError, match="ordered structure"):  # training after structure
        parse_recipe(
            {
                "name": "r",
                "transforms": [cfg.model_dump(), {"kind": "prune_blocks", "preset": "base"}],
            }
        )


def test_needs_a_teacher_and_data() -> None:
    pipe = build_tiny_pipeline()
    with pytest.raises(CompressError, match="teacher"):
        apply_distill(pipe, DistillConfig(**FAST), RunContext())
    with pytest.raises(CompressError, match="training data"):
        apply_distill(pipe, DistillConfig(**FAST), RunContext(teacher=build_tiny_pipeline()))


@pytest.mark.parametrize(
    "structure",
    [[PruneBlocksConfig(preset="small")], [PruneChannelsConfig(stage_ratios=(0.25, 0.5))]],
)
def test_short_recovery_lowers_the_loss(structure, tmp_path: Path) -> None:
    pipe = build_tiny_pipeline()
    ctx = RunContext(prompts=PROMPTS, out_dir=tmp_path)
    cfg = DistillConfig(steps=15, batch_size=4, samples=8, teacher_steps=2, lr=1e-3)
    applied = apply_recipe(pipe, Recipe(name="r", transforms=[*structure, cfg]), ctx)
    res = ctx.cache["distill"]
    assert res.steps == 15 and set(res.parts) == {"task", "out", "feat"}
    assert res.mean_loss(first=False) < 0.7 * res.mean_loss(first=True)
    assert np.mean(res.parts["feat"][-5:]) < np.mean(res.parts["feat"][:5])
    md = applied.records[-1].metadata
    assert md["data"]["source"] == "prompts" and md["steps"] == 15
    assert (tmp_path / "distill" / "checkpoint-15" / "trainer.json").is_file()
    assert not pipe.unet.training


def test_trains_on_a_folder_of_captioned_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i, caption in enumerate(PROMPTS):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png"
        )
        (tmp_path / f"{i}.txt").write_text(caption)
    pipe = build_tiny_pipeline()
    ctx = RunContext(teacher=build_tiny_pipeline(), data=tmp_path)
    md = apply_distill(pipe, DistillConfig(**FAST), ctx)
    assert md["data"] == {"source": "images", "samples": 4}
    (tmp_path / "3.txt").unlink()
    with pytest.raises(CompressError, match="without a caption"):
        apply_distill(pipe, DistillConfig(**FAST), ctx)
