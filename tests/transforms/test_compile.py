"""compile: torch.compile, channels-last, fused QKV and the SDPA kernel as a recipe transform,
replayed by compress.load; the saved weights are the ones it was given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import compress
from compress.apply import apply_recipe
from compress.artifact import save_artifact
from compress.context import RunContext
from compress.errors import CompressError, RecipeError
from compress.evaluate import EvalSettings, measure_latency
from compress.generate import generate
from compress.models.runtime import is_compiled
from compress.models.tiny import build_tiny_pipeline, build_tiny_sdxl_pipeline
from compress.recipe import Recipe, parse_recipe
from compress.search.speed import parent_transforms
from compress.transforms.runtime.compile import CompileConfig, apply_compile

PROMPTS = ["a red seven on a blue background", "a green digit two"]


def images(pipe, steps: int = 4, **call) -> np.ndarray:
    out = generate(pipe, PROMPTS, [0, 1], output_type="np", num_inference_steps=steps, **call)
    return np.asarray(out)


def compile_recipe(**fields) -> Recipe:
    return parse_recipe({"name": "compiled", "transforms": [{"kind": "compile", **fields}]})


def test_bad_input_is_rejected(tiny_pipe) -> None:
    with pytest.raises(RecipeError, match="mode"):
        compile_recipe(mode="reduce-overhead")
    with pytest.raises(CompressError, match="on a CPU use default, flash or math"):
        apply_compile(tiny_pipe, CompileConfig(attention="cudnn"), RunContext())
    assert not is_compiled(tiny_pipe)  # refused before any change
    apply_compile(tiny_pipe, CompileConfig(), RunContext())
    with pytest.raises(CompressError, match="already compiled"):
        apply_compile(tiny_pipe, CompileConfig(), RunContext())


def test_quantized_candidate_and_parent_share_the_compile_setting() -> None:
    recipe = parse_recipe(
        {
            "name": "q",
            "transforms": [
                {"kind": "quantize"},
                {"kind": "compile", "mode": "max-autotune"},
                {"kind": "sampler", "steps": 8},
            ],
        }
    )
    parent = parent_transforms(recipe)
    assert [t.kind for t in parent] == ["compile", "sampler"]
    assert parent[0].mode == "max-autotune"


@pytest.mark.parametrize("model", ["miniature", "tiny-sdxl"])
def test_load_replays_compile_and_matches_the_uncompiled_artifact(
    model: str, tmp_path: Path, monkeypatch
) -> None:
    from diffusers import DiffusionPipeline

    # The eager backend traces the same graphs (fullgraph: a graph break fails) without inductor's
    # C++ build; test_inductor_compiles_a_tiny_pipeline runs inductor itself.
    monkeypatch.setenv("COMPRESS_COMPILE_BACKEND", "eager")
    if model == "miniature":
        from compress.models.loading import load_pipeline

        pipe = load_pipeline("miniature")
    else:
        pipe = build_tiny_sdxl_pipeline()
    given = {p: getattr(pipe, p).state_dict() for p in ("unet", "vae")}
    given = {p: {k: v.clone() for k, v in sd.items()} for p, sd in given.items()}
    applied = apply_recipe(pipe, compile_recipe(attention="math"))
    md = applied.records[0].metadata
    assert md["compiled"] == ["denoiser", "vae_decode"] and md["dynamic"] is False
    assert md["fused_qkv"]["denoiser"] > 0 and md["channels_last"] == ["denoiser", "vae"]
    out = save_artifact(pipe, applied, tmp_path / "artifact")

    # the transform changes no weights: plain diffusers loads exactly the ones it was given
    plain = DiffusionPipeline.from_pretrained(out, torch_dtype=torch.float32)
    plain.set_progress_bar_config(disable=True)
    for part, state in given.items():
        saved = getattr(plain, part).state_dict()
        assert saved.keys() == state.keys()
        assert all(torch.equal(saved[k], state[k]) for k in state)

    loaded = compress.load(str(out))
    assert is_compiled(loaded) and not is_compiled(plain)
    # plain diffusers samples at its defaults; the artifact keeps the model's own (recipe.yaml)
    own = {k: v for k, v in applied.base_call.items() if k != "num_inference_steps"}
    np.testing.assert_allclose(images(loaded), images(plain, **own), atol=2e-3)


def test_non_native_artifact_replays_compile_after_its_weights(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COMPRESS_COMPILE_BACKEND", "eager")
    pipe = build_tiny_pipeline()
    recipe = parse_recipe(
        {
            "name": "pc",
            "transforms": [{"kind": "prune_channels", "ratio": 0.25}, {"kind": "compile"}],
        }
    )
    applied = apply_recipe(pipe, recipe)
    assert not applied.native
    before = images(pipe)
    loaded = compress.load(str(save_artifact(pipe, applied, tmp_path / "a")))
    assert is_compiled(loaded)
    np.testing.assert_array_equal(images(loaded), before)


def test_inductor_compiled_artifact_equals_eager_within_float_reordering(tmp_path: Path) -> None:
    """Inductor itself, once, as a user meets it: a compile-only recipe applied to the miniature,
    saved and loaded with compress.load, samples the uncompiled miniature's images within 1e-4
    (inductor reorders float32 sums; measured 8.7e-6 at 4 steps). The artifact keeps the
    miniature's own call (guidance 4.0): before it did, the reload sampled at diffusers' 7.5 and
    differed by 0.55. Compile time is reported apart from latency, and the evaluation setting
    `compile` leaves an already compiled pipeline as it is."""
    from compress.models.loading import load_pipeline

    reference = images(load_pipeline("miniature"))
    pipe = load_pipeline("miniature")
    out = save_artifact(pipe, apply_recipe(pipe, compile_recipe()), tmp_path / "compiled")
    loaded = compress.load(str(out))
    assert is_compiled(loaded)
    np.testing.assert_allclose(images(loaded), reference, atol=1e-4, rtol=0)
    net = loaded.unet
    settings = EvalSettings(steps=4, timed_runs=2, warmup=1, compile=True, metric="fidelity")
    result = measure_latency(loaded, settings)
    assert loaded.unet is net  # not compiled a second time
    assert result.compile_ms is not None and result.median_ms > 0
