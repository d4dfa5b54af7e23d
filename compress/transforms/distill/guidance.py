"""Guidance distillation: classifier-free guidance folded into the denoiser, which takes the
guidance scale as an input (Meng et al. 2023, "On Distillation of Guided Diffusion Models",
stage one), so each sampling step costs one denoiser call instead of two. UNets take the scale
through diffusers' `time_cond_proj_dim`; diffusion transformers (PixArt, SD3, Sana; DDPM or flow
matching) through an added embedding that `compress.load` restores (`_dit_guidance`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from compress.context import RunContext
from compress.errors import CompressError
from compress.generate import set_call_defaults
from compress.transforms.base import Metadata, Stage, register_transform
from compress.transforms.distill._student import (
    StudentTraining,
    add_guidance_embedding,
    as_float,
    guidance_inputs,
    guided,
    readd_guidance_embedding,
    takes_guidance,
    teacher_of,
    training_data,
)

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline
    from torch import nn


class DistillGuidanceConfig(StudentTraining):
    """Train a guidance-scale embedding over a range of scales.

    UNet: the result loads in plain diffusers; StableDiffusionPipeline feeds `guidance_scale` to
    the embedding and skips the unconditional pass. Transformer: `compress.load` restores the
    embedding at `guidance_scale` (None: the pipeline's default guidance, kept within the range)
    and samples with guidance_scale 1.
    """

    kind: Literal["distill_guidance"] = "distill_guidance"
    guidance_min: float = Field(1.0, ge=1.0, le=50.0)
    guidance_max: float = Field(8.0, ge=1.0, le=50.0)
    guidance_scale: float | None = Field(None, ge=1.0, le=50.0)

    @model_validator(mode="after")
    def _range(self) -> DistillGuidanceConfig:
        if self.guidance_min > self.guidance_max:
            raise ValueError(
                f"guidance_min ({self.guidance_min}) is above guidance_max ({self.guidance_max})"
            )
        return self


def _loss_fn(
    cfg: DistillGuidanceConfig, teacher: DiffusionPipeline, uncond: dict[str, Any], sched: Any
) -> Any:
    import torch
    import torch.nn.functional as F

    from compress.train.diffusion import noisy, predict

    def loss_fn(student: nn.Module, _: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        latents = batch.pop("latents")  # (B, C, h, w)
        x_t, t, _target = noisy(sched, latents)
        lo, hi = cfg.guidance_min, cfg.guidance_max
        scale = lo + (hi - lo) * torch.rand(latents.shape[0])  # (B,)
        ref = guided(teacher, x_t, t, batch, uncond, scale)
        out = predict(student, x_t, t, batch, **guidance_inputs(teacher, student, scale))
        return F.mse_loss(out.float(), ref)

    return loss_fn


def _on_load(pipe: DiffusionPipeline, cfg: DistillGuidanceConfig, metadata: Metadata) -> None:
    readd_guidance_embedding(pipe, metadata)
    if "embedded_guidance" in metadata:  # a transformer: the scale is embedded, no CFG pass
        set_call_defaults(pipe, guidance_scale=1.0)


@register_transform(DistillGuidanceConfig, stage=Stage.training, native=True, on_load=_on_load)
def apply_distill_guidance(
    pipe: DiffusionPipeline, cfg: DistillGuidanceConfig, ctx: RunContext
) -> Metadata:
    """Add a zero-initialised guidance embedding and fit the student to the teacher's guided
    prediction at random scales, on the shared training loop; the teacher is the pipeline before
    the recipe ran (so a pruned student learns from the unpruned model)."""
    from compress.models.denoiser import denoiser
    from compress.train import train
    from compress.train.diffusion import training_scheduler
    from compress.transforms.runtime.sampler import default_guidance

    teacher = teacher_of(ctx, cfg.kind)
    student = denoiser(pipe)
    if takes_guidance(student):
        raise CompressError(
            "distill_guidance: the denoiser already takes the guidance scale as input; "
            "drop this transform"
        )
    data, info = training_data(pipe, cfg, ctx, cfg.kind, cfg.seed)
    scale = cfg.guidance_scale or default_guidance(pipe)
    scale = min(max(scale, cfg.guidance_min), cfg.guidance_max)
    added = add_guidance_embedding(student, cfg.embedding_dim, scale)
    dtype, flags = as_float(student), [p.requires_grad for p in student.parameters()]
    student.requires_grad_(True)  # the whole UNet learns the guided prediction
    settings = cfg.train_settings(cfg.seed)
    folder = ctx.out_dir / cfg.kind if ctx.out_dir is not None else None
    try:
        loss = _loss_fn(cfg, teacher, data.uncond, training_scheduler(teacher))
        result = train(
            student,
            loss,
            data.loader(cfg.batch_size, cfg.seed),
            settings,
            teacher=denoiser(teacher),
            folder=folder,
        )
    finally:
        for p, flag in zip(student.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        student.to(dtype)
    ctx.cache[cfg.kind] = result
    readd_guidance_embedding(pipe, added)  # a transformer embeds its default scale again
    if "embedded_guidance" in added:
        set_call_defaults(pipe, guidance_scale=1.0)
    return {
        "data": info,
        "steps": result.steps,
        "batch_size": min(cfg.batch_size, len(data)),
        **added,
        "guidance_range": [cfg.guidance_min, cfg.guidance_max],
    }
