"""distill_guidance: a guidance-scale embedding trained to give the teacher's guided prediction."""

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
from compress.generate import generate
from compress.models.tiny import build_tiny_pipeline
from compress.recipe import Recipe, parse_recipe
from compress.train.diffusion import encode_prompts, noisy, predict, training_scheduler
from compress.transforms.distill._student import add_guidance_embedding, guidance_inputs, guided
from compress.transforms.distill.guidance import DistillGuidanceConfig, apply_distill_guidance
from compress.transforms.prune.channels import PruneChannelsConfig

PROMPTS = ["a red digit seven", "the blue digit two", "a green one", "an eight"]


def denoiser_samples(pipe, **kw) -> int:
    """Latents the denoiser processes to draw one image (batched CFG counts twice)."""
    seen = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        generate(pipe, PROMPTS[:1], 0, output_type="latent", **kw)
    finally:
        handle.remove()
    return sum(seen)


def inputs(pipe, n: int = 8):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(n, 4, 8, 8, generator=gen)
    t = torch.randint(0, 1000, (n,), generator=gen)
    cond = encode_prompts(pipe, [PROMPTS[i % 4] for i in range(n)])
    return x, t, cond, encode_prompts(pipe, [""])


def test_bad_input_is_rejected() -> None:
    with pytest.raises(RecipeError, match="guidance_min"):
        parse_recipe(
            {"name": "r", "transforms": [{"kind": "distill_guidance", "guidance_min": 9.0}]}
        )
    pipe = build_tiny_pipeline()
    cfg = DistillGuidanceConfig(steps=1, samples=2, teacher_steps=1)
    with pytest.raises(CompressError, match="teacher"):
        apply_distill_guidance(pipe, cfg, RunContext())
    add_guidance_embedding(pipe.unet, 8)
    with pytest.raises(CompressError, match="already takes the guidance scale"):
        apply_distill_guidance(pipe, cfg, RunContext(teacher=build_tiny_pipeline()))


def test_new_embedding_starts_as_the_conditional_branch() -> None:
    pipe = build_tiny_pipeline()
    teacher = copy.deepcopy(pipe.unet)
    add_guidance_embedding(pipe.unet, 16)
    assert pipe.unet.config.time_cond_proj_dim == 16
    x, t, cond, _ = inputs(pipe)
    extra = guidance_inputs(pipe, pipe.unet, torch.full((8,), 5.0))
    with torch.no_grad():
        got = predict(pipe.unet, x, t, cond, **extra)
        want = predict(teacher, x, t, cond)
    torch.testing.assert_close(got, want)


def test_student_learns_the_guided_prediction_in_one_call() -> None:
    pipe = build_tiny_pipeline()
    teacher = copy.deepcopy(pipe)
    cfg = DistillGuidanceConfig(steps=40, batch_size=8, samples=16, teacher_steps=2, lr=5e-4)
    ctx = RunContext(prompts=PROMPTS)
    applied = apply_recipe(pipe, Recipe(name="g", transforms=[cfg]), ctx)
    assert applied.records[0].metadata["time_cond_proj_dim"] == 256
    res = ctx.cache["distill_guidance"]
    assert res.mean_loss(first=False) < 0.85 * res.mean_loss(first=True)

    # held-out inputs like the training ones: the teacher's samples noised at random timesteps
    prompts = [PROMPTS[i % 4] for i in range(8)]
    x0 = generate(
        teacher, prompts, list(range(50, 58)), output_type="latent", num_inference_steps=2
    )
    torch.manual_seed(3)
    x, t, _ = noisy(training_scheduler(teacher), torch.as_tensor(x0).float())
    cond, uncond = encode_prompts(pipe, prompts), encode_prompts(pipe, [""])
    err, err_start = 0.0, 0.0
    for g in (2.0, 4.0, 7.0):  # within the trained range [1, 8]
        scale = torch.full((8,), g)
        want = guided(teacher, x, t, cond, uncond, scale)
        with torch.no_grad():
            got = predict(pipe.unet, x, t, cond, **guidance_inputs(pipe, pipe.unet, scale))
            start = predict(teacher.unet, x, t, cond)  # the student before training
        err += float(torch.mean((got - want) ** 2))
        err_start += float(torch.mean((start - want) ** 2))
    assert err < 0.9 * err_start

    # plain diffusers feeds guidance_scale to the embedding and skips the unconditional pass
    assert denoiser_samples(pipe, num_inference_steps=3, guidance_scale=4.0) == 3
    assert denoiser_samples(teacher, num_inference_steps=3, guidance_scale=4.0) == 6
    low, high = (
        generate(
            pipe, PROMPTS[:2], 0, output_type="latent", num_inference_steps=3, guidance_scale=g
        )
        for g in (2.0, 6.0)
    )
    assert not torch.allclose(torch.as_tensor(low), torch.as_tensor(high))


def test_pruned_student_learns_from_the_unpruned_teacher(tmp_path: Path) -> None:
    """Channel pruning saves outside diffusers configs: the artifact replays it, then re-adds
    the embedding before the weights load."""
    pipe = build_tiny_pipeline()
    n_params = sum(p.numel() for p in pipe.unet.parameters())
    cfg = DistillGuidanceConfig(steps=3, batch_size=2, samples=2, teacher_steps=1, embedding_dim=8)
    ctx = RunContext(prompts=PROMPTS, out_dir=tmp_path / "work")
    recipe = Recipe(name="p", transforms=[PruneChannelsConfig(ratio=0.25), cfg])
    applied = apply_recipe(pipe, recipe, ctx)
    assert sum(p.numel() for p in ctx.teacher.unet.parameters()) == n_params
    assert sum(p.numel() for p in pipe.unet.parameters()) < n_params
    assert ctx.teacher.unet.config.time_cond_proj_dim is None
    assert pipe.unet.config.time_cond_proj_dim == 8
    assert (tmp_path / "work" / "distill_guidance" / "checkpoint-3" / "trainer.json").is_file()

    kw = {"num_inference_steps": 3, "guidance_scale": 3.0}
    before = np.stack([np.asarray(im) for im in generate(pipe, PROMPTS[:2], 0, **kw)])
    loaded = load_artifact(save_artifact(pipe, applied, tmp_path / "artifact"))
    after = np.stack([np.asarray(im) for im in generate(loaded, PROMPTS[:2], 0, **kw)])
    np.testing.assert_array_equal(after, before)
