"""Pieces the distillation transforms share: their training data and loop settings, the
guidance-scale embedding, the teacher's guided prediction and prediction-type conversions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from compress.context import RunContext
from compress.errors import CompressError
from compress.transforms.base import TransformConfig

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline
    from torch import nn

    from compress.train import TrainSettings
    from compress.train.data import LatentDataset
    from compress.transforms.distill import DistillConfig


class StudentTraining(TransformConfig):
    """Optimisation and data fields common to the distillation students.

    data: `images` (the run's folder of images with captions), `prompts` (the teacher draws the
    run's prompts), `miniature-digits` (the built-in miniature's training set), or `auto`.
    """

    steps: int = Field(200, ge=1, le=1_000_000)  # optimizer updates
    batch_size: int = Field(16, ge=1, le=4096)
    grad_accum: int = Field(1, ge=1, le=1024)
    lr: float = Field(1e-4, gt=0.0, le=1.0)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    data: Literal["auto", "images", "prompts", "miniature-digits"] = "auto"
    samples: int = Field(256, ge=1, le=1_000_000)  # images to generate or draw (not `images`)
    teacher_steps: int = Field(20, ge=1, le=1000)  # sampler steps per teacher-generated image
    embedding_dim: int = Field(256, ge=2, le=4096)  # width of a new guidance-scale embedding
    seed: int = 0


def teacher_of(ctx: RunContext, kind: str) -> DiffusionPipeline:
    if ctx.teacher is None:
        raise CompressError(f"{kind} needs the teacher pipeline (RunContext.teacher)")
    return ctx.teacher


def train_settings(cfg: StudentTraining | DistillConfig) -> TrainSettings:
    """The shared training loop's settings from a training transform's fields."""
    from compress.train import TrainSettings

    return TrainSettings(
        steps=cfg.steps,
        lr=cfg.lr,
        grad_accum=cfg.grad_accum,
        mixed_precision=cfg.mixed_precision,
        seed=cfg.seed,
        description=cfg.kind,
    )


def training_data(
    pipe: DiffusionPipeline, cfg: StudentTraining | DistillConfig, ctx: RunContext, kind: str
) -> tuple[LatentDataset, dict[str, Any]]:
    """Clean latents and conditioning from the configured source (teacher-drawn for prompts)."""
    from compress.train.data import build_dataset, speaks_miniature

    teacher = teacher_of(ctx, kind)
    source = cfg.data
    if source == "auto":
        if ctx.data is not None:
            source = "images"
        elif ctx.prompts:
            source = "prompts"
        elif speaks_miniature(pipe):
            source = "miniature-digits"
        else:
            raise CompressError(
                f"{kind} needs training data: a folder of images with captions (--data, "
                "RunContext.data) or prompts for the teacher to draw (--prompts, "
                "RunContext.prompts)"
            )
    return build_dataset(
        teacher,
        source,
        n=cfg.samples,
        seed=cfg.seed,
        folder=ctx.data,
        prompts=ctx.prompts,
        teacher=teacher,
        teacher_steps=cfg.teacher_steps,
    )


def add_guidance_embedding(unet: nn.Module, dim: int) -> None:
    """Give the UNet diffusers' guidance-scale input (`time_cond_proj_dim`), zero-initialised so
    the model is unchanged until trained; in place, so pruned structures are kept."""
    from torch import nn

    emb = unet.time_embedding
    width = emb.linear_1.in_features  # the sinusoidal timestep width cond_proj adds to
    proj = nn.Linear(dim, width, bias=False).to(emb.linear_1.weight)
    nn.init.zeros_(proj.weight)
    emb.cond_proj = proj
    unet.register_to_config(time_cond_proj_dim=dim)


def readd_guidance_embedding(pipe: DiffusionPipeline, metadata: dict[str, Any]) -> None:
    """On load of a restructured artifact: the embedding the transform added, before weights."""
    dim = metadata.get("time_cond_proj_dim")
    if dim and pipe.unet.config.time_cond_proj_dim is None:
        add_guidance_embedding(pipe.unet, dim)


def guidance_embedding(pipe: DiffusionPipeline, unet: nn.Module, scale: torch.Tensor) -> Any:
    """The pipeline's own embedding of `scale - 1` (what it feeds at sampling), or None."""
    dim = unet.config.time_cond_proj_dim
    if dim is None:
        return None
    return pipe.get_guidance_scale_embedding(scale.float().cpu() - 1, embedding_dim=dim)


def student_scales(cfg: Any, n: int) -> torch.Tensor:
    """(n,) guidance scales to distil: drawn from [guidance_min, guidance_max] for a student that
    takes the scale as input, else the fixed `guidance_scale`."""
    import torch

    if cfg.guidance_embedding:
        return cfg.guidance_min + (cfg.guidance_max - cfg.guidance_min) * torch.rand(n)
    return torch.full((n,), cfg.guidance_scale)


def x0_eps(
    out: torch.Tensor, x: torch.Tensor, alpha_bar: torch.Tensor, kind: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean sample and noise implied by a denoiser output of prediction type `kind`."""
    a = alpha_bar.view(-1, 1, 1, 1).to(x)  # (B, 1, 1, 1)
    sa, sb = a.sqrt(), (1 - a).sqrt()
    if kind == "epsilon":
        return (x - sb * out) / sa, out
    if kind == "v_prediction":
        return sa * x - sb * out, sa * out + sb * x
    if kind == "sample":
        return out, (x - sa * out) / sb
    raise CompressError(f"prediction type {kind!r} is not supported for distillation")


def guided(
    teacher: DiffusionPipeline,
    x: torch.Tensor,
    t: torch.Tensor,
    cond: dict[str, torch.Tensor],
    uncond: dict[str, torch.Tensor],
    scale: torch.Tensor,
) -> torch.Tensor:
    """The teacher's classifier-free guided output uncond + scale * (cond - uncond), (B, C, h, w).

    A teacher that already takes the guidance scale as input gives it in one call.
    """
    import torch

    from compress.train.diffusion import unet_kwargs

    unet, n = teacher.unet, x.shape[0]
    dt = unet.dtype
    c = {k: v.to(dt) for k, v in cond.items()}
    with torch.no_grad():
        emb = guidance_embedding(teacher, unet, scale)
        if emb is not None:
            kw = unet_kwargs(c)
            out = unet(x.to(dt), t, timestep_cond=emb.to(x.device, dt), **kw, return_dict=False)
            return out[0].float()
        u = {k: uncond[k].to(v).expand_as(v) for k, v in c.items()}
        both = {k: torch.cat([u[k], c[k]]) for k in c}
        xx = torch.cat([x, x]).to(dt)
        out = unet(xx, torch.cat([t, t]), **unet_kwargs(both), return_dict=False)[0].float()
        o_u, o_c = out[:n], out[n:]
        return o_u + scale.view(-1, 1, 1, 1).to(x) * (o_c - o_u)


def as_float(unet: nn.Module) -> Any:
    """Train in full precision (optimizer state and updates); returns the dtype to go back to."""
    import torch

    dtype = unet.dtype
    if dtype != torch.float32:
        unet.float()
    return dtype
