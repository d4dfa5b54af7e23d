"""Transforms on diffusion transformers (PixArt, SD3, Sana): what each promises there, and a clear
error where one does not apply. The contract suite covers save/reload on PixArt."""

from __future__ import annotations

import copy

import pytest
import torch

import compress
from compress.apply import apply_recipe
from compress.context import RunContext
from compress.errors import CompressError, RecipeError
from compress.generate import call_defaults, generate
from compress.models.tiny import (
    SANA_CALL,
    build_tiny_pipeline,
    build_tiny_pixart_pipeline,
    build_tiny_sana_pipeline,
    build_tiny_sd3_pipeline,
)
from compress.recipe import Recipe, parse_recipe
from compress.transforms.distill.guidance import DistillGuidanceConfig
from compress.transforms.distill.steps import DistillStepsConfig
from compress.transforms.prune.blocks import PruneBlocksConfig
from compress.transforms.prune.channels import PruneChannelsConfig
from compress.transforms.quantize.ptq import QuantizeConfig, resolve
from compress.transforms.runtime.sampler import SamplerConfig

PROMPTS = ["a red digit seven", "the blue digit two", "a green one", "an eight"]


def run(pipe, *transforms, ctx: RunContext | None = None) -> Recipe:
    return apply_recipe(pipe, Recipe(name="t", transforms=list(transforms)), ctx or RunContext())


def latents(pipe, n: int = 4, **kw) -> torch.Tensor:
    prompts = [PROMPTS[i % 4] for i in range(n)]
    out = generate(pipe, prompts, list(range(100, 100 + n)), output_type="latent", **kw)
    return torch.as_tensor(out).float()


def rel_mse(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((x - ref) ** 2).mean() / (ref**2).mean())


def calls(pipe) -> list[int]:
    """Batch size of every transformer call while one prompt is drawn."""
    seen: list[int] = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, args, kw: seen.append(kw["hidden_states"].shape[0]), with_kwargs=True
    )
    try:
        generate(pipe, PROMPTS[:1], 0, output_type="latent")
    finally:
        hook.remove()
    return seen


# --- sampler ---


@pytest.mark.parametrize(
    "name,cls,key",
    [
        ("flow-euler", "FlowMatchEulerDiscreteScheduler", "shift"),
        ("dpmsolver++", "DPMSolverMultistepScheduler", "flow_shift"),
        ("unipc", "UniPCMultistepScheduler", "flow_shift"),
    ],
)
def test_flow_pipelines_take_flow_schedulers_with_their_shift(name: str, cls: str, key: str):
    pipe = build_tiny_sd3_pipeline()
    meta = run(pipe, SamplerConfig(scheduler=name, steps=3, guidance_scale="pipeline"))
    assert type(pipe.scheduler).__name__ == cls and pipe.scheduler.config[key] == 3.0
    assert meta.records[0].metadata["prediction_type"] == "flow_prediction"
    assert call_defaults(pipe) == {"num_inference_steps": 3, "guidance_scale": 7.0}
    run(pipe, SamplerConfig(scheduler=name, steps=3, shift=6.0))
    assert pipe.scheduler.config[key] == 6.0
    assert latents(pipe, n=1).isfinite().all()


def test_a_scheduler_of_the_other_family_is_refused() -> None:
    with pytest.raises(CompressError, match="flow-matching model; ddim applies to DDPM"):
        run(build_tiny_sd3_pipeline(), SamplerConfig(scheduler="ddim"))
    with pytest.raises(CompressError, match="flow-euler applies to flow-matching denoisers"):
        run(build_tiny_pixart_pipeline(), SamplerConfig(scheduler="flow-euler"))
    with pytest.raises(CompressError, match="shift applies to flow-matching"):
        run(build_tiny_pipeline(), SamplerConfig(shift=2.0))


# --- prune_blocks ---


def test_presets_keep_the_first_and_last_block_and_sd3_its_closing_block() -> None:
    pipe = build_tiny_sd3_pipeline()  # 4 joint blocks
    meta = run(pipe, PruneBlocksConfig(last=2)).records[0].metadata
    assert meta["removed"] == ["transformer_blocks.1", "transformer_blocks.2"]
    assert pipe.transformer.config.num_layers == 2 and meta["params"] < meta["before"]["params"]
    assert pipe.transformer.transformer_blocks[-1].context_pre_only
    assert latents(pipe, n=1, num_inference_steps=2).isfinite().all()
    with pytest.raises(CompressError, match="closes the text stream"):
        run(build_tiny_sd3_pipeline(), PruneBlocksConfig(remove=("transformer_blocks.3",)))
    with pytest.raises(CompressError, match="at most 2 can go"):
        run(build_tiny_sd3_pipeline(), PruneBlocksConfig(last=3))
    with pytest.warns(UserWarning, match="removes no block of this 4-block transformer"):
        unchanged = run(build_tiny_sd3_pipeline(), PruneBlocksConfig(every=7)).records[0]
    assert unchanged.metadata["removed"] == []


def test_block_removal_options_name_what_applies() -> None:
    with pytest.raises(CompressError, match="use every, last or importance"):
        run(build_tiny_pixart_pipeline(), PruneBlocksConfig(preset="small"))
    with pytest.raises(CompressError, match="not UNet2DConditionModel; for a UNet use a preset"):
        run(build_tiny_pipeline(), PruneBlocksConfig(every=2))
    with pytest.raises(RecipeError, match="not both"):
        parse_recipe(
            {"name": "r", "transforms": [{"kind": "prune_blocks", "preset": "base", "every": 2}]}
        )


def test_importance_removes_the_block_that_changes_the_output_least() -> None:
    """A block whose residual writes are zeroed passes its input through: removing it changes
    nothing, so measured importance must pick it, and the output stays the same."""
    pipe = build_tiny_pixart_pipeline()
    block = pipe.transformer.transformer_blocks[2]
    with torch.no_grad():
        for layer in (block.attn1.to_out[0], block.attn2.to_out[0], block.ff.net[2]):
            layer.weight.zero_()
            layer.bias.zero_()
    before = latents(pipe, n=2, num_inference_steps=2)
    cfg = PruneBlocksConfig(importance=1, calibration={"prompts": 2, "timesteps": 2, "steps": 2})
    meta = run(pipe, cfg, ctx=RunContext(prompts=PROMPTS)).records[0].metadata
    assert meta["removed"] == ["transformer_blocks.2"]
    assert (
        meta["importance"]["transformer_blocks.2"]
        < 1e-9
        < min(v for k, v in meta["importance"].items() if k != "transformer_blocks.2")
    )
    assert pipe.transformer.config.num_layers == 3
    torch.testing.assert_close(latents(pipe, n=2, num_inference_steps=2), before)


# --- prune_channels ---


def test_channel_pruning_narrows_feed_forward_and_heads_not_the_stream() -> None:
    pipe = build_tiny_pixart_pipeline()
    width = pipe.transformer.transformer_blocks[0].ff.net[0].proj.out_features
    meta = run(pipe, PruneChannelsConfig(ratio=0.5)).records[0].metadata
    block = pipe.transformer.transformer_blocks[0]
    assert block.ff.net[0].proj.out_features == width // 2
    assert block.attn1.to_q.out_features == block.attn1.to_out[0].in_features == 16
    assert block.attn1.to_out[0].out_features == 32  # the residual stream keeps its width
    assert meta["params"] < 0.8 * meta["params_before"]
    assert latents(pipe, n=1, num_inference_steps=2).isfinite().all()
    sd3 = build_tiny_sd3_pipeline()  # feed-forward only: the joint attention stays whole
    run(sd3, PruneChannelsConfig(ratio=0.5))
    joint = sd3.transformer.transformer_blocks[0]
    assert joint.ff.net[0].proj.out_features == joint.ff_context.net[0].proj.out_features == 64
    assert joint.attn.to_q.out_features == joint.attn.add_q_proj.out_features == 32
    with pytest.raises(CompressError, match="not SanaTransformer2DModel"):
        run(build_tiny_sana_pipeline(), PruneChannelsConfig(ratio=0.25))
    with pytest.raises(CompressError, match="stage_ratios name UNet stages"):
        run(build_tiny_pixart_pipeline(), PruneChannelsConfig(stage_ratios=(0.5, 0.5)))


# --- quantize ---


def test_block_groups_select_attention_or_feed_forward_layers() -> None:
    net = build_tiny_pixart_pipeline().transformer
    cfg = QuantizeConfig(attention="int8_dynamic", rules=[{"match": "re:.*", "format": "none"}])
    assign, protected = resolve(net, cfg)
    assert assign and all(".attn" in n for n in assign)
    assert "proj_out" in protected and not any(n.startswith("adaln_single") for n in assign)
    ff = QuantizeConfig(
        feed_forward="int8_weight_only", rules=[{"match": "re:.*", "format": "none"}]
    )
    assert sorted(resolve(net, ff)[0]) == [
        f"transformer_blocks.{i}.ff.net.{j}" for i in range(4) for j in ("0.proj", "2")
    ]
    with pytest.raises(CompressError, match="has attention, feed_forward"):
        resolve(net, QuantizeConfig(down_blocks="int8_weight_only"))
    with pytest.raises(CompressError, match="feed_forward selects no Linear layer of Sana"):
        resolve(build_tiny_sana_pipeline().transformer, ff)


# --- distillation ---


def test_flow_trajectory_student_matches_the_guided_teacher_in_two_steps() -> None:
    """Each student Euler step learns the guided teacher's 3-step solve of its segment of the
    flow ODE, so 2 steps come closer to the teacher's 20-step output than its own 2 steps."""
    pipe = build_tiny_sd3_pipeline()
    teacher = copy.deepcopy(pipe)
    cfg = DistillStepsConfig(
        method="trajectory",
        steps=24,
        batch_size=4,
        samples=16,
        teacher_steps=4,
        lr=1e-3,
        student_steps=2,
        teacher_substeps=3,
        guidance_scale=4.0,
    )
    run(pipe, cfg, ctx=RunContext(prompts=PROMPTS))
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert call_defaults(pipe) == {"num_inference_steps": 2, "guidance_scale": 1.0}
    assert calls(pipe) == [1, 1]
    reference = latents(teacher, num_inference_steps=20, guidance_scale=4.0)
    plain = latents(teacher, num_inference_steps=2, guidance_scale=4.0)
    assert rel_mse(latents(pipe), reference) < 0.5 * rel_mse(plain, reference)


def test_guidance_embedding_on_a_flow_transformer_takes_one_call_per_step() -> None:
    """The added embedding starts at zero (the conditional prediction) and learns the guided
    one; the pipeline then samples with one transformer call per step at SD3's default scale."""
    from compress.train.diffusion import encode_prompts, noisy, predict, training_scheduler
    from compress.transforms.distill._student import guidance_inputs, guided

    pipe = build_tiny_sd3_pipeline()
    teacher = copy.deepcopy(pipe)
    cfg = DistillGuidanceConfig(
        steps=40, batch_size=8, samples=16, teacher_steps=2, lr=2e-4, embedding_dim=32
    )
    ctx = RunContext(prompts=PROMPTS)
    meta = run(pipe, cfg, ctx=ctx).records[0].metadata
    res = ctx.cache["distill_guidance"]
    assert res.mean_loss(first=False) < 0.5 * res.mean_loss(first=True)
    assert meta["native"] is False and meta["embedded_guidance"] == 7.0  # SD3's default
    assert calls(pipe) == [1] * 28 and calls(teacher) == [2] * 28

    torch.manual_seed(3)  # held-out inputs like the training ones: teacher samples, noised
    x, t, _ = noisy(training_scheduler(teacher), latents(teacher, n=8, num_inference_steps=2))
    prompts = [PROMPTS[i % 4] for i in range(8)]
    cond, uncond = encode_prompts(pipe, prompts), encode_prompts(pipe, [""])
    err = err_start = 0.0
    for g in (5.0, 7.0):  # SD3's usual scales (a random model's guidance barely moves it at 2)
        scale = torch.full((8,), g)
        want = guided(teacher, x, t, cond, uncond, scale)
        with torch.no_grad():
            got = predict(
                pipe.transformer, x, t, cond, **guidance_inputs(pipe, pipe.transformer, scale)
            )
            start = predict(teacher.transformer, x, t, cond)  # the student before training
        err += float(((got - want) ** 2).mean())
        err_start += float(((start - want) ** 2).mean())
    assert err < 0.9 * err_start

    at_default = latents(pipe, n=1, num_inference_steps=2)
    compress.set_embedded_guidance(pipe, 2.0)  # another scale, still one call per step
    assert calls(pipe) == [1] * 28
    assert not torch.equal(latents(pipe, n=1, num_inference_steps=2), at_default)


def test_students_name_what_applies() -> None:
    ctx = RunContext(prompts=PROMPTS, teacher=build_tiny_sd3_pipeline())
    with pytest.raises(CompressError, match="flow-matching model: use method trajectory"):
        run(build_tiny_sd3_pipeline(), DistillStepsConfig(steps=1), ctx=ctx)
    ctx = RunContext(prompts=PROMPTS, teacher=build_tiny_pixart_pipeline())
    lora = DistillStepsConfig(method="trajectory", steps=1, lora_rank=4, samples=2, teacher_steps=1)
    with pytest.raises(CompressError, match="no LoRA support for PixArtTransformer2DModel"):
        run(build_tiny_pixart_pipeline(), lora, ctx=ctx)


def test_sana_samples_after_block_removal_and_quantization() -> None:
    pipe = build_tiny_sana_pipeline()
    run(
        pipe,
        PruneBlocksConfig(every=2),
        QuantizeConfig(attention="int8_weight_only", rules=[{"match": "re:.*", "format": "none"}]),
    )
    assert pipe.transformer.config.num_layers == 3
    out = latents(pipe, n=1, num_inference_steps=2, **SANA_CALL)
    assert out.shape == (1, 4, 16, 16) and out.isfinite().all()


def test_training_encodes_text_as_the_pipeline_is_called() -> None:
    """SD3 without T5 pads `max_sequence_length` zero positions (256 by default); a pipeline
    sampled with another length (a recorded call default) is trained with that one too."""
    from compress.generate import set_call_defaults
    from compress.train.diffusion import encode_prompts

    pipe = build_tiny_sd3_pipeline()
    assert encode_prompts(pipe, PROMPTS[:1])["encoder_hidden_states"].shape[1] == 16 + 256
    set_call_defaults(pipe, max_sequence_length=0)
    assert encode_prompts(pipe, PROMPTS[:1])["encoder_hidden_states"].shape[1] == 16
