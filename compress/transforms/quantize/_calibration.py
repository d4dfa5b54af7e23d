"""Timestep-aware calibration: the denoiser's inputs captured along the pipeline's own sampling
trajectories, kept at timesteps spread evenly over the whole schedule (Q-Diffusion, Li et al.
2023), so activation ranges and GPTQ statistics see early, noisy steps as much as late ones."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compress.errors import CompressError

if TYPE_CHECKING:
    import torch.nn as nn
    from diffusers import DiffusionPipeline

    from compress.context import RunContext

Call = dict[str, Any]  # keyword inputs of one denoiser call


class Calibration(BaseModel):
    """How many prompts to sample and which of their sampler steps to keep as calibration data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompts: int = Field(4, ge=1, le=1024)  # trajectories (all sampled in one batch)
    timesteps: int = Field(8, ge=1, le=1000)  # denoiser calls kept, evenly over the trajectory
    steps: int = Field(20, ge=1, le=1000)  # sampler steps of each trajectory
    guidance: float | None = Field(None, ge=0)  # None: the pipeline's own default

    @model_validator(mode="after")
    def _fits(self) -> Calibration:
        if self.timesteps > self.steps:
            raise ValueError(
                f"calibration keeps {self.timesteps} timesteps of a {self.steps}-step trajectory; "
                "keep at most `steps` timesteps"
            )
        return self


def _detach(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    return value


def kept_steps(total: int, keep: int) -> list[int]:
    """Indices of `keep` calls spread evenly from the first to the last of `total`."""
    if keep == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def capture(
    pipe: DiffusionPipeline, cfg: Calibration, prompts: list[str], seed: int = 0
) -> list[Call]:
    """Sample `prompts` with the pipeline's own scheduler and keep `cfg.timesteps` of the
    denoiser's calls (each holds every prompt, doubled under classifier-free guidance)."""
    import torch

    if len(prompts) != cfg.prompts:
        raise CompressError(f"calibration asks for {cfg.prompts} prompts but got {len(prompts)}")
    from compress.models.denoiser import denoiser

    unet = denoiser(pipe)
    signature = inspect.signature(unet.forward)
    calls: list[Call] = []

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        bound = signature.bind(*args, **kwargs).arguments
        calls.append({k: _detach(v) for k, v in bound.items() if v is not None})

    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    kwargs: dict[str, Any] = {"num_inference_steps": cfg.steps, "output_type": "latent"}
    if cfg.guidance is not None:
        kwargs["guidance_scale"] = cfg.guidance
    try:
        with torch.no_grad():
            pipe(prompts, generator=torch.Generator().manual_seed(seed), **kwargs)
    finally:
        handle.remove()
    if len(calls) < cfg.timesteps:
        raise CompressError(
            f"the sampler called the denoiser {len(calls)} times in {cfg.steps} steps; "
            f"cannot keep {cfg.timesteps} timesteps"
        )
    return [{**calls[i], "return_dict": False} for i in kept_steps(len(calls), cfg.timesteps)]


def calibration_calls(pipe: DiffusionPipeline, cfg: Calibration, ctx: RunContext) -> list[Call]:
    """Captured calls for `cfg`, with prompts from the run (or the miniature's own)."""
    from compress.train.data import calibration_prompts

    prompts = calibration_prompts(pipe, ctx, cfg.prompts)
    return capture(pipe, cfg, prompts[: cfg.prompts], ctx.seed)


def replay(unet: nn.Module, calls: list[Call]) -> None:
    """Run the denoiser on every captured call (hooks and observers see the activations)."""
    import torch

    with torch.no_grad():
        for call in calls:
            unet(**call)


def timesteps_of(calls: list[Call]) -> list[float]:
    """The timestep of each captured call, as recorded in metadata."""
    out = []
    for call in calls:
        t = call["timestep"]
        out.append(round(float(t.flatten()[0]) if hasattr(t, "flatten") else float(t), 4))
    return out
