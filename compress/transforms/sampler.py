"""Sampler: scheduler, number of steps and guidance scale (training-free, stage runtime)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from compress.context import RunContext
from compress.errors import RestoreMismatch
from compress.generate import call_defaults, set_call_defaults
from compress.transforms.base import Metadata, Stage, TransformConfig, register_transform

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

# name -> (diffusers scheduler class, config overrides)
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
]


class SamplerConfig(TransformConfig):
    """Which scheduler samples, with how many steps, at which classifier-free guidance scale."""

    kind: Literal["sampler"] = "sampler"
    scheduler: SchedulerName = "dpmsolver++"
    steps: int = Field(20, ge=1, le=1000)
    # <= 1 turns classifier-free guidance off (one denoiser call per step instead of two).
    guidance_scale: float = Field(7.5, ge=0.0, le=50.0)
    karras_sigmas: bool = False


def _set(pipe: DiffusionPipeline, cfg: SamplerConfig) -> Metadata:
    import diffusers

    cls_name, overrides = SCHEDULERS[cfg.scheduler]
    if cfg.karras_sigmas:
        overrides = {**overrides, "use_karras_sigmas": True}
    cls = getattr(diffusers, cls_name)
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **overrides)
    set_call_defaults(pipe, num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale)
    return {
        "scheduler_class": cls_name,
        "prediction_type": pipe.scheduler.config.get("prediction_type", "epsilon"),
        **call_defaults(pipe),
    }


def _restore(pipe: DiffusionPipeline, cfg: SamplerConfig, metadata: Metadata) -> None:
    got = _set(pipe, cfg)
    diff = sorted(k for k in metadata if got.get(k) != metadata[k])
    if diff:
        raise RestoreMismatch(
            f"sampler: recorded {', '.join(f'{k}={metadata[k]!r}' for k in diff)} but this "
            f"pipeline gives {', '.join(f'{k}={got.get(k)!r}' for k in diff)}"
        )


@register_transform(SamplerConfig, stage=Stage.runtime, replay_on_load=True, restore=_restore)
def apply_sampler(pipe: DiffusionPipeline, cfg: SamplerConfig, ctx: RunContext) -> Metadata:
    """Swap the scheduler (keeping the trained noise schedule) and record steps and guidance."""
    return _set(pipe, cfg)
