"""PixArt, SD3 and Sana pipelines: built tiny in code, saved, loaded, fingerprinted."""

from __future__ import annotations

from pathlib import Path

import pytest

from compress.apply import check_fingerprint
from compress.errors import FingerprintMismatch
from compress.models.fingerprint import Fingerprint, fingerprint
from compress.models.loading import load_pipeline
from compress.models.tiny import (
    build_tiny_pipeline,
    build_tiny_pixart_pipeline,
    build_tiny_sana_pipeline,
    build_tiny_sd3_pipeline,
)
from compress.recipe import Recipe
from compress.transforms.runtime.sampler import SamplerConfig

BUILDERS = {
    "pixart": (build_tiny_pixart_pipeline, "PixArtSigmaPipeline", "epsilon"),
    "sd3": (build_tiny_sd3_pipeline, "StableDiffusion3Pipeline", "flow"),
    "sana": (build_tiny_sana_pipeline, "SanaPipeline", "flow"),
}


@pytest.mark.parametrize("name", BUILDERS)
def test_saved_pipeline_loads_with_a_transformer_fingerprint(name: str, tmp_path: Path) -> None:
    build, cls, prediction = BUILDERS[name]
    built = build()
    built.save_pretrained(tmp_path / name)
    pipe = load_pipeline(str(tmp_path / name))
    assert type(pipe).__name__ == cls
    fp = fingerprint(pipe)
    assert fp == fingerprint(built)
    assert fp.denoiser == type(pipe.transformer).__name__
    assert (fp.num_layers, fp.prediction_type, fp.block_out_channels) == (4, prediction, None)
    assert fp.describe() == f"{fp.denoiser} (4 blocks)"


def test_recipe_for_one_transformer_is_refused_on_another() -> None:
    pixart, sd3 = build_tiny_pixart_pipeline(), build_tiny_sd3_pipeline()
    recipe = Recipe(name="made-for-pixart", base=fingerprint(pixart), transforms=[SamplerConfig()])
    with pytest.raises(FingerprintMismatch) as err:
        check_fingerprint(sd3, recipe)
    for field in ("denoiser", "prediction_type", "joint_attention_dim", "caption_channels"):
        assert field in str(err.value)


def test_a_fingerprint_written_before_transformers_still_matches() -> None:
    """Recipes recorded before transformer fields existed hold only the UNet ones."""
    old = {
        "denoiser": "UNet2DConditionModel",
        "in_channels": 4,
        "out_channels": 4,
        "sample_size": 8,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [32, 64],
        "layers_per_block": 2,
        "transformer_layers_per_block": 1,
        "attention_head_dim": 8,
        "num_attention_heads": None,
        "cross_attention_dim": 32,
        "time_cond_proj_dim": None,
        "addition_embed_type": None,
        "prediction_type": "epsilon",
    }
    assert Fingerprint(**old).differences(fingerprint(build_tiny_pipeline())) == []
