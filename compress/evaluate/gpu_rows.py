"""The rows of the GPU check (`scripts/gpu_check.sh`): each a recipe of the project's own
transforms, plus at most one structural step that has no training-free transform.

A new row is one more `Row(...)` in `ROWS`; `compress.evaluate.gpu_check` builds, times and
reports every row the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.errors import CompressError

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
BASELINE = {"kind": "sampler", "scheduler": "dpmsolver++", "steps": 25, "guidance_scale": 7.5}
COMPILE = {"kind": "compile", "mode": "default"}  # max-autotune would not fit the check's budget
GUIDANCE_EMBEDDING_DIM = 256  # as in LCM / guidance-distilled SD checkpoints


class Skip(CompressError):
    """A row this device cannot run; the report names the reason."""


@dataclass(frozen=True)
class Target:
    """What the rows are built for."""

    arch: str  # sd15, sdxl (tiny-sd15, tiny-sdxl with --cpu-smoke)
    device: str
    dtype: str
    resolution: int
    float8: bool  # the device runs torchao's float8 (CUDA, compute capability >= 8.9)
    steps: int = 25  # the baseline's step count


def baseline(t: Target) -> dict[str, Any]:
    """The baseline's sampler: DPM-Solver++ with classifier-free guidance at 7.5."""
    return {**BASELINE, "steps": t.steps}


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


def bk_sdm_small() -> list[dict[str, Any]]:
    """The block removal of recipes/bk-sdm-small-like.yaml, without its recovery training (the
    latency of the pruned structure does not depend on its weights)."""
    from compress.recipe import load_recipe

    recipe = load_recipe(RECIPES / "bk-sdm-small-like.yaml")
    return [t.model_dump() for t in recipe.transforms if t.kind == "prune_blocks"]


def guidance_embedding(pipe: Any) -> None:
    """The structure `distill_guidance` gives a UNet (diffusers' `time_cond_proj_dim`), untrained:
    the pipeline then calls the denoiser once per step instead of twice."""
    from compress.models.denoiser import require_unet
    from compress.transforms._student import add_guidance_embedding

    add_guidance_embedding(require_unet(pipe, "a guidance embedding"), GUIDANCE_EMBEDDING_DIM)


@dataclass(frozen=True)
class Row:
    name: str
    what: str
    # the recipe's transforms for a target (the baseline's sampler is added when none is given)
    transforms: Callable[[Target], list[dict[str, Any]]] = field(default=lambda t: [])
    # a structural step applied after the recipe's structure stage, before anything else
    prepare: Callable[[Any], None] | None = None


ROWS: tuple[Row, ...] = (
    Row("baseline", "DPM-Solver++, 25 steps (--steps), guidance 7.5 (both passes batched), eager"),
    Row(
        "compile",
        "`compile` transform: torch.compile of UNet and VAE decoder, channels-last, fused QKV",
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
    ),
    Row(
        "guidance-embedded",
        "UNet with a guidance-scale embedding: one denoiser call per step, eager",
        prepare=guidance_embedding,
    ),
    Row(
        "4 steps", "4 steps DPM-Solver++, guidance 7.5, eager", lambda t: [{**BASELINE, "steps": 4}]
    ),
    Row(
        "combination",
        "bk-sdm-small blocks + guidance embedding + float8 (int8 without sm89) + 4 steps + compile",
        lambda t: [*bk_sdm_small(), quantize(best_format(t)), {**BASELINE, "steps": 4}, COMPILE],
        prepare=guidance_embedding,
    ),
)
