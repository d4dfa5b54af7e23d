"""Denoiser training pieces shared by KD, QAT and step/guidance distillation: conditioning,
noising at random timesteps, and the regression target of the scheduler's prediction type."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from compress.errors import CompressError

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

Cond = dict[str, "torch.Tensor"]  # encoder_hidden_states, and text_embeds/time_ids for SDXL


def is_sdxl(pipe: DiffusionPipeline) -> bool:
    return getattr(pipe.unet.config, "addition_embed_type", None) == "text_time"


def sample_size(pipe: DiffusionPipeline) -> int:
    """Image side in pixels the pipeline generates at by default."""
    size = pipe.unet.config.sample_size
    size = size[0] if isinstance(size, list | tuple) else size
    return int(size) * int(pipe.vae_scale_factor)


def encode_prompts(pipe: DiffusionPipeline, prompts: list[str], batch: int = 64) -> Cond:
    """Text conditioning for `prompts` (CPU tensors), computed with the pipeline's own encoders.

    The empty prompt "" is the unconditional input; SDXL pipelines that zero it at sampling
    (`force_zeros_for_empty_prompt`) get zeros here too, so training matches sampling.
    """
    import torch

    device = pipe.unet.device
    sdxl = is_sdxl(pipe)
    parts: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for i in range(0, len(prompts), batch):
            chunk = prompts[i : i + batch]
            out = pipe.encode_prompt(
                prompt=chunk,
                device=device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=False,
            )
            got = {"encoder_hidden_states": out[0]}
            if sdxl:
                got["text_embeds"] = out[2]
                side = sample_size(pipe)
                proj = int(out[2].shape[-1])
                ids = pipe._get_add_time_ids(
                    (side, side),
                    (0, 0),
                    (side, side),
                    dtype=out[0].dtype,
                    text_encoder_projection_dim=proj,
                )
                got["time_ids"] = ids.repeat(len(chunk), 1)
                if pipe.config.get("force_zeros_for_empty_prompt", False):
                    empty = torch.tensor([p == "" for p in chunk], device=out[0].device)
                    for k in ("encoder_hidden_states", "text_embeds"):
                        mask = empty.view(-1, *([1] * (got[k].dim() - 1)))
                        got[k] = torch.where(mask, torch.zeros_like(got[k]), got[k])
            for k, v in got.items():
                parts.setdefault(k, []).append(v.detach().float().cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def unet_kwargs(cond: Cond) -> dict[str, Any]:
    """Keyword arguments for `unet(sample, t, **kwargs)` from a batch's conditioning."""
    kwargs: dict[str, Any] = {"encoder_hidden_states": cond["encoder_hidden_states"]}
    if "text_embeds" in cond:
        kwargs["added_cond_kwargs"] = {
            "text_embeds": cond["text_embeds"],
            "time_ids": cond["time_ids"],
        }
    return kwargs


def training_scheduler(pipe: DiffusionPipeline) -> Any:
    """A DDPM scheduler over the pipeline's own training noise schedule and prediction type."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config)


def noisy(
    scheduler: Any, latents: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, target) for clean `latents` at uniformly drawn training timesteps."""
    import torch

    n = latents.shape[0]
    steps = scheduler.config.num_train_timesteps
    t = torch.randint(0, steps, (n,), generator=generator).to(latents.device)
    noise = torch.randn(latents.shape, generator=generator).to(latents)
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
