"""Pieces the distillation transforms share: their training data and loop settings, the
guidance-scale embedding, the teacher's guided prediction and prediction-type conversions (DDPM
noise, velocity and sample predictions, and flow matching's velocity)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from compress.context import RunContext
from compress.errors import CompressError
from compress.transforms.base import Metadata
from compress.transforms.training import TrainingConfig

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline
    from torch import nn

    from compress.train.data import LatentDataset


class StudentTraining(TrainingConfig):
    """The training fields (transforms.training) and what the distilled students add."""

    embedding_dim: int = Field(256, ge=2, le=4096)  # width of a new guidance-scale embedding
    seed: int = 0


def teacher_of(ctx: RunContext, kind: str) -> DiffusionPipeline:
    if ctx.teacher is None:
        raise CompressError(f"{kind} needs the teacher pipeline (RunContext.teacher)")
    return ctx.teacher


def training_data(
    pipe: DiffusionPipeline, cfg: TrainingConfig, ctx: RunContext, kind: str, seed: int
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
        seed=seed,
        folder=ctx.data,
        prompts=ctx.prompts,
        teacher=teacher,
        teacher_steps=cfg.teacher_steps,
        store=ctx.data_cache,
        teacher_digest=ctx.teacher_digest,
    )


def takes_guidance(net: nn.Module) -> bool:
    """True when the denoiser takes the guidance scale as an input (UNet `time_cond_proj_dim`,
    or a transformer's added embedding)."""
    from compress.transforms.distill import _dit_guidance

    if "time_cond_proj_dim" in net.config:
        return net.config.time_cond_proj_dim is not None
    return _dit_guidance.has(net)


def add_guidance_embedding(net: nn.Module, dim: int, scale: float = 1.0) -> Metadata:
    """Give the denoiser a guidance-scale input, zero-initialised so the model is unchanged until
    trained, in place (pruned structures are kept); returns what to record for loading.

    UNet: diffusers' own `time_cond_proj_dim` (the pipeline feeds the scale). Transformer: an
    embedding added to its timestep embedding, embedding `scale` at sampling (`_dit_guidance`).
    """
    from torch import nn

    if "time_cond_proj_dim" not in net.config:
        from compress.transforms.distill import _dit_guidance

        _dit_guidance.add(net, dim, scale)
        return {"guidance_embedding_dim": dim, "embedded_guidance": scale, "native": False}
    emb = net.time_embedding
    width = emb.linear_1.in_features  # the sinusoidal timestep width cond_proj adds to
    proj = nn.Linear(dim, width, bias=False).to(emb.linear_1.weight)
    nn.init.zeros_(proj.weight)
    emb.cond_proj = proj
    net.register_to_config(time_cond_proj_dim=dim)
    return {"time_cond_proj_dim": dim, "unet_config_added": ["time_cond_proj_dim"]}


def readd_guidance_embedding(pipe: DiffusionPipeline, metadata: dict[str, Any]) -> None:
    """On load: the embedding the transform added (before weights for a restructured artifact),
    embedding the recorded scale on a transformer."""
    from compress.models.denoiser import denoiser
    from compress.transforms.distill import _dit_guidance

    net = denoiser(pipe)
    dim = metadata.get("time_cond_proj_dim") or metadata.get("guidance_embedding_dim")
    if dim and not takes_guidance(net):
        add_guidance_embedding(net, dim, metadata.get("embedded_guidance", 1.0))
    elif "embedded_guidance" in metadata:
        _dit_guidance.set_scale(net, metadata["embedded_guidance"])


def guidance_inputs(pipe: DiffusionPipeline, net: nn.Module, scale: torch.Tensor) -> Any:
    """Extra denoiser keywords that give `net` the guidance scales (B,), or None if it takes none.

    UNet: the pipeline's own embedding of `scale - 1` (what it feeds at sampling). Transformer:
    its added embedding is told the scales (it needs no keyword).
    """
    from compress.transforms.distill import _dit_guidance

    if not takes_guidance(net):
        return None
    if "time_cond_proj_dim" not in net.config:
        _dit_guidance.set_scale(net, scale.float())
        return {}
    emb = pipe.get_guidance_scale_embedding(
        scale.float().cpu() - 1, embedding_dim=net.config.time_cond_proj_dim
    )
    return {"timestep_cond": emb.to(net.device, net.dtype)}


def student_scales(cfg: Any, n: int) -> torch.Tensor:
    """(n,) guidance scales to distil: drawn from [guidance_min, guidance_max] for a student that
    takes the scale as input, else the fixed `guidance_scale`."""
    import torch

    if cfg.guidance_embedding:
        return cfg.guidance_min + (cfg.guidance_max - cfg.guidance_min) * torch.rand(n)
    return torch.full((n,), cfg.guidance_scale)


def x0_eps(
    out: torch.Tensor, x: torch.Tensor, level: torch.Tensor, kind: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean sample and noise implied by a denoiser output of prediction type `kind`; `level` is
    alpha_bar_t for DDPM types, sigma_t for `flow` (x = (1 - sigma) x0 + sigma noise, out = the
    velocity noise - x0)."""
    a = level.view(-1, 1, 1, 1).to(x)  # (B, 1, 1, 1)
    if kind == "flow":
        return x - a * out, x + (1 - a) * out
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

    from compress.models.denoiser import denoiser
    from compress.train.diffusion import predict

    net, n = denoiser(teacher), x.shape[0]
    dt = net.dtype
    c = {k: v.to(dt) for k, v in cond.items()}
    with torch.no_grad():
        extra = guidance_inputs(teacher, net, scale)
        if extra is not None:
            return predict(net, x.to(dt), t, c, **extra).float()
        u = {k: uncond[k].to(v).expand_as(v) for k, v in c.items()}
        both = {k: torch.cat([u[k], c[k]]) for k in c}
        out = predict(net, torch.cat([x, x]).to(dt), torch.cat([t, t]), both).float()
        o_u, o_c = out[:n], out[n:]
        return o_u + scale.view(-1, 1, 1, 1).to(x) * (o_c - o_u)


def as_float(net: nn.Module) -> Any:
    """Train in full precision (optimizer state and updates); returns the dtype to go back to."""
    import torch

    dtype = net.dtype
    if dtype != torch.float32:
        net.float()
    return dtype
