"""The rows of the GPU check (`scripts/gpu_check.sh`): each a recipe of the project's own
transforms, plus at most one structural step that has no training-free transform. Rows name
the denoiser family they apply to (UNet-only: BK-SDM blocks, guidance embedding, DeepCache).

A new row is one more `Row(...)` in `ROWS`; `compress.bench.gpu_check` builds, times and
reports every row the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from compress.errors import CompressError

BASELINE = {"kind": "sampler", "scheduler": "dpmsolver++", "steps": 25, "guidance_scale": 7.5}
COMPILE = {"kind": "compile", "mode": "default"}  # max-autotune would not fit the check's budget
GUIDANCE_EMBEDDING_DIM = 256  # as in LCM / guidance-distilled SD checkpoints


class Skip(CompressError):
    """A row this device cannot run; the report names the reason."""


TRANSFORMERS = ("pixart-sigma", "sd3-medium")  # the others (sd15, sdxl) are UNets
# each transformer pipeline's own default scheduler (its published scheduler config), by the
# sampler transform's name for it: the baseline sampler rebuilds the same scheduler
OWN_SCHEDULER = {"pixart-sigma": "dpmsolver++", "sd3-medium": "euler"}


@dataclass(frozen=True)
class Target:
    """What the rows are built for."""

    arch: str  # sd15, sdxl, pixart-sigma, sd3-medium (tiny-... with --cpu-smoke)
    device: str
    dtype: str
    resolution: int
    float8: bool  # the device runs torchao's float8 (CUDA, compute capability >= 8.9)
    steps: int = 25  # the baseline's step count

    @property
    def family(self) -> str:
        return family(self.arch)


def family(arch: str) -> str:
    """`transformer` or `unet`: which rows apply to `arch`."""
    return "transformer" if arch.removeprefix("tiny-") in TRANSFORMERS else "unet"


def default_steps(arch: str) -> int:
    """The baseline's step count: 25 on the UNets, the pipeline's own default on transformers
    (diffusers': PixArt-Sigma 20, SD3 28)."""
    import inspect

    import diffusers

    from compress.models.archs import arch_config

    arch = arch.removeprefix("tiny-")
    if arch not in TRANSFORMERS:
        return BASELINE["steps"]
    cls = getattr(diffusers, arch_config(arch, "pipeline")["_class_name"])
    return int(inspect.signature(cls.__call__).parameters["num_inference_steps"].default)


def baseline(t: Target) -> dict[str, Any]:
    """The baseline's sampler: on UNets DPM-Solver++ with classifier-free guidance at 7.5; on
    transformers the pipeline's own scheduler and guidance (PixArt-Sigma 4.5, SD3 7.0)."""
    if t.family == "transformer":
        own = OWN_SCHEDULER[t.arch.removeprefix("tiny-")]
        return {"kind": "sampler", "scheduler": own, "steps": t.steps, "guidance_scale": "pipeline"}
    return {**BASELINE, "steps": t.steps}


def four_steps(t: Target) -> dict[str, Any]:
    return {**baseline(t), "steps": 4}


def quantize(fmt: str) -> dict[str, Any]:
    """Every unprotected Linear layer of the denoiser to `fmt` (conv_in/out, embeddings kept)."""
    return {"kind": "quantize", "rules": [{"match": "re:.*", "format": fmt}]}


def float8(t: Target) -> str:
    if not t.float8:
        raise Skip("float8_dynamic needs a CUDA GPU of compute capability 8.9 or newer")
    return "float8_dynamic"


def best_format(t: Target) -> str:
    """float8 where the device runs it, else int8 dynamic."""
    return "float8_dynamic" if t.float8 else "int8_dynamic"


def _recipe_transforms(name: str, kind: str) -> list[dict[str, Any]]:
    from compress import shipped
    from compress.recipe import load_recipe

    path = shipped.find("recipe", name.removesuffix(".yaml"))  # package data: works from a wheel
    if path is None:
        raise FileNotFoundError(f"no shipped recipe {name} (compress/shipped/recipes)")
    recipe = load_recipe(path)
    return [t.model_dump() for t in recipe.transforms if t.kind == kind]


def bk_sdm_small() -> list[dict[str, Any]]:
    """The block removal of recipes/bk-sdm-small-like.yaml, without its recovery training (the
    latency of the pruned structure does not depend on its weights)."""
    return _recipe_transforms("bk-sdm-small-like.yaml", "prune_blocks")


def dit_fast_blocks() -> list[dict[str, Any]]:
    """The block removal of recipes/dit-fast.yaml (every 7th transformer block), untrained."""
    return _recipe_transforms("dit-fast.yaml", "prune_blocks")


def deepcache() -> list[dict[str, Any]]:
    """recipes/deepcache.yaml: the whole UNet every 3rd step, shallow branch 1 in between."""
    return _recipe_transforms("deepcache.yaml", "cache")


def guidance_embedding(pipe: Any) -> None:
    """The structure `distill_guidance` gives a UNet (diffusers' `time_cond_proj_dim`), untrained:
    the pipeline then calls the denoiser once per step instead of twice."""
    from compress.models.denoiser import require_unet
    from compress.transforms.distill._student import add_guidance_embedding

    add_guidance_embedding(require_unet(pipe, "a guidance embedding"), GUIDANCE_EMBEDDING_DIM)


@dataclass(frozen=True)
class Row:
    name: str
    what: str
    # the recipe's transforms for a target (the baseline's sampler is added when none is given)
    transforms: Callable[[Target], list[dict[str, Any]]] = field(default=lambda t: [])
    # a structural step applied after the recipe's structure stage, before anything else
    prepare: Callable[[Any], None] | None = None
    family: str | None = None  # `unet` or `transformer` only; None: both

    def applies(self, arch: str) -> bool:
        return self.family in (None, family(arch))


ROWS: tuple[Row, ...] = (
    Row(
        "baseline",
        "UNets: DPM-Solver++, 25 steps (--steps), guidance 7.5 (both passes batched); "
        "transformers: the pipeline's own scheduler, steps and guidance (PixArt-Sigma "
        "DPM-Solver++ 20 steps at 4.5, SD3 FlowMatch Euler 28 steps at 7.0); eager",
    ),
    Row(
        "compile",
        "`compile` transform: torch.compile of the denoiser and VAE decoder, channels-last, "
        "fused QKV",
        lambda t: [COMPILE],
    ),
    Row(
        "float8 + compile",
        "torchao float8 dynamic (per row) on every Linear, then compile",
        lambda t: [quantize(float8(t)), COMPILE],
    ),
    Row(
        "int8 + compile",
        "torchao int8 dynamic on every Linear, then compile",
        lambda t: [quantize("int8_dynamic"), COMPILE],
    ),
    Row(
        "bk-sdm-small blocks",
        "BK-SDM-Small block removal (recipes/bk-sdm-small-like.yaml, untrained), eager",
        lambda t: bk_sdm_small(),
        family="unet",
    ),
    Row(
        "dit-fast blocks",
        "every 7th transformer block removed (recipes/dit-fast.yaml's prune_blocks, untrained), "
        "eager",
        lambda t: dit_fast_blocks(),
        family="transformer",
    ),
    Row(
        "guidance-embedded",
        "UNet with a guidance-scale embedding: one denoiser call per step, eager",
        prepare=guidance_embedding,
        family="unet",
    ),
    Row(
        "deepcache",
        "`cache` transform as recipes/deepcache.yaml (DeepCache: the whole UNet every 3rd step, "
        "shallow branch 1 in between) on the baseline's sampler, eager",
        lambda t: deepcache(),
        family="unet",
    ),
    Row("4 steps", "the baseline's sampler at 4 steps, eager", lambda t: [four_steps(t)]),
    # DeepCache stays out of the UNet combination: it does not compose with `compile` (checked
    # on the tiny configs; it does with the guidance embedding, eager). Cached before compiling,
    # the cache's step lookup (a Python float of the timestep) is a data-dependent guard that
    # fullgraph dynamo refuses; compiled first, the cache hook binds the compiled wrapper's
    # signature and rejects the UNet's keyword arguments. At 4 steps it would also cost the most
    # quality (reports/caching.md: a cached feature is a poor stand-in across long steps).
    Row(
        "combination",
        "UNets: bk-sdm-small blocks + guidance embedding + float8 (int8 without sm89) + 4 steps "
        "+ compile",
        lambda t: [*bk_sdm_small(), quantize(best_format(t)), four_steps(t), COMPILE],
        prepare=guidance_embedding,
        family="unet",
    ),
    Row(
        "combination",
        "transformers: dit-fast blocks + float8 (int8 without sm89) + 4 steps + compile",
        lambda t: [*dit_fast_blocks(), quantize(best_format(t)), four_steps(t), COMPILE],
        family="transformer",
    ),
)


def rows_for(arch: str, rows: tuple[Row, ...] | list[Row] = ROWS) -> list[Row]:
    """The rows that apply to the architecture's denoiser, in table order."""
    return [r for r in rows if r.applies(arch)]
