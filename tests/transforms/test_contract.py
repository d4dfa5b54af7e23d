"""One contract every registered transform honours: its config round-trips; apply, save and
reload give identical images; restore on a fresh copy reproduces them; every pair of runtime
transforms loads as it was applied, whichever order the recipe lists them in. On a UNet pipeline
and on a diffusion transformer (PixArt), both built here with plain diffusers at sizes the
project's own builders do not use, with call defaults of their own (as the miniature has) that
an artifact must keep."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from unseen_pipelines import build_unseen_pixart_pipeline, build_unseen_unet_pipeline

from compress.apply import apply_recipe, restore
from compress.artifact import load_artifact, save_artifact
from compress.context import RunContext
from compress.generate import call_defaults, generate, set_call_defaults
from compress.recipe import Recipe, load_recipe
from compress.transforms.base import Stage, TransformConfig, config_adapter, registry
from compress.transforms.distill.guidance import DistillGuidanceConfig
from compress.transforms.distill.recovery import DistillConfig
from compress.transforms.distill.steps import DistillStepsConfig
from compress.transforms.prune.blocks import PruneBlocksConfig
from compress.transforms.prune.channels import PruneChannelsConfig
from compress.transforms.quantize.ptq import QuantizeConfig
from compress.transforms.quantize.qat import QATConfig
from compress.transforms.runtime.cache import CacheConfig
from compress.transforms.runtime.compile import CompileConfig
from compress.transforms.runtime.sampler import SamplerConfig

PROMPTS = ["a red seven on a blue background", "a green digit two"]
SEEDS = [0, 1]

# kind -> (example config, run context factory). Every registered kind must appear here.
EXAMPLES: dict[str, tuple[TransformConfig, Callable[[], RunContext]]] = {
    "sampler": (SamplerConfig(scheduler="euler", steps=3, guidance_scale=4.0), RunContext),
    "cache": (CacheConfig(interval=2, branch=1), RunContext),
    "compile": (CompileConfig(attention="math"), RunContext),
    "prune_blocks": (PruneBlocksConfig(preset="small"), RunContext),
    "prune_channels": (PruneChannelsConfig(ratio=0.25), RunContext),
    "distill": (
        DistillConfig(steps=2, batch_size=2, samples=2, teacher_steps=2),
        lambda: RunContext(prompts=PROMPTS),
    ),
    "distill_guidance": (
        DistillGuidanceConfig(steps=2, batch_size=2, samples=2, teacher_steps=2, embedding_dim=8),
        lambda: RunContext(prompts=PROMPTS),
    ),
    "distill_steps": (
        DistillStepsConfig(
            steps=2, batch_size=2, samples=2, teacher_steps=2, student_steps=2, lora_rank=2
        ),
        lambda: RunContext(prompts=PROMPTS),
    ),
    "quantize": (
        QuantizeConfig(
            rules=[
                {"match": "re:.*attn1\\..*", "format": "int8_dynamic"},
                {"match": "re:up_blocks\\..*ff\\.net\\.2", "format": "intx4_weight_only"},
                {"match": "re:.*", "format": "int8_weight_only"},
            ]
        ),
        RunContext,
    ),
    "qat": (
        QATConfig(
            rules=[{"match": "up_blocks", "format": "int8_dynamic"}],
            steps=2,
            samples=2,
            batch_size=2,
            teacher_steps=2,
        ),
        lambda: RunContext(prompts=PROMPTS),
    ),
}


# kinds whose effect is a hook installed at load time: the folder holds the unchanged model
RUNTIME_HOOKS = {"cache"}
# The same kinds on a PixArt transformer (block names and LoRA-free students differ).
DIT_EXAMPLES: dict[str, tuple[TransformConfig, Callable[[], RunContext]]] = {
    **EXAMPLES,
    "cache": (CacheConfig(method="pyramid_attention_broadcast", interval=2), RunContext),
    "prune_blocks": (PruneBlocksConfig(every=2), RunContext),
    "distill_steps": (
        DistillStepsConfig(
            method="trajectory",
            steps=2,
            batch_size=2,
            samples=2,
            teacher_steps=2,
            student_steps=2,
            teacher_substeps=2,
        ),
        lambda: RunContext(prompts=PROMPTS),
    ),
    "quantize": (
        QuantizeConfig(
            attention="int8_dynamic",
            rules=[
                {"match": "re:.*blocks\\.2\\..*ff\\.net\\.2", "format": "intx4_weight_only"},
                {"match": "re:.*", "format": "int8_weight_only"},
            ],
        ),
        RunContext,
    ),
    "qat": (
        QATConfig(
            rules=[{"match": "transformer_blocks.2", "format": "int8_dynamic"}],
            steps=2,
            samples=2,
            batch_size=2,
            teacher_steps=2,
        ),
        lambda: RunContext(prompts=PROMPTS),
    ),
}
# How each test pipeline is sampled when a call names nothing: its own defaults, not diffusers'.
OWN_CALL = {"num_inference_steps": 4, "guidance_scale": 3.5}


def _with_own_call(build: Callable[[], object]) -> Callable[[], object]:
    def built():  # noqa: ANN202
        pipe = build()
        set_call_defaults(pipe, **OWN_CALL)
        return pipe

    return built


FAMILIES = {
    "unet": (_with_own_call(build_unseen_unet_pipeline), EXAMPLES),
    "pixart": (_with_own_call(build_unseen_pixart_pipeline), DIT_EXAMPLES),
}
CASES = [(f, k) for f, (_, examples) in FAMILIES.items() for k in sorted(examples)]
RUNTIME = sorted(k for k, spec in registry().items() if spec.stage == Stage.runtime)
PAIRS = [(f, *pair) for f in FAMILIES for pair in itertools.combinations(RUNTIME, 2)]


@pytest.fixture(autouse=True)
def _eager_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    # compile's contract is its wiring (dynamo traces the same graphs); inductor's kernels are
    # tested once in test_compile.py
    monkeypatch.setenv("COMPRESS_COMPILE_BACKEND", "eager")


def test_every_registered_transform_has_an_example() -> None:
    assert set(registry()) == set(EXAMPLES) == set(DIT_EXAMPLES)


@pytest.mark.parametrize("family,kind", CASES)
def test_config_round_trips(family: str, kind: str) -> None:
    cfg, _ = FAMILIES[family][1][kind]
    data = cfg.model_dump(mode="json")
    assert config_adapter().validate_python([data])[0] == cfg
    assert type(cfg).model_validate_json(cfg.model_dump_json()) == cfg


def images(pipe, **kw) -> np.ndarray:
    """The 8-bit images a user sees (float outputs may differ in the last ulp across layouts)."""
    return np.stack([np.asarray(im) for im in generate(pipe, PROMPTS, SEEDS, **kw)])


def same_after_loading(loaded: np.ndarray, before: np.ndarray, family: str) -> None:
    """Identical images; for PixArt up to float rounding. Weights loaded from safetensors are not
    64-byte aligned and some of the tiny PixArt's small CPU matrix products then round their
    last bit differently (a freshly built copy loaded the same way differs alike): a few of its
    8-bit values move by one level."""
    if family == "unet":
        np.testing.assert_array_equal(loaded, before)
        return
    diff = np.abs(loaded.astype(int) - before)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


@pytest.mark.parametrize("family,kind", CASES)
def test_apply_save_reload_identical(family: str, kind: str, tmp_path: Path) -> None:
    from diffusers import DiffusionPipeline

    from compress.models.denoiser import denoiser

    build, examples = FAMILIES[family]
    cfg, make_ctx = examples[kind]
    pipe = build()
    applied = apply_recipe(pipe, Recipe(name=f"contract-{kind}", transforms=[cfg]), make_ctx())
    before = images(pipe)
    assert before.std() > 0

    out = save_artifact(pipe, applied, tmp_path / "artifact")
    assert load_recipe(out / "recipe.yaml") == applied
    loaded = load_artifact(out)
    after = images(loaded)
    same_after_loading(after, before, family)

    if applied.native:  # plain diffusers, with the call arguments a user reads from the recipe
        plain = DiffusionPipeline.from_pretrained(out, torch_dtype=denoiser(pipe).dtype)
        plain.set_progress_bar_config(disable=True)
        shown = images(plain, **call_defaults(pipe))
        if kind in RUNTIME_HOOKS:  # not in the folder: plain diffusers samples without them
            same_after_loading(shown, images(build()), family)
        elif kind == "compile":  # plain diffusers runs uncompiled, QKV unfused: as reloading
            same_after_loading(shown, after, family)
        else:
            np.testing.assert_array_equal(shown, after)

    fresh = build()
    restore(fresh, applied, ctx=make_ctx())  # transforms re-run from data get it again
    np.testing.assert_array_equal(images(fresh), before)


@pytest.mark.parametrize("family,first,second", PAIRS)
def test_runtime_pairs_load_as_applied_in_either_order(
    family: str, first: str, second: str, tmp_path: Path
) -> None:
    """Runtime transforms run in the registry's order (sampler, cache, compile) whatever order a
    recipe lists them in, so both orders give the same pipeline, and each artifact's replay, which
    runs in that order too, gives the images the in-memory pipeline gave."""
    build, examples = FAMILIES[family]
    seen = []
    for order in ((first, second), (second, first)):
        pipe = build()
        recipe = Recipe(name="-".join(order), transforms=[examples[k][0] for k in order])
        applied = apply_recipe(pipe, recipe)
        before = images(pipe)
        out = save_artifact(pipe, applied, tmp_path / "-".join(order))
        same_after_loading(images(load_artifact(out)), before, family)
        seen.append((before, {r.kind: r.metadata for r in applied.records}))
    np.testing.assert_array_equal(seen[0][0], seen[1][0])
    assert seen[0][1] == seen[1][1]  # each transform recorded the same, in either order


def test_a_cache_listed_before_its_sampler_loads_on_the_samplers_steps(tmp_path: Path) -> None:
    """The recipe of the report: DeepCache (interval 3) then a 20-step sampler. The cache records
    the full steps of the call that runs (20 steps), and the artifact loads with it."""
    from compress.transforms.runtime.cache import cache_stats

    pipe = FAMILIES["unet"][0]()
    cfgs = [CacheConfig(interval=3), SamplerConfig(scheduler="dpmsolver++", steps=20)]
    applied = apply_recipe(pipe, Recipe(name="cache-then-sampler", transforms=cfgs))
    cache = applied.records[0].metadata
    assert cache["steps"] == 20 and cache["full_steps"] == [0, 3, 6, 9, 12, 15, 18]
    loaded = load_artifact(save_artifact(pipe, applied, tmp_path / "a"))
    generate(loaded, PROMPTS[:1], [0])
    assert cache_stats(loaded) == {"denoiser_calls": 20, "full_calls": 7, "steps": 20}
