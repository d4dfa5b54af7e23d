"""Trajectory distillation for a fixed few-step grid: each student step learns to land where the
guided teacher's finer solve of the same segment lands. This is progressive distillation's
target (Salimans & Ho 2022; on guided models, Meng et al. 2023 stage two) with all the halvings
done in one round, the teacher taking `teacher_substeps` steps per student step.

DDPM-schedule denoisers solve with DDIM; flow-matching ones solve the flow ODE
dx/dsigma = v with Euler steps, the student's grid being FlowMatchEuler's (shifted) sigmas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from compress.transforms.distill._student import guidance_inputs, guided, student_scales, x0_eps

if TYPE_CHECKING:
    import torch
    from diffusers import DDIMScheduler, DiffusionPipeline
    from torch import nn


class Grid(Protocol):
    """What the trajectory loss reads of a distill_steps config (the rest goes on to the guidance
    helpers of `_student`)."""

    student_steps: int
    teacher_substeps: int


def student_scheduler(config: Any, flow: bool = False) -> Any:
    """The student's sampler. DDPM: deterministic DDIM on trailing timesteps (the first step
    starts from pure noise at t = T - 1, the last lands on the clean sample). Flow matching:
    FlowMatchEuler with the teacher's shift."""
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    if flow:
        from compress.models.denoiser import flow_shift

        steps = int(config.get("num_train_timesteps", 1000))
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=steps, shift=flow_shift(config))
    return DDIMScheduler.from_config(
        config, timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False
    )


def trajectory_loss(cfg: Grid, teacher: DiffusionPipeline, uncond: Any, sampler: Any) -> Any:
    """The loss for the student's sampler: flow matching's or DDIM's."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if isinstance(sampler, FlowMatchEulerDiscreteScheduler):
        return _flow_loss(cfg, teacher, uncond, sampler)
    return _ddim_loss(cfg, teacher, uncond, sampler)


def _flow_loss(cfg: Grid, teacher: DiffusionPipeline, uncond: Any, euler: Any) -> Any:
    """Velocity loss: the student's one Euler step over [sigma_i, sigma_i+1] must match the
    guided teacher's `teacher_substeps` Euler steps over it."""
    import torch
    import torch.nn.functional as F

    from compress.train.diffusion import predict

    total = euler.config.num_train_timesteps
    euler.set_timesteps(cfg.student_steps)
    sigmas = euler.sigmas.clone().float()  # (n + 1,) from 1 down to 0

    def loss_fn(student: nn.Module, _: Any, batch: dict[str, torch.Tensor]) -> Any:
        latents = batch.pop("latents")  # (B, C, h, w)
        n = latents.shape[0]
        i = torch.randint(0, cfg.student_steps, (n,))
        s_t, s_e = sigmas[i].to(latents), sigmas[i + 1].to(latents)  # (B,)
        scale = student_scales(cfg, n)  # (B,)
        noise = torch.randn(latents.shape).to(latents)
        x_t = (1 - s_t.view(-1, 1, 1, 1)) * latents + s_t.view(-1, 1, 1, 1) * noise
        with torch.no_grad():
            x, k = x_t, cfg.teacher_substeps
            for j in range(k):
                a, b = s_t + (s_e - s_t) * j / k, s_t + (s_e - s_t) * (j + 1) / k
                v = guided(teacher, x, a * total, batch, uncond, scale)
                x = x + (b - a).view(-1, 1, 1, 1) * v
            target = (x - x_t) / (s_e - s_t).view(-1, 1, 1, 1)
        extra = guidance_inputs(teacher, student, scale) or {}
        out = predict(student, x_t, s_t * total, batch, **extra).float()
        return F.mse_loss(out, target)

    return loss_fn


def _ddim_loss(cfg: Grid, teacher: DiffusionPipeline, uncond: Any, ddim: DDIMScheduler) -> Any:
    """Loss on the clean sample implied by the segment's end point, weighted by max(SNR, 1)
    (Salimans & Ho 2022's truncated SNR weighting)."""
    import torch

    from compress.train.diffusion import predict

    total = ddim.config.num_train_timesteps
    kind = ddim.config.prediction_type
    alpha_bar = torch.cat([ddim.alphas_cumprod, torch.ones(1)])  # index -1: the clean sample
    ddim.set_timesteps(cfg.student_steps)
    grid = ddim.timesteps.clone()  # (n,) the timesteps the student samples at
    span = total // cfg.student_steps  # DDIMScheduler's distance to the previous timestep

    def loss_fn(student: nn.Module, _: Any, batch: dict[str, torch.Tensor]) -> Any:
        latents = batch.pop("latents")  # (B, C, h, w)
        n, dev = latents.shape[0], latents.device
        t = grid[torch.randint(0, len(grid), (n,))]  # (B,)
        end = (t - span).clamp(min=-1)
        scale = student_scales(cfg, n)  # (B,)
        noise = torch.randn(latents.shape).to(latents)
        a_t = alpha_bar[t].view(-1, 1, 1, 1).to(latents)
        x_t = a_t.sqrt() * latents + (1 - a_t).sqrt() * noise
        with torch.no_grad():  # the guided teacher's DDIM solve of [t, end] in sub-steps
            x, s = x_t, t
            for j in range(1, cfg.teacher_substeps + 1):
                nxt = (t - torch.round(j * (t - end).float() / cfg.teacher_substeps)).long()
                ref = guided(teacher, x, s.to(dev), batch, uncond, scale)
                x0, eps = x0_eps(ref, x, alpha_bar[s], kind)
                a = alpha_bar[nxt].view(-1, 1, 1, 1).to(x)
                x, s = a.sqrt() * x0 + (1 - a).sqrt() * eps, nxt
            # the clean sample from which one DDIM step of the student lands on x
            a_e = alpha_bar[end].view(-1, 1, 1, 1).to(x)
            r = ((1 - a_e) / (1 - a_t)).sqrt()
            target = (x - r * x_t) / (a_e.sqrt() - r * a_t.sqrt())
        extra = guidance_inputs(teacher, student, scale) or {}
        out = predict(student, x_t, t.to(dev), batch, **extra).float()
        x0_student, _ = x0_eps(out, x_t, alpha_bar[t], kind)
        snr = (a_t / (1 - a_t)).clamp(min=1.0)
        return (snr * (x0_student - target) ** 2).mean()

    return loss_fn
