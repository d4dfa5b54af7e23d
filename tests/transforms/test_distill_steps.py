"""distill_steps: latent consistency or trajectory distillation, full or as a portable LoRA."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.apply import apply_recipe
from compress.artifact import load_artifact, save_artifact
from compress.context import RunContext
from compress.errors import CompressError, RecipeError
from compress.generate import call_defaults, generate
from compress.models.tiny import build_tiny_pipeline
from compress.recipe import Recipe, parse_recipe
from compress.transforms.distill.steps import DistillStepsConfig, apply_distill_steps
from compress.transforms.prune.blocks import PruneBlocksConfig
from compress.transforms.quantize.ptq import QuantizeConfig

PROMPTS = ["a red digit seven", "the blue digit two", "a green one", "an eight"]
FAST = {"batch_size": 2, "samples": 2, "teacher_steps": 1}


def latents(pipe, **kw) -> torch.Tensor:
    prompts = [PROMPTS[i % 4] for i in range(8)]
    out = generate(pipe, prompts, list(range(100, 108)), output_type="latent", **kw)
    return torch.as_tensor(out).float()


def rel_mse(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Squared error relative to the reference's energy (random tiny models have large latents)."""
    return float(((x - ref) ** 2).mean() / (ref**2).mean())


def test_bad_input_is_rejected() -> None:
    from diffusers import DDIMScheduler

    for bad, match in [
        ({"lora_rank": 4, "guidance_embedding": True}, "LoRA adapter cannot carry"),
        ({"student_steps": 8, "solver_steps": 4}, "student_steps"),
        ({"guidance_min": 9.0}, "guidance_min"),
    ]:
        with pytest.raises(RecipeError, match=match):
            parse_recipe({"name": "r", "transforms": [{"kind": "distill_steps", **bad}]})
    pipe = build_tiny_pipeline()
    with pytest.raises(CompressError, match="teacher"):
        apply_distill_steps(pipe, DistillStepsConfig(**FAST), RunContext())
    teacher = build_tiny_pipeline()
    teacher.scheduler = DDIMScheduler.from_config(teacher.scheduler.config, num_train_timesteps=100)
    ctx = RunContext(teacher=teacher, prompts=PROMPTS)
    with pytest.raises(CompressError, match="solver_steps"):
        apply_distill_steps(pipe, DistillStepsConfig(solver_steps=200, **FAST), ctx)
    traj = DistillStepsConfig(method="trajectory", student_steps=8, teacher_substeps=20, **FAST)
    with pytest.raises(CompressError, match="teacher_substeps"):
        apply_distill_steps(pipe, traj, ctx)


def test_lora_adapter_accelerates_another_checkpoint(tmp_path: Path) -> None:
    """One-step consistency: the student maps noise to the teacher's ODE solution directly."""
    from diffusers import LCMScheduler

    pipe = build_tiny_pipeline()
    other = copy.deepcopy(pipe)  # a further fine-tuned checkpoint of the same base
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in other.unet.parameters():
            p.add_(0.05 * p.std() * torch.randn(p.shape, generator=gen))
    cfg = DistillStepsConfig(
        steps=30,
        batch_size=8,
        samples=16,
        teacher_steps=4,
        lr=2e-3,
        lora_rank=8,
        student_steps=1,
        solver_steps=5,
        guidance_scale=4.0,
    )
    ctx = RunContext(prompts=PROMPTS, out_dir=tmp_path)
    apply_recipe(pipe, Recipe(name="lcm-lora", transforms=[cfg]), ctx)
    assert ctx.cache["distill_steps"].mean_loss(first=False) < ctx.cache["distill_steps"].mean_loss(
        first=True
    )
    assert type(pipe.scheduler).__name__ == "LCMScheduler"
    assert call_defaults(pipe) == {"num_inference_steps": 1, "guidance_scale": 1.0}
    assert not any("lora" in k for k in pipe.unet.state_dict())  # fused: a plain UNet
    adapter = tmp_path / "distill_steps" / "lora"
    assert (adapter / "pytorch_lora_weights.safetensors").is_file()
    assert ctx.cache["distill_steps.lora"]  # the adapter's tensors, also without a work folder

    student = latents(pipe)
    fresh = build_tiny_pipeline()  # the saved adapter reproduces the fused student
    fresh.load_lora_weights(adapter)
    fresh.scheduler = LCMScheduler.from_config(fresh.scheduler.config, original_inference_steps=5)
    torch.testing.assert_close(latents(fresh, **call_defaults(pipe)), student, rtol=1e-4, atol=1e-3)

    reference = latents(other, num_inference_steps=25, guidance_scale=4.0)
    plain = latents(other, num_inference_steps=1, guidance_scale=4.0)
    other.load_lora_weights(adapter)
    other.scheduler = LCMScheduler.from_config(other.scheduler.config, original_inference_steps=5)
    fast = latents(other, num_inference_steps=1, guidance_scale=1.0)
    assert rel_mse(fast, reference) < 0.8 * rel_mse(plain, reference)


def test_full_student_with_guidance_embedding_then_quantize(tmp_path: Path) -> None:
    pipe = build_tiny_pipeline()
    cfg = DistillStepsConfig(
        steps=2,
        student_steps=2,
        guidance_embedding=True,
        embedding_dim=8,
        guidance_scale=3.0,
        **FAST,
    )
    quant = QuantizeConfig(rules=[{"match": "re:.*", "format": "int8_weight_only"}])
    applied = apply_recipe(
        pipe, Recipe(name="r", transforms=[cfg, quant]), RunContext(prompts=PROMPTS)
    )
    md = applied.records[0].metadata
    assert md["guidance_embedding"] and md["num_inference_steps"] == 2
    seen: list[int] = []
    pipe.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    before = np.stack([np.asarray(im) for im in generate(pipe, PROMPTS[:2], 0)])
    assert seen == [2, 2]  # two steps, one call each (the scale is an input, no CFG batch)

    out = save_artifact(pipe, applied, tmp_path / "artifact")
    loaded = load_artifact(out)
    assert call_defaults(loaded) == {"num_inference_steps": 2, "guidance_scale": 3.0}
    assert type(loaded.scheduler).__name__ == "LCMScheduler"
    np.testing.assert_array_equal(
        np.stack([np.asarray(im) for im in generate(loaded, PROMPTS[:2], 0)]), before
    )


def test_pruned_lora_student_resumes(tmp_path: Path) -> None:
    cfg = DistillStepsConfig(steps=2, lora_rank=2, **FAST)
    recipe = Recipe(name="p", transforms=[PruneBlocksConfig(preset="small"), cfg])
    ctx = RunContext(prompts=PROMPTS, out_dir=tmp_path)
    apply_recipe(build_tiny_pipeline(), recipe, ctx)
    assert ctx.cache["distill_steps"].resumed_from == 0
    longer = recipe.model_copy(
        update={"transforms": [recipe.transforms[0], cfg.model_copy(update={"steps": 3})]}
    )
    ctx = RunContext(prompts=PROMPTS, out_dir=tmp_path)
    pipe = build_tiny_pipeline()
    apply_recipe(pipe, longer, ctx)
    res = ctx.cache["distill_steps"]
    assert (res.resumed_from, res.steps, len(res.losses)) == (2, 3, 3)
    assert ctx.teacher.unet.num_parameters() > pipe.unet.num_parameters()  # the unpruned teacher


def test_full_student_loads_in_plain_diffusers(tmp_path: Path) -> None:
    from diffusers import DiffusionPipeline

    pipe = build_tiny_pipeline()
    cfg = DistillStepsConfig(
        steps=2,
        student_steps=3,
        guidance_embedding=True,
        embedding_dim=8,
        guidance_scale=5.0,
        **FAST,
    )
    applied = apply_recipe(pipe, Recipe(name="r", transforms=[cfg]), RunContext(prompts=PROMPTS))
    assert applied.native
    out = save_artifact(pipe, applied, tmp_path / "artifact")
    plain = DiffusionPipeline.from_pretrained(out)
    plain.set_progress_bar_config(disable=True)
    assert type(plain.scheduler).__name__ == "LCMScheduler"
    assert plain.unet.config.time_cond_proj_dim == 8
    np.testing.assert_array_equal(
        latents(plain, num_inference_steps=3, guidance_scale=5.0).numpy(), latents(pipe).numpy()
    )


def test_trajectory_student_matches_the_guided_teacher_in_two_steps(tmp_path: Path) -> None:
    """Each student DDIM step learns the teacher's 5-step solve of its segment, so 2 steps come
    closer to the teacher's 25-step guided output than the teacher's own 2-step sampling."""
    pipe = build_tiny_pipeline()
    teacher = copy.deepcopy(pipe)
    cfg = DistillStepsConfig(
        method="trajectory",
        steps=80,
        batch_size=8,
        samples=16,
        teacher_steps=4,
        lr=1e-3,
        student_steps=2,
        teacher_substeps=5,
        guidance_scale=4.0,
    )
    applied = apply_recipe(pipe, Recipe(name="traj", transforms=[cfg]), RunContext(prompts=PROMPTS))
    result = applied.records[0].metadata
    assert result["method"] == "trajectory"
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert call_defaults(pipe) == {"num_inference_steps": 2, "guidance_scale": 1.0}
    seen: list[int] = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    student = latents(pipe)
    handle.remove()
    assert seen == [8, 8]  # two steps, one unguided call each
    reference = latents(teacher, num_inference_steps=25, guidance_scale=4.0)
    plain = latents(teacher, num_inference_steps=2, guidance_scale=4.0)
    assert rel_mse(student, reference) < 0.8 * rel_mse(plain, reference)

    loaded = load_artifact(save_artifact(pipe, applied, tmp_path / "artifact"))
    assert type(loaded.scheduler).__name__ == "DDIMScheduler"
    torch.testing.assert_close(latents(loaded), student, rtol=0, atol=0)


def test_a_lora_student_does_not_depend_on_the_callers_random_state() -> None:
    """Torch seeds its default generator at random on start-up: the adapter's initialisation
    must come from the run's seed, and the caller's generator be left as it was."""
    recipe = Recipe(name="s", transforms=[DistillStepsConfig(steps=1, lora_rank=2, **FAST)])
    weights = []
    for caller_seed in (1, 2):
        pipe = build_tiny_pipeline()  # seeds torch itself: the caller's state is set after it
        torch.manual_seed(caller_seed)
        state = torch.get_rng_state()
        apply_recipe(pipe, recipe, RunContext(prompts=PROMPTS))
        assert torch.equal(torch.get_rng_state(), state)
        weights.append(torch.cat([p.detach().flatten() for p in pipe.unet.parameters()]))
    assert torch.equal(weights[0], weights[1])
