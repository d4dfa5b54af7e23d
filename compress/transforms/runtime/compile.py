"""Compile: the runtime settings that make a pipeline fast on its device (stage runtime).

`torch.compile` of the denoiser and the VAE decoder (static shapes), channels-last memory format,
diffusers' fused QKV projections and the SDPA kernel. Weights are untouched, so the artifact
still loads with plain diffusers; `compress.load` replays the transform, and compilation happens
at the pipeline's first call. Quantized formats (torchao int8/float8) only pay off compiled, so a
quantized candidate is compared with its unquantized parent under the same transform.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from compress.context import RunContext
from compress.models.runtime import RuntimeOptions, prepare_kept
from compress.transforms.base import (
    Metadata,
    Stage,
    TransformConfig,
    check_replay,
    register_transform,
)

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


class CompileConfig(TransformConfig):
    """How to compile and lay out the pipeline (shapes are static: a new resolution or batch size
    recompiles)."""

    kind: Literal["compile"] = "compile"
    mode: Literal["default", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    fullgraph: bool = True  # one graph per module; a graph break is an error, not a slowdown
    vae: bool = True  # the VAE decoder too
    channels_last: bool = True
    fuse_qkv: bool = True  # where diffusers offers it (not on quantized weights)
    # torch SDPA kernel; "default" lets torch choose (efficient and cudnn need CUDA)
    attention: Literal["default", "flash", "efficient", "cudnn", "math"] = "default"

    def options(self) -> RuntimeOptions:
        return RuntimeOptions(
            mode=self.mode,
            fullgraph=self.fullgraph,
            vae=self.vae,
            channels_last=self.channels_last,
            fuse_qkv=self.fuse_qkv,
            attention=self.attention,
        )


def _restore(pipe: DiffusionPipeline, cfg: CompileConfig, metadata: Metadata) -> None:
    got = prepare_kept(pipe, cfg.options())
    check_replay("compile", metadata, got)


@register_transform(
    CompileConfig,
    stage=Stage.runtime,
    native=True,
    replay_on_load=True,
    restore=_restore,
    order=2,
    neutral=True,
    plain="the pipeline runs uncompiled, unfused and contiguous, with the same weights: its "
    "images equal within float rounding, without the speed-up (compress.load compiles at the "
    "first call)",
)
def apply_compile(pipe: DiffusionPipeline, cfg: CompileConfig, ctx: RunContext) -> Metadata:
    """Prepare the pipeline in place; record what was fused, laid out and compiled."""
    return prepare_kept(pipe, cfg.options())
