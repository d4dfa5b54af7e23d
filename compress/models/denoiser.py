"""The one way every transform, timer and evaluator reaches a pipeline's denoiser.

diffusers names it `unet` on Stable Diffusion pipelines and `transformer` on DiT pipelines
(PixArt, SD3, Sana, Flux); code that needs the network asks here instead of naming either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from compress.errors import CompressError

if TYPE_CHECKING:
    from torch import nn

ATTRS = ("unet", "transformer")


def denoiser_attr(pipe: Any) -> str:
    """`unet` or `transformer`: the pipeline attribute holding its denoiser."""
    for name in ATTRS:
        if getattr(pipe, name, None) is not None:
            return name
    raise CompressError(
        f"{type(pipe).__name__} has no denoiser (neither pipe.unet nor pipe.transformer)"
    )


def denoiser(pipe: Any) -> nn.Module:
    """The pipeline's denoiser network (a UNet or a diffusion transformer)."""
    return getattr(pipe, denoiser_attr(pipe))


def set_denoiser(pipe: Any, module: Any) -> None:
    """Replace the denoiser (e.g. by a compiled wrapper) under the attribute the pipeline calls."""
    setattr(pipe, denoiser_attr(pipe), module)


def is_unet(pipe: Any) -> bool:
    return denoiser_attr(pipe) == "unet"


def require_unet(pipe: Any, what: str, alternatives: str = "") -> nn.Module:
    """The UNet, or a clear error naming the denoiser classes `what` applies to."""
    net = denoiser(pipe)
    if denoiser_attr(pipe) != "unet":
        hint = f"; for {type(net).__name__} use {alternatives}" if alternatives else ""
        raise CompressError(
            f"{what} applies to UNet denoisers (UNet2DConditionModel), not "
            f"{type(net).__name__}{hint}"
        )
    return net


def is_flow_matching(scheduler: Any) -> bool:
    """True for a scheduler sampling a flow-matching (velocity) model: FlowMatch* classes and the
    flow variants of DPM-Solver++ and UniPC (`use_flow_sigmas`)."""
    cfg = scheduler.config
    return (
        type(scheduler).__name__.startswith("FlowMatch")
        or cfg.get("prediction_type") == "flow_prediction"
        or bool(cfg.get("use_flow_sigmas"))
    )


def flow_shift(scheduler: Any) -> float:
    """The timestep shift of a flow-matching scheduler or its config (`shift` or `flow_shift`)."""
    cfg = getattr(scheduler, "config", scheduler)
    return float(cfg.get("shift", cfg.get("flow_shift", 1.0)))


def prediction_type(pipe: Any) -> str:
    """What the denoiser predicts: `flow` (velocity noise - x0), or the DDPM scheduler's type
    (`epsilon`, `v_prediction`, `sample`)."""
    if is_flow_matching(pipe.scheduler):
        return "flow"
    return str(pipe.scheduler.config.get("prediction_type", "epsilon"))
