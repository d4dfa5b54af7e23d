"""prune_channels: torch-pruning groups, protected layers, exact restore, non-native artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from compress.apply import apply_recipe, restore
from compress.artifact import load_artifact, save_artifact
from compress.context import RunContext
from compress.errors import CompressError, RecipeError, RestoreMismatch
from compress.models.tiny import build_tiny_pipeline, build_tiny_sdxl_pipeline
from compress.models.unet import (
    count_params,
    example_inputs,
    feature_channels,
    forward,
)
from compress.recipe import Recipe, parse_recipe
from compress.transforms.prune.blocks import PruneBlocksConfig, apply_prune_blocks
from compress.transforms.prune.channels import PruneChannelsConfig, apply_prune_channels

PROMPTS = ["a red digit seven", "the blue digit two", "a green one", "an eight"]


def _out(pipe) -> torch.Tensor:
    with torch.no_grad():
        return forward(pipe.unet, example_inputs(pipe.unet))


@pytest.mark.parametrize(
    "cfg",
    [
        PruneChannelsConfig(),
        PruneChannelsConfig(ratio=0.5, importance="taylor", calibration_prompts=2),
        PruneChannelsConfig(stage_ratios=(0.0, 0.5), prune_heads=True, ignore=("re:conv_.*",)),
    ],
)
def test_config_round_trips_through_recipe_yaml(cfg: PruneChannelsConfig) -> None:
    text = Recipe(name="r", transforms=[cfg]).to_yaml()
    assert parse_recipe(yaml.safe_load(text)).transforms == [cfg]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"ratio": 1.0}, "ratio: Input should be less than 1"),
        ({"ratio": -0.1}, "ratio"),
        ({"stage_ratios": [0.2, 1.5]}, r"\[0, 1\)"),
        ({"ignore": ["re:("]}, "regular expression"),
        ({"importance": "random"}, "importance"),
    ],
)
def test_bad_configs_are_rejected_by_the_schema(data: dict, match: str) -> None:
    with pytest.raises(RecipeError, match=match):
        parse_recipe({"name": "r", "transforms": [{"kind": "prune_channels", **data}]})


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        (PruneChannelsConfig(stage_ratios=(0.1, 0.2, 0.3)), "has 2 stages"),
        (PruneChannelsConfig(ignore=("conv_inn",)), "matches no module"),
        (PruneChannelsConfig(ratio=0.9), "would empty"),
        (PruneChannelsConfig(importance="taylor"), "needs prompts"),
    ],
)
def test_impossible_configs_fail_before_any_work(cfg: PruneChannelsConfig, match: str) -> None:
    pipe = build_tiny_pipeline()
    n = count_params(pipe.unet)
    with pytest.raises(CompressError, match=match):
        apply_prune_channels(pipe, cfg, RunContext())
    assert count_params(pipe.unet) == n


def test_zero_ratio_changes_nothing() -> None:
    pipe = build_tiny_pipeline()
    before = _out(pipe)
    md = apply_prune_channels(pipe, PruneChannelsConfig(ratio=0.0), RunContext())
    assert md["groups"] == [] and md["params"] == md["params_before"]
    torch.testing.assert_close(_out(pipe), before, rtol=0, atol=0)


@pytest.mark.parametrize("build", [build_tiny_pipeline, build_tiny_sdxl_pipeline])
def test_params_go_down_and_protected_layers_stay(build) -> None:
    pipe = build()
    keep = ("conv_in.weight", "conv_out.weight", "time_embedding.linear_2.weight")
    shapes = {k: v.shape for k, v in pipe.unet.state_dict().items() if k in keep}
    md = apply_prune_channels(pipe, PruneChannelsConfig(ratio=0.25), RunContext())
    assert md["params"] == count_params(pipe.unet) < 0.75 * md["params_before"]
    assert {k: pipe.unet.state_dict()[k].shape for k in keep} == shapes
    for m in pipe.unet.modules():  # GroupNorm groups and attention heads stay whole
        if isinstance(m, torch.nn.GroupNorm):
            assert m.num_channels % m.num_groups == 0 and m.weight.numel() == m.num_channels
    out = _out(pipe)
    assert out.shape[1] == 4 and torch.isfinite(out).all()
    kept = feature_channels(pipe.unet)["down_blocks.1"]
    assert len(kept) < 64 and kept == sorted(set(kept))


def test_taylor_importance_uses_the_pipelines_own_samples() -> None:
    pipe = build_tiny_pipeline()
    cfg = PruneChannelsConfig(importance="taylor", calibration_prompts=2, calibration_steps=2)
    md = apply_prune_channels(pipe, cfg, RunContext(prompts=PROMPTS))
    mag = build_tiny_pipeline()
    md_mag = apply_prune_channels(mag, PruneChannelsConfig(), RunContext())
    assert md["params"] == md_mag["params"]  # same widths, chosen by another criterion
    assert [g["kept"] for g in md["groups"]] != [g["kept"] for g in md_mag["groups"]]
    assert all(p.grad is None for p in pipe.unet.parameters())


def test_restore_is_exact_and_artifact_reloads(tmp_path: Path) -> None:
    cfgs = [PruneBlocksConfig(preset="base"), PruneChannelsConfig(stage_ratios=(0.25, 0.5))]
    pipe = build_tiny_pipeline()
    applied = apply_recipe(pipe, Recipe(name="r", transforms=cfgs))
    assert not applied.native
    fresh = build_tiny_pipeline()
    restore(fresh, applied)
    a, b = pipe.unet.state_dict(), fresh.unet.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert feature_channels(fresh.unet) == feature_channels(pipe.unet)
    with pytest.raises(RestoreMismatch):
        restore(build_tiny_sdxl_pipeline(), applied)

    out = save_artifact(pipe, applied, tmp_path / "a")
    loaded = load_artifact(out)
    c = loaded.unet.state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a)
    torch.testing.assert_close(_out(loaded), _out(pipe), rtol=0, atol=1e-5)


def test_blocks_cannot_follow_channels() -> None:
    pipe = build_tiny_pipeline()
    apply_prune_channels(pipe, PruneChannelsConfig(), RunContext())
    with pytest.raises(CompressError, match="before prune_channels"):
        apply_prune_blocks(pipe, PruneBlocksConfig(preset="base"), RunContext())


def test_another_checkpoint_gets_its_own_importance() -> None:
    cfg = PruneChannelsConfig(ratio=0.25)
    a, b = build_tiny_pipeline(seed=0), build_tiny_pipeline(seed=1)
    ka = apply_prune_channels(a, cfg, RunContext())["groups"]
    kb = apply_prune_channels(b, cfg, RunContext())["groups"]
    assert [g["root"] for g in ka] == [g["root"] for g in kb]  # same structure and widths
    assert [len(g["kept"]["indices"]) for g in ka] == [len(g["kept"]["indices"]) for g in kb]
    assert [g["kept"] for g in ka] != [g["kept"] for g in kb]  # chosen on each one's weights


def test_frozen_unet_under_inference_mode_still_prunes() -> None:
    pipe = build_tiny_pipeline()
    pipe.unet.requires_grad_(False)
    with torch.inference_mode():
        md = apply_prune_channels(pipe, PruneChannelsConfig(ratio=0.25), RunContext())
    assert md["params"] < md["params_before"]
    assert not any(p.requires_grad for p in pipe.unet.parameters())
    with pytest.raises(CompressError, match="removed no channel"):
        apply_prune_channels(
            build_tiny_pipeline(), PruneChannelsConfig(ignore=("re:.*",)), RunContext()
        )
