"""Few-step student by latent consistency distillation (Luo et al. 2023, "Latent Consistency
Models") or by trajectory distillation on a fixed grid (`_trajectory.py`; on the DDIM or the
flow-matching ODE), as a full fine-tune or a portable LoRA adapter (Luo et al. 2023, "LCM-LoRA")."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from compress.context import RunContext
from compress.errors import CompressError
from compress.generate import call_defaults, set_call_defaults
from compress.transforms.base import Metadata, Stage, register_transform
from compress.transforms.distill._student import (
    StudentTraining,
    add_guidance_embedding,
    as_float,
    guidance_inputs,
    guided,
    readd_guidance_embedding,
    student_scales,
    takes_guidance,
    teacher_of,
    training_data,
    x0_eps,
)
from compress.transforms.distill._trajectory import student_scheduler, trajectory_loss

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline
    from torch import nn

# The layers LCM-LoRA adapts (diffusers' train_lcm_distill_lora_sd_wds.py).
LORA_TARGETS = [
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj",
]  # fmt: skip
LORA_DIR = "lora"  # <work dir>/distill_steps/lora/pytorch_lora_weights.safetensors


class DistillStepsConfig(StudentTraining):
    """A student that samples in `student_steps` steps, one denoiser call each.

    method `consistency` (DDPM-schedule denoisers): an LCMScheduler student, good at any small
    step count (it re-noises between steps). `trajectory`: a deterministic student trained for
    exactly `student_steps`, each step matching `teacher_substeps` guided teacher steps (DDIM,
    or Euler on the flow-matching ODE with a FlowMatchEuler student).

    lora_rank 0 fine-tunes the whole denoiser; > 0 trains a LoRA adapter (saved in diffusers'
    LoRA format, then fused). Without a guidance embedding the student distils the teacher at
    `guidance_scale` and samples unguided; with one it learns scales in [guidance_min,
    guidance_max] and samples with `guidance_scale` as its input.
    """

    kind: Literal["distill_steps"] = "distill_steps"
    method: Literal["consistency", "trajectory"] = "consistency"
    student_steps: int = Field(4, ge=1, le=50)
    lora_rank: int = Field(0, ge=0, le=512)
    guidance_embedding: bool = False
    guidance_scale: float = Field(7.5, ge=1.0, le=50.0)
    guidance_min: float = Field(2.0, ge=1.0, le=50.0)
    guidance_max: float = Field(8.0, ge=1.0, le=50.0)
    solver_steps: int = Field(50, ge=2, le=1000)  # consistency: the teacher's DDIM skipping grid
    teacher_substeps: int = Field(5, ge=1, le=100)  # trajectory: teacher steps per student step
    loss: Literal["l2", "huber"] = "huber"
    huber_c: float = Field(0.001, gt=0.0)

    @model_validator(mode="after")
    def _check(self) -> DistillStepsConfig:
        if self.guidance_min > self.guidance_max:
            raise ValueError(f"guidance_min {self.guidance_min} > guidance_max {self.guidance_max}")
        if self.lora_rank and self.guidance_embedding:
            raise ValueError(
                "a LoRA adapter cannot carry a new guidance embedding: set lora_rank 0 or "
                "guidance_embedding false"
            )
        if self.method == "consistency" and self.student_steps > self.solver_steps:
            raise ValueError(f"student_steps must be <= solver_steps ({self.solver_steps})")
        return self


def _loss_fn(cfg: DistillStepsConfig, teacher: DiffusionPipeline, uncond: Any, lcm: Any) -> Any:
    """Consistency loss: the student at t_n against itself (stop-gradient, as LCM-LoRA) at
    t_{n-k}, reached from x_{t_n} by one DDIM step of the guided teacher."""
    import torch
    import torch.nn.functional as F

    from compress.train.diffusion import denoiser_kwargs

    alpha_bar = lcm.alphas_cumprod  # (T,)
    kind = lcm.config.prediction_type
    skip = lcm.config.num_train_timesteps // cfg.solver_steps
    solver_t = torch.arange(1, cfg.solver_steps + 1) * skip - 1  # (N,) LCMScheduler's grid

    def consistency(student: nn.Module, x: torch.Tensor, t: torch.Tensor, kw: Any) -> Any:
        out = student(x, timestep=t, **kw, return_dict=False)[0][:, : x.shape[1]].float()
        x0, _ = x0_eps(out, x, alpha_bar[t.cpu()], kind)
        c_skip, c_out = lcm.get_scalings_for_boundary_condition_discrete(t.cpu().float())
        return c_skip.view(-1, 1, 1, 1).to(x) * x + c_out.view(-1, 1, 1, 1).to(x) * x0

    def loss_fn(student: nn.Module, _: Any, batch: dict[str, torch.Tensor]) -> Any:
        latents = batch.pop("latents")  # (B, C, h, w)
        n, dev = latents.shape[0], latents.device
        t = solver_t[torch.randint(0, cfg.solver_steps, (n,))]
        t_prev = (t - skip).clamp(min=0)
        scale = student_scales(cfg, n)  # (B,)
        noise = torch.randn(latents.shape).to(latents)
        a = alpha_bar[t].view(-1, 1, 1, 1).to(latents)
        x_t = a.sqrt() * latents + (1 - a).sqrt() * noise
        kw = {**denoiser_kwargs(batch), **(guidance_inputs(teacher, student, scale) or {})}
        pred = consistency(student, x_t, t.to(dev), kw)
        with torch.no_grad():
            ref = guided(teacher, x_t, t.to(dev), batch, uncond, scale)
            x0, eps = x0_eps(ref, x_t, alpha_bar[t], kind)
            a_prev = alpha_bar[t_prev].view(-1, 1, 1, 1).to(latents)
            x_prev = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps  # DDIM step to t_prev
            target = consistency(student, x_prev, t_prev.to(dev), kw)
        if cfg.loss == "l2":
            return F.mse_loss(pred, target)
        c = cfg.huber_c
        return (((pred - target) ** 2 + c**2).sqrt() - c).mean()

    return loss_fn


def _add_lora(net: nn.Module, rank: int) -> None:
    from peft import LoraConfig

    from compress._quiet import quiet_imports

    if not hasattr(net, "add_adapter"):
        raise CompressError(
            f"distill_steps: diffusers has no LoRA support for {type(net).__name__} (UNets, "
            "SD3 and Sana transformers have it); set lora_rank 0 to fine-tune it whole"
        )
    net.requires_grad_(False)
    targets = {n.rsplit(".", 1)[-1] for n, _ in net.named_modules()}
    present = [t for t in LORA_TARGETS if t.rsplit(".", 1)[-1] in targets]
    config = LoraConfig(
        r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=present
    )
    with quiet_imports():  # peft's layer dispatch imports neural-compressor, which logs on import
        net.add_adapter(config)  # only the adapter's parameters train


def save_lora(pipe: DiffusionPipeline, layers: dict[str, Any], folder: Path) -> Path:
    """An adapter in diffusers' LoRA format, for `pipe.load_lora_weights(folder)` on any
    checkpoint of the same base (LCM-LoRA's portability)."""
    import os
    import shutil
    import tempfile

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.partial-"))
    from compress.models.denoiser import denoiser_attr

    key = f"{denoiser_attr(pipe)}_lora_layers"  # unet_lora_layers or transformer_lora_layers
    type(pipe).save_lora_weights(tmp, **{key: layers}, safe_serialization=True)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def _on_load(pipe: DiffusionPipeline, cfg: DistillStepsConfig, metadata: Metadata) -> None:
    """The folder holds the student and its LCMScheduler; steps and guidance are call args."""
    readd_guidance_embedding(pipe, metadata)
    set_call_defaults(
        pipe,
        num_inference_steps=metadata["num_inference_steps"],
        guidance_scale=metadata["guidance_scale"],
    )


@register_transform(DistillStepsConfig, stage=Stage.training, native=True, on_load=_on_load)
def apply_distill_steps(
    pipe: DiffusionPipeline, cfg: DistillStepsConfig, ctx: RunContext
) -> Metadata:
    """Distil the teacher (the pipeline before the recipe ran) into a few-step student on the
    shared training loop, then sample with the student's scheduler at `student_steps`."""
    from diffusers import LCMScheduler

    from compress.models.denoiser import denoiser, is_flow_matching
    from compress.train import train

    teacher = teacher_of(ctx, cfg.kind)
    student = denoiser(pipe)
    flow = is_flow_matching(teacher.scheduler)
    total = teacher.scheduler.config.num_train_timesteps
    if flow and cfg.method == "consistency":
        raise CompressError(
            f"distill_steps: method consistency applies to DDPM-schedule denoisers; "
            f"{type(pipe).__name__} is a flow-matching model: use method trajectory"
        )
    if cfg.solver_steps > total or cfg.student_steps * cfg.teacher_substeps > total:
        raise CompressError(
            f"solver_steps and student_steps x teacher_substeps must be <= the {total} training "
            "timesteps"
        )
    if cfg.method == "trajectory":
        sampler = student_scheduler(teacher.scheduler.config, flow)
    else:
        sampler = LCMScheduler.from_config(
            teacher.scheduler.config, original_inference_steps=cfg.solver_steps
        )
    data, info = training_data(pipe, cfg, ctx, cfg.kind, cfg.seed)
    added: Metadata = {}
    if cfg.guidance_embedding and not takes_guidance(student):
        added = add_guidance_embedding(student, cfg.embedding_dim, cfg.guidance_scale)
    embedded = takes_guidance(student)
    # a transformer embeds the scale itself; its pipeline then samples without a CFG pass
    inside = embedded and "time_cond_proj_dim" not in student.config
    if inside:
        added = {**added, "embedded_guidance": cfg.guidance_scale}
    dtype, flags = as_float(student), {n: p.requires_grad for n, p in student.named_parameters()}
    if cfg.lora_rank:
        _add_lora(student, cfg.lora_rank)
    else:
        student.requires_grad_(True)
    settings = cfg.train_settings(cfg.seed)
    work = ctx.out_dir / cfg.kind if ctx.out_dir is not None else None
    try:
        cfg_seen = cfg if not embedded or cfg.guidance_embedding else _with_embedding(cfg)
        make_loss = trajectory_loss if cfg.method == "trajectory" else _loss_fn
        loss = make_loss(cfg_seen, teacher, data.uncond, sampler)
        loader = data.loader(cfg.batch_size, cfg.seed)
        folder = work / "train" if work is not None else None
        result = train(student, loss, loader, settings, teacher=denoiser(teacher), folder=folder)
        if cfg.lora_rank:
            from peft.utils import get_peft_model_state_dict

            # peft's key names: diffusers 0.42's convert_state_dict_to_diffusers mislabels attention
            layers = {k: v.detach().clone() for k, v in get_peft_model_state_dict(student).items()}
            ctx.cache[f"{cfg.kind}.lora"] = layers  # for save_lora without a work folder
            if work is not None:
                save_lora(pipe, layers, work / LORA_DIR)
            student.fuse_lora(lora_scale=1.0)  # into the base weights: a plain diffusers UNet
            student.unload_lora()
    finally:
        for n, p in student.named_parameters():
            p.requires_grad_(flags.get(n, False))
        student.to(dtype)
    ctx.cache[cfg.kind] = result
    pipe.scheduler = sampler
    readd_guidance_embedding(pipe, added)  # a transformer embeds guidance_scale again
    # one denoiser call per step: an embedded scale needs no unconditional pass
    set_call_defaults(
        pipe,
        num_inference_steps=cfg.student_steps,
        guidance_scale=cfg.guidance_scale if embedded and not inside else 1.0,
    )
    return {
        "data": info,
        "method": cfg.method,
        "steps": result.steps,
        "batch_size": min(cfg.batch_size, len(data)),
        "guidance_embedding": embedded,
        "lora_rank": cfg.lora_rank,
        **added,
        **call_defaults(pipe),
    }


def _with_embedding(cfg: DistillStepsConfig) -> DistillStepsConfig:
    """A student that already takes the scale as input learns the whole range."""
    return cfg.model_copy(update={"guidance_embedding": True})
