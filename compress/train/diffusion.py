"""Denoiser training pieces shared by KD, QAT and step/guidance distillation: conditioning,
noising at random timesteps, and the regression target of the model's prediction type.

Two families: denoisers trained on a DDPM noise schedule (SD, SDXL, PixArt) regress noise,
velocity or sample at integer timesteps; flow-matching ones (SD3, Sana) regress the velocity
noise - x0 along x_t = (1 - sigma) x0 + sigma noise, at timestep sigma * 1000.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from compress.errors import CompressError
from compress.generate import call_defaults
from compress.models.denoiser import denoiser, flow_shift, is_flow_matching

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

# Conditioning of a batch, by the denoiser keyword it feeds: encoder_hidden_states always;
# text_embeds/time_ids (SDXL), encoder_attention_mask (PixArt, Sana), resolution/aspect_ratio
# (PixArt's micro-conditions), pooled_projections (SD3).
Cond = dict[str, "torch.Tensor"]
_ENCODERS = ("UNet2DConditionModel", "PixArtTransformer2DModel", "SD3Transformer2DModel")
_ENCODERS += ("SanaTransformer2DModel",)


def is_sdxl(pipe: DiffusionPipeline) -> bool:
    return getattr(denoiser(pipe).config, "addition_embed_type", None) == "text_time"


def sample_size(pipe: DiffusionPipeline) -> int:
    """Image side in pixels the pipeline generates at by default."""
    size = denoiser(pipe).config.sample_size
    size = size[0] if isinstance(size, list | tuple) else size
    return int(size) * int(pipe.vae_scale_factor)


def encode_prompts(pipe: DiffusionPipeline, prompts: list[str], batch: int = 64) -> Cond:
    """Text conditioning for `prompts` (CPU tensors), computed with the pipeline's own encoders.

    The empty prompt "" is the unconditional input, encoded as the pipeline encodes its negative
    prompt: SDXL pipelines that zero it at sampling (`force_zeros_for_empty_prompt`) get zeros,
    and Sana's instruction prefix goes on real prompts only.
    """
    import torch

    name = type(denoiser(pipe)).__name__
    if name not in _ENCODERS:
        raise CompressError(
            f"training on {name} is not supported; supported denoisers: {', '.join(_ENCODERS)}"
        )
    parts: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for i in range(0, len(prompts), batch):
            chunk = prompts[i : i + batch]
            if name == "UNet2DConditionModel":
                got = _encode_sd(pipe, chunk)
            elif name == "SD3Transformer2DModel":
                out = pipe.encode_prompt(
                    prompt=chunk,
                    prompt_2=None,
                    prompt_3=None,
                    device=pipe._execution_device,
                    do_classifier_free_guidance=False,
                    # as the pipeline samples (the DiT miniature: no zero T5 tokens)
                    max_sequence_length=call_defaults(pipe).get("max_sequence_length", 256),
                )
                got = {"encoder_hidden_states": out[0], "pooled_projections": out[2]}
            else:
                got = _encode_masked(pipe, chunk, pixart=name.startswith("PixArt"))
            for k, v in got.items():
                parts.setdefault(k, []).append(v.detach().float().cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def _encode_sd(pipe: DiffusionPipeline, chunk: list[str]) -> Cond:
    import torch

    out = pipe.encode_prompt(
        prompt=chunk,
        device=pipe._execution_device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=False,
    )
    got = {"encoder_hidden_states": out[0]}
    if is_sdxl(pipe):
        got["text_embeds"] = out[2]
        side = sample_size(pipe)
        proj = int(out[2].shape[-1])
        ids = pipe._get_add_time_ids(
            (side, side), (0, 0), (side, side), dtype=out[0].dtype, text_encoder_projection_dim=proj
        )
        got["time_ids"] = ids.repeat(len(chunk), 1)
        if pipe.config.get("force_zeros_for_empty_prompt", False):
            empty = torch.tensor([p == "" for p in chunk], device=out[0].device)
            for k in ("encoder_hidden_states", "text_embeds"):
                mask = empty.view(-1, *([1] * (got[k].dim() - 1)))
                got[k] = torch.where(mask, torch.zeros_like(got[k]), got[k])
    return got


def _encode_masked(pipe: DiffusionPipeline, chunk: list[str], pixart: bool) -> Cond:
    """PixArt and Sana: padded text states with their attention mask (what the pipeline feeds)."""
    import torch

    dev = pipe._execution_device
    if pixart:
        states, mask = pipe.encode_prompt(chunk, do_classifier_free_guidance=False, device=dev)[:2]
        side = float(sample_size(pipe))
        n = len(chunk)
        return {
            "encoder_hidden_states": states,
            "encoder_attention_mask": mask,
            "resolution": torch.tensor([[side, side]] * n, device=dev),
            "aspect_ratio": torch.ones(n, 1, device=dev),
        }
    # Sana prefixes real prompts with the instruction its __call__ defaults to, not the negative
    instruction = inspect.signature(type(pipe).__call__).parameters["complex_human_instruction"]
    states, masks = [], []
    for prompt in chunk:
        extra = {"complex_human_instruction": instruction.default} if prompt else {}
        s, m = pipe.encode_prompt([prompt], do_classifier_free_guidance=False, device=dev, **extra)[
            :2
        ]
        states.append(s)
        masks.append(m)
    return {"encoder_hidden_states": torch.cat(states), "encoder_attention_mask": torch.cat(masks)}


def denoiser_kwargs(cond: Cond) -> dict[str, Any]:
    """Keyword arguments for the denoiser (besides sample and timestep) from a batch's cond."""
    kwargs: dict[str, Any] = {"encoder_hidden_states": cond["encoder_hidden_states"]}
    if "text_embeds" in cond:
        kwargs["added_cond_kwargs"] = {
            "text_embeds": cond["text_embeds"],
            "time_ids": cond["time_ids"],
        }
    if "resolution" in cond:
        kwargs["added_cond_kwargs"] = {
            "resolution": cond["resolution"],
            "aspect_ratio": cond["aspect_ratio"],
        }
    for key in ("encoder_attention_mask", "pooled_projections"):
        if key in cond:
            kwargs[key] = cond[key]
    return kwargs


def predict(net: Any, x: torch.Tensor, t: torch.Tensor, cond: Cond, **extra: Any) -> torch.Tensor:
    """The denoiser's prediction for `x` at timesteps `t` (B,), (B, C, h, w) like `x`.

    A learned-variance output (PixArt: 2C channels) is cut to its prediction half, as the
    pipelines do before their scheduler step.
    """
    out = net(x, timestep=t, **denoiser_kwargs(cond), **extra, return_dict=False)[0]
    return out[:, : x.shape[1]]


@dataclass(frozen=True)
class FlowSchedule:
    """The training schedule of a flow-matching denoiser: timestep = sigma * 1000, with sigmas
    drawn as its sampler visits them (uniform, then shifted: s u / (1 + (s - 1) u))."""

    shift: float
    num_train_timesteps: int = 1000
    prediction_type: str = "flow"

    def sigma(self, u: torch.Tensor) -> torch.Tensor:
        return self.shift * u / (1 + (self.shift - 1) * u)


def training_scheduler(pipe: DiffusionPipeline) -> Any:
    """A DDPM scheduler over the pipeline's own training noise schedule and prediction type, or
    the flow-matching schedule with the pipeline's shift."""
    from diffusers import DDPMScheduler

    if is_flow_matching(pipe.scheduler):
        steps = int(pipe.scheduler.config.get("num_train_timesteps", 1000))
        return FlowSchedule(shift=flow_shift(pipe.scheduler), num_train_timesteps=steps)
    return DDPMScheduler.from_config(pipe.scheduler.config)


def prediction_kind(scheduler: Any) -> str:
    """`flow`, or the DDPM scheduler's prediction type."""
    if isinstance(scheduler, FlowSchedule):
        return "flow"
    return str(scheduler.config.prediction_type)


def noisy(
    scheduler: Any, latents: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, target) for clean `latents` at randomly drawn training timesteps."""
    import torch

    n = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    if isinstance(scheduler, FlowSchedule):
        u = torch.rand(n, generator=generator).clamp(min=1e-3)
        sigma = scheduler.sigma(u).to(latents)
        s = sigma.view(-1, 1, 1, 1)
        t = sigma * scheduler.num_train_timesteps
        return (1 - s) * latents + s * noise, t, noise - latents
    steps = scheduler.config.num_train_timesteps
    t = torch.randint(0, steps, (n,), generator=generator).to(latents.device)
    x_t = scheduler.add_noise(latents, noise, t)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(latents, noise, t)
    elif kind == "sample":
        target = latents
    else:
        raise CompressError(f"prediction type {kind!r} is not supported for training")
    return x_t, t, target
