"""Loading from local folders, the built-in name, bad paths; fingerprints and mismatches."""

from __future__ import annotations

from pathlib import Path

import pytest

from compress.apply import apply_recipe
from compress.errors import CompressError, FingerprintMismatch
from compress.models.fingerprint import fingerprint
from compress.models.loading import load_pipeline, resolve
from compress.recipe import Recipe
from compress.transforms.runtime.sampler import SamplerConfig


def test_load_local_sd_folder(tiny_dir: Path) -> None:
    pipe = load_pipeline(str(tiny_dir))
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    fp = fingerprint(pipe)
    assert fp.block_out_channels == [32, 64] and fp.layers_per_block == 2


def test_load_local_sdxl_folder(tiny_sdxl_dir: Path) -> None:
    pipe = load_pipeline(str(tiny_sdxl_dir), dtype="float32")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert fingerprint(pipe).addition_embed_type == "text_time"


@pytest.mark.parametrize("bad", ["/no/such/folder", "./relative-missing", "not a hub id"])
def test_missing_model_is_a_clear_error(bad: str) -> None:
    with pytest.raises(CompressError, match="not found"):
        resolve(bad)


def test_folder_without_model_index(tmp_path: Path) -> None:
    with pytest.raises(CompressError, match="model_index.json"):
        resolve(str(tmp_path))


def test_incomplete_folder_is_a_clear_error(tiny_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text((tiny_dir / "model_index.json").read_text())
    with pytest.raises(CompressError, match="could not load"):
        load_pipeline(str(broken))


def test_hub_id_is_passed_through() -> None:
    assert resolve("some-org/some-model") == "some-org/some-model"


def test_bad_dtype(tiny_dir: Path) -> None:
    with pytest.raises(CompressError, match="float16"):
        load_pipeline(str(tiny_dir), dtype="int3")


def test_fingerprint_mismatch_lists_fields(tiny_dir: Path, tiny_sdxl_dir: Path) -> None:
    sd, sdxl = load_pipeline(str(tiny_dir)), load_pipeline(str(tiny_sdxl_dir))
    recipe = Recipe(name="made-for-sd", base=fingerprint(sd), transforms=[SamplerConfig()])
    with pytest.raises(FingerprintMismatch) as err:
        apply_recipe(sdxl, recipe)
    msg = str(err.value)
    for field in ("addition_embed_type", "cross_attention_dim", "down_block_types"):
        assert field in msg
    assert "layers_per_block" not in msg.replace("transformer_layers_per_block", "")
