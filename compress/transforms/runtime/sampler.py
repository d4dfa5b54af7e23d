"""Sampler: scheduler, number of steps and guidance scale (training-free, stage runtime).

Denoisers trained on a DDPM noise schedule (SD, SDXL, PixArt) take the DDPM-family schedulers;
flow-matching ones (SD3, Sana) take FlowMatchEuler and the flow variants of DPM-Solver++ and
UniPC, with the timestep `shift` of their training. `euler`, `dpmsolver++` and `unipc` name the
same solver in either family, so one recipe samples both with its own family's variant.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from compress.context import RunContext
from compress.errors import CompressError
from compress.generate import call_defaults, set_call_defaults
from compress.models.denoiser import flow_shift, is_flow_matching
from compress.transforms.base import (
    Metadata,
    Stage,
    TransformConfig,
    check_replay,
    register_transform,
)

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

# name -> (diffusers scheduler class, config overrides), for DDPM-schedule denoisers
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmsolver": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver"}),
    "dpmsolver-sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}
_FLOW = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
# name -> (class, overrides), for flow-matching denoisers; the shift is added on use
FLOW_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "flow-euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "flow-dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", **_FLOW}),
    "flow-unipc": ("UniPCMultistepScheduler", _FLOW),
}
FLOW_OF = {"euler": "flow-euler", "dpmsolver++": "flow-dpmsolver++", "unipc": "flow-unipc"}
SchedulerName = Literal[
    "dpmsolver++",
    "dpmsolver",
    "dpmsolver-sde",
    "unipc",
    "ddim",
    "pndm",
    "euler",
    "euler-ancestral",
    "heun",
    "lcm",
    "flow-euler",
    "flow-dpmsolver++",
    "flow-unipc",
]


class SamplerConfig(TransformConfig):
    """Which scheduler samples, with how many steps, at which classifier-free guidance scale."""

    kind: Literal["sampler"] = "sampler"
    scheduler: SchedulerName = "dpmsolver++"
    steps: int = Field(20, ge=1, le=1000)
    # <= 1 turns classifier-free guidance off (one denoiser call per step instead of two);
    # "pipeline" keeps the pipeline's own default (e.g. 4.5 for PixArt, 7.0 for SD3)
    guidance_scale: Annotated[float, Field(ge=0.0, le=50.0)] | Literal["pipeline"] = 7.5
    karras_sigmas: bool = False
    # flow matching only: the timestep shift (None keeps the one the pipeline was trained with)
    shift: float | None = Field(None, gt=0.0, le=100.0)


def _choose(pipe: DiffusionPipeline, cfg: SamplerConfig) -> tuple[str, dict[str, Any]]:
    """The scheduler class and overrides `cfg` means on this pipeline's family."""
    if not is_flow_matching(pipe.scheduler):
        if cfg.scheduler in FLOW_SCHEDULERS or cfg.shift is not None:
            raise CompressError(
                f"sampler: {type(pipe).__name__} was trained on a DDPM noise schedule; "
                f"{'shift' if cfg.shift is not None else cfg.scheduler} applies to "
                f"flow-matching denoisers (SD3, Sana); use one of {', '.join(SCHEDULERS)}"
            )
        cls_name, overrides = SCHEDULERS[cfg.scheduler]
        if cfg.karras_sigmas:
            overrides = {**overrides, "use_karras_sigmas": True}
        return cls_name, overrides
    name = FLOW_OF.get(cfg.scheduler, cfg.scheduler)
    if name not in FLOW_SCHEDULERS or cfg.karras_sigmas:
        what = "karras_sigmas" if cfg.karras_sigmas else cfg.scheduler
        raise CompressError(
            f"sampler: {type(pipe).__name__} is a flow-matching model; {what} applies to DDPM-"
            f"schedule denoisers; use one of {', '.join([*FLOW_SCHEDULERS, *FLOW_OF])}"
        )
    cls_name, overrides = FLOW_SCHEDULERS[name]
    key = "shift" if cls_name.startswith("FlowMatch") else "flow_shift"
    return cls_name, {**overrides, key: cfg.shift or flow_shift(pipe.scheduler)}


def default_guidance(pipe: DiffusionPipeline) -> float:
    """The guidance scale the pipeline samples with when none is given."""
    recorded = call_defaults(pipe).get("guidance_scale")
    if recorded is not None:
        return float(recorded)
    return float(inspect.signature(type(pipe).__call__).parameters["guidance_scale"].default)


def _set(pipe: DiffusionPipeline, cfg: SamplerConfig) -> Metadata:
    import diffusers

    flow = is_flow_matching(pipe.scheduler)
    cls_name, overrides = _choose(pipe, cfg)
    guidance = default_guidance(pipe) if cfg.guidance_scale == "pipeline" else cfg.guidance_scale
    # the shift goes under the key the new class knows (`shift` or `flow_shift`)
    config = {k: v for k, v in pipe.scheduler.config.items() if k not in ("shift", "flow_shift")}
    pipe.scheduler = getattr(diffusers, cls_name).from_config(config, **overrides)
    set_call_defaults(pipe, num_inference_steps=cfg.steps, guidance_scale=guidance)
    extra = {"shift": flow_shift(pipe.scheduler)} if flow else {}
    kind = "flow_prediction" if flow else pipe.scheduler.config.get("prediction_type", "epsilon")
    return {
        "scheduler_class": cls_name,
        "prediction_type": kind,
        **extra,
        **call_defaults(pipe),
    }


def _restore(pipe: DiffusionPipeline, cfg: SamplerConfig, metadata: Metadata) -> None:
    got = _set(pipe, cfg)
    check_replay("sampler", metadata, got, only_recorded=True)


@register_transform(SamplerConfig, stage=Stage.runtime, replay_on_load=True, restore=_restore)
def apply_sampler(pipe: DiffusionPipeline, cfg: SamplerConfig, ctx: RunContext) -> Metadata:
    """Swap the scheduler (keeping the trained noise schedule) and record steps and guidance."""
    return _set(pipe, cfg)
