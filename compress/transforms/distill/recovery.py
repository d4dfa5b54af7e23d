"""Recovery after pruning by knowledge distillation from the uncompressed teacher: denoising
task loss, output loss and feature loss at every stage's output (BK-SDM, Kim et al. 2023), or
at every transformer block's output, each matched with the teacher block it was kept as."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from compress.context import RunContext
from compress.errors import CompressError
from compress.models.unet import feature_channels, feature_pairs
from compress.transforms.base import Metadata, Stage, register_transform
from compress.transforms.distill._student import as_float, teacher_of, training_data
from compress.transforms.training import TrainingConfig

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline
    from torch import nn


class DistillConfig(TrainingConfig):
    """The training fields (transforms.training) and the recovery's loss weights: the
    denoising task, the teacher's output and its stage features."""

    kind: Literal["distill"] = "distill"
    task_weight: float = Field(1.0, ge=0.0)  # denoising loss against the true noise
    output_weight: float = Field(1.0, ge=0.0)  # student output vs teacher output
    feature_weight: float = Field(1.0, ge=0.0)  # stage outputs vs the teacher's
    uncond_prob: float = Field(0.1, ge=0.0, le=1.0)  # prompt dropout keeps guidance working
    seed: int = 0

    @model_validator(mode="after")
    def _some_loss(self) -> DistillConfig:
        if self.task_weight + self.output_weight + self.feature_weight <= 0:
            raise ValueError("one of task_weight, output_weight, feature_weight must be > 0")
        return self


class _Features:
    """Forward hooks keeping the output of each paired stage of student and teacher."""

    def __init__(self, student: nn.Module, teacher: nn.Module, pairs: list[tuple[str, str]]):
        self.s: dict[str, torch.Tensor] = {}
        self.t: dict[str, torch.Tensor] = {}
        self.handles = [
            student.get_submodule(a).register_forward_hook(self._keep(self.s, a)) for a, _ in pairs
        ]
        self.handles += [
            teacher.get_submodule(b).register_forward_hook(self._keep(self.t, b)) for _, b in pairs
        ]

    @staticmethod
    def _keep(store: dict[str, Any], name: str) -> Any:
        import torch

        def hook(module: nn.Module, args: Any, out: Any) -> None:
            # UNet down blocks give (h, skips), SD3 blocks (text, image): the last tensor is h
            if isinstance(out, tuple):
                out = [o for o in out if isinstance(o, torch.Tensor)][-1]
            store[name] = out

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _loss_fn(
    cfg: DistillConfig,
    sched: Any,
    uncond: dict[str, torch.Tensor],
    feats: _Features,
    pairs: list[tuple[str, str]],
    channels: dict[str, list[int]],
) -> Any:
    import torch
    import torch.nn.functional as F

    from compress.train.diffusion import noisy, predict

    def loss_fn(student: nn.Module, teacher: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        latents = batch.pop("latents")  # (B, C, h, w)
        x_t, t, target = noisy(sched, latents)
        drop = torch.rand(latents.shape[0], device=latents.device) < cfg.uncond_prob
        cond = {
            k: torch.where(drop.view(-1, *[1] * (v.dim() - 1)), uncond[k].to(v), v)
            for k, v in batch.items()
        }
        out = predict(student, x_t, t, cond)
        with torch.no_grad():  # the teacher may sit in half precision
            tc = {k: v.to(teacher.dtype) for k, v in cond.items()}
            ref = predict(teacher, x_t.to(teacher.dtype), t, tc)
        task, kd = F.mse_loss(out.float(), target.float()), F.mse_loss(out.float(), ref.float())
        feat = out.new_zeros((), dtype=torch.float32)
        for a, b in pairs:
            fs, ft = feats.s[a], feats.t[b]
            if a in channels:
                ft = ft[:, channels[a]]
            feat = feat + F.mse_loss(fs.float(), ft.float())
        loss = cfg.task_weight * task + cfg.output_weight * kd + cfg.feature_weight * feat
        return loss, {"task": task.item(), "out": kd.item(), "feat": feat.item()}

    return loss_fn


@register_transform(DistillConfig, stage=Stage.training, native=True)
def apply_distill(pipe: DiffusionPipeline, cfg: DistillConfig, ctx: RunContext) -> Metadata:
    """Fine-tune the (pruned) denoiser towards the teacher on the shared training loop."""
    from compress.models.denoiser import denoiser
    from compress.train import train
    from compress.train.diffusion import training_scheduler

    teacher = teacher_of(ctx, cfg.kind)
    data, info = training_data(pipe, cfg, ctx, cfg.kind, cfg.seed)
    student, frozen = denoiser(pipe), denoiser(teacher)
    pairs, channels = feature_pairs(student), feature_channels(student)
    missing = [b for _, b in pairs if b not in dict(frozen.named_modules())]
    if missing:
        raise CompressError(f"the teacher has no modules {missing}: is it the uncompressed model?")
    dtype, flags = as_float(student), [p.requires_grad for p in student.parameters()]
    student.requires_grad_(True)  # the whole denoiser is fine-tuned
    feats = _Features(student, frozen, pairs)
    settings = cfg.train_settings(cfg.seed)
    folder = ctx.out_dir / "distill" if ctx.out_dir is not None else None
    try:
        loss = _loss_fn(cfg, training_scheduler(teacher), data.uncond, feats, pairs, channels)
        result = train(
            student,
            loss,
            data.loader(cfg.batch_size, cfg.seed),
            settings,
            teacher=frozen,
            folder=folder,
        )
    finally:
        feats.remove()
        for p, flag in zip(student.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        student.to(dtype)
    ctx.cache["distill"] = result
    return {
        "data": info,
        "steps": result.steps,
        "batch_size": min(cfg.batch_size, len(data)),
        "features": [list(p) for p in pairs],
    }
