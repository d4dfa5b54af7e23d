"""A ControlNet made for the uncompressed UNet, on the pipeline every transform compresses: what
diffusers does alone, where `controlnet_pipeline` maps residuals onto pruned skips, and, for
every other transform, that the control takes effect and stays close to the uncompressed
pipeline's where the transform is close to it. Each test backs one cell of the ControlNet
column of the compatibility table."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

from compress.apply import apply_recipe
from compress.context import RunContext
from compress.controlnet import controlnet_pipeline, residual_map
from compress.errors import CompressError
from compress.generate import set_call_defaults
from compress.models.tiny import build_tiny_pipeline
from compress.models.unet import SKIP_CHANNELS, example_inputs, skip_modules
from compress.recipe import Recipe
from compress.transforms.distill.guidance import DistillGuidanceConfig
from compress.transforms.distill.recovery import DistillConfig
from compress.transforms.distill.steps import DistillStepsConfig
from compress.transforms.prune.blocks import PruneBlocksConfig
from compress.transforms.prune.channels import PruneChannelsConfig
from compress.transforms.quantize.ptq import QuantizeConfig
from compress.transforms.quantize.qat import QATConfig
from compress.transforms.runtime.cache import CacheConfig, cache_stats
from compress.transforms.runtime.compile import CompileConfig
from compress.transforms.runtime.sampler import SamplerConfig

PROMPTS = ["a red seven on a blue background", "a green digit two"]
CALL = {"num_inference_steps": 4, "guidance_scale": 4.0}  # the base pipeline's call defaults
TRAIN = {"steps": 2, "batch_size": 2, "samples": 2, "teacher_steps": 2}
# a control image: 16 px, the tiny VAE's 2x of the 8x8 latents
IMAGE = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
NOTE = "ControlNet made for the unpruned UNet"
# the innermost stage's first pair: diffusers alone misplaces residuals silently (shapes agree)
INNERMOST_FIRST_PAIR = PruneBlocksConfig(remove=["down_blocks.2.0", "up_blocks.0.0"])


def controlnet_for(unet: torch.nn.Module) -> torch.nn.Module:
    """diffusers' ControlNet of `unet`, with its zero-initialised convolutions drawn at random
    so that it changes outputs and depends on the control image (as a trained one does)."""
    from diffusers import ControlNetModel

    torch.manual_seed(3)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16))
    zero = [*net.controlnet_down_blocks, net.controlnet_mid_block]
    with torch.no_grad():
        for conv in [*zero, net.controlnet_cond_embedding.conv_out]:
            torch.nn.init.normal_(conv.weight, std=0.1)
    return net.eval()


def base_pipeline():
    pipe = build_tiny_pipeline()
    set_call_defaults(pipe, **CALL)
    return pipe


def compressed(*transforms):
    pipe = base_pipeline()
    applied = apply_recipe(pipe, Recipe(name="c", transforms=list(transforms)), context())
    return pipe, applied


def context() -> RunContext:
    return RunContext(prompts=PROMPTS)


def latents(pipe, scale: float = 1.0, image: object = IMAGE) -> torch.Tensor:
    """One prompt sampled with the pipeline's call defaults and a fixed seed."""
    out = pipe(
        "a red seven",
        image=image,
        height=16,
        width=16,
        output_type="latent",
        controlnet_conditioning_scale=scale,
        generator=torch.Generator().manual_seed(0),
    )
    return out.images


def with_controlnet(pipe, net) -> tuple[object, list[str]]:
    """The ControlNet pipeline and the notes controlnet_pipeline warned."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = controlnet_pipeline(pipe, net)
    return out, [str(w.message) for w in seen if NOTE in str(w.message)]


def effect(pipe) -> float:
    """How much the control image changes the latents (mean absolute difference)."""
    return float((latents(pipe) - latents(pipe, 0.0)).abs().mean())


def mean_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean())


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    return controlnet_for(build_tiny_pipeline().unet)


@pytest.fixture(scope="module")
def reference(net) -> torch.Tensor:
    """The uncompressed pipeline's ControlNet latents; its control changes them by ~2.2."""
    pipe, notes = with_controlnet(base_pipeline(), net)
    assert notes == [] and effect(pipe) > 1.0
    return latents(pipe)


# -- block pruning ------------------------------------------------------------------------------


def three_stage_pipeline():
    """The tiny pipeline with a 3-stage UNet (32, 64, 64): the innermost stage can go (tiny)."""
    from diffusers import UNet2DConditionModel

    pipe = base_pipeline()
    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    pipe.register_modules(unet=unet)
    return pipe


def made_for(pruned: torch.nn.Module, base: torch.nn.Module) -> list[int]:
    """For each skip of the pruned UNet, the unpruned skip whose module it is, found by weights
    (prune_blocks copies the surviving ones): the truth, independent of the records."""
    names = skip_modules(base)
    out = []
    for name in skip_modules(pruned):
        mine = pruned.get_submodule(name).state_dict()
        hits = []
        for i, other in enumerate(names):
            theirs = base.get_submodule(other).state_dict()
            if mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine):
                hits.append(i)
        assert len(hits) == 1, (name, hits)
        out.append(hits[0])
    return out


def controlnet_residuals(net, unet) -> tuple[dict, tuple, torch.Tensor]:
    x = example_inputs(unet)
    x["sample"] = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        down, mid = net(
            x["sample"],
            x["timestep"],
            encoder_hidden_states=x["encoder_hidden_states"],
            controlnet_cond=IMAGE,
            return_dict=False,
        )
    return x, down, mid


@pytest.mark.parametrize(
    "cfg,dropped",
    [
        (PruneBlocksConfig(preset="base"), ["down_blocks.0.attentions.1"]),
        (PruneBlocksConfig(preset="small"), ["down_blocks.0.attentions.1"]),
        (
            PruneBlocksConfig(preset="tiny"),
            ["down_blocks.1.downsamplers.0", "down_blocks.2.resnets.1", "mid_block"],
        ),
        (INNERMOST_FIRST_PAIR, []),
    ],
    ids=["base", "small", "tiny", "innermost-first-pair"],
)
def test_block_pruned_skips_take_the_residuals_made_for_them(cfg, dropped) -> None:
    """Each skip left takes the residual of the layer it was in the unpruned UNet (found by
    weights); residuals of removed layers, and the mid one once the innermost stage is gone,
    are dropped."""
    pipe = three_stage_pipeline()
    unpruned, net = pipe.unet, controlnet_for(pipe.unet)
    apply_recipe(pipe, Recipe(name="p", transforms=[cfg]))
    truth = made_for(pipe.unet, unpruned)
    residuals = residual_map(pipe.unet, net)
    assert list(residuals.skips) == truth
    assert set(dropped) <= set(residuals.dropped)
    assert residuals.mid == (cfg.preset != "tiny")  # the innermost stage's mid residual: gone

    # the UNet the ControlNet pipeline calls maps them so (a forward pre-hook)
    controlled, notes = with_controlnet(pipe, net)
    assert len(notes) == 1 and all(d in notes[0] for d in residuals.dropped)
    x, down, mid = controlnet_residuals(net, unpruned)
    mid_want = mid if residuals.mid else torch.zeros(())
    with torch.no_grad():
        got = controlled.unet(
            **x, down_block_additional_residuals=down, mid_block_additional_residual=mid
        ).sample
        want = pipe.unet(
            **x,
            down_block_additional_residuals=tuple(down[i] for i in truth),
            mid_block_additional_residual=mid_want,
        ).sample
        assert not torch.equal(got, pipe.unet(**x).sample)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert effect(controlled) > 0.5


def test_diffusers_alone_fails_or_misplaces_base_residuals_on_pruned_unets(net) -> None:
    """diffusers pairs residuals with skips by position (zip): a shape error where a removed
    layer shifts a residual onto another resolution or width, silent misplacement where the
    shapes agree."""
    from diffusers import StableDiffusionControlNetPipeline

    def native(pipe, controlnet):
        parts = {k: v for k, v in pipe.components.items() if k != "image_encoder"}
        out = StableDiffusionControlNetPipeline(**parts, controlnet=controlnet)
        out.set_progress_bar_config(disable=True)
        return out

    for cfg in (PruneBlocksConfig(preset="small"), PruneChannelsConfig(ratio=0.25)):
        pipe, _ = compressed(cfg)
        with pytest.raises(RuntimeError, match="must match the size"):
            latents(native(pipe, net))

    pipe = three_stage_pipeline()
    three = controlnet_for(pipe.unet)
    apply_recipe(pipe, Recipe(name="p", transforms=[INNERMOST_FIRST_PAIR]))
    silent = latents(native(pipe, three))  # runs: the last residuals shifted by one skip
    mapped = latents(with_controlnet(pipe, three)[0])
    assert mean_abs(silent, mapped) > 0.1


def test_block_pruned_pipeline_warns_once_runs_and_reloads(net, tmp_path: Path) -> None:
    from diffusers import DiffusionPipeline, MultiControlNetModel

    from compress.artifact import load_artifact, save_artifact

    pipe, applied = compressed(PruneBlocksConfig(preset="small"))
    controlled, notes = with_controlnet(pipe, net)
    assert notes == [
        f"{NOTE} on a pruned one: the residuals of down_blocks.0.attentions.1, "
        "down_blocks.1.resnets.1 are dropped (prune_blocks removed those layers); the mid "
        "residual is added to the last down block's output, where the removed mid block's "
        "output was"
    ]
    got = latents(controlled)
    assert effect(controlled) > 0.5
    # without control it is the compressed pipeline itself (its components and call defaults)
    plain = pipe("a red seven", height=16, width=16, output_type="latent",
                 generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    torch.testing.assert_close(latents(controlled, 0.0), plain, rtol=0, atol=0)
    # two ControlNets of the base model: their summed residuals are mapped once
    multi = with_controlnet(pipe, MultiControlNetModel([net, net]))[0]
    two = latents(multi, 0.5, image=[IMAGE, IMAGE])
    torch.testing.assert_close(two, got, rtol=0, atol=1e-5)

    folder = save_artifact(pipe, applied, tmp_path / "pruned")
    reloaded, _ = with_controlnet(load_artifact(folder), net)  # prune_blocks' records replayed
    torch.testing.assert_close(latents(reloaded), got, rtol=0, atol=1e-6)
    plain_load = DiffusionPipeline.from_pretrained(folder)
    with pytest.raises(CompressError, match="6 skip residuals.*4 skip connections.*compress.load"):
        controlnet_pipeline(plain_load, net)


def test_block_pruned_sdxl_pipeline_runs() -> None:
    from compress.models.tiny import build_tiny_sdxl_pipeline

    pipe = build_tiny_sdxl_pipeline()
    set_call_defaults(pipe, **CALL)
    sdxl = controlnet_for(pipe.unet)
    apply_recipe(pipe, Recipe(name="p", transforms=[PruneBlocksConfig(preset="small")]))
    controlled, notes = with_controlnet(pipe, sdxl)
    assert type(controlled).__name__ == "StableDiffusionXLControlNetPipeline"
    assert "down_blocks.0.resnets.1, down_blocks.1.attentions.1 are dropped" in notes[0]
    assert effect(controlled) > 0.5


# -- channel pruning ----------------------------------------------------------------------------


def test_channel_pruned_residuals_keep_the_recorded_channels(net, tmp_path: Path) -> None:
    from compress.artifact import load_artifact, save_artifact

    unpruned = build_tiny_pipeline().unet
    pipe, applied = compressed(PruneChannelsConfig(ratio=0.25))
    residuals = residual_map(pipe.unet, net)
    kept = pipe.unet._compress_skip_channels
    assert residuals.dropped == () and len(residuals.sliced) == 4
    # the record names unpruned channels: the pruned layers' biases are the unpruned ones there
    for layer in residuals.sliced:
        bias = pipe.unet.get_submodule(layer).bias
        torch.testing.assert_close(bias, unpruned.get_submodule(layer).bias[kept[layer]])
    ds = skip_modules(net).index("down_blocks.0.downsamplers.0")
    assert residuals.channels[ds] == tuple(kept["down_blocks.0.downsamplers.0.conv"])

    controlled, notes = with_controlnet(pipe, net)
    assert "down_blocks.0.downsamplers.0.conv, down_blocks.1.resnets.0.conv2" in notes[0]
    assert "keep only the channels prune_channels kept" in notes[0]
    got = latents(controlled)
    assert effect(controlled) > 0.5

    reloaded = load_artifact(save_artifact(pipe, applied, tmp_path / "channels"))
    torch.testing.assert_close(latents(with_controlnet(reloaded, net)[0]), got, rtol=0, atol=1e-6)

    delattr(pipe.unet, SKIP_CHANNELS)  # no record of the kept channels: refused, not guessed
    with pytest.raises(
        CompressError, match="down_blocks.0.downsamplers.0.conv has 16 channels, the residual 32"
    ):
        controlnet_pipeline(pipe, net)


def test_blocks_then_channels_compose() -> None:
    pipe = three_stage_pipeline()
    three = controlnet_for(pipe.unet)
    cfgs = [PruneBlocksConfig(preset="small"), PruneChannelsConfig(ratio=0.25)]
    apply_recipe(pipe, Recipe(name="p", transforms=cfgs))
    residuals = residual_map(pipe.unet, three)
    assert list(residuals.skips) == [0, 1, 3, 4, 6, 7] and residuals.sliced
    controlled, notes = with_controlnet(pipe, three)
    assert "dropped" in notes[0] and "prune_channels kept" in notes[0]
    assert effect(controlled) > 0.5


# -- quantization -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "transform,closeness",
    [
        (QuantizeConfig(rules=[{"match": "re:.*", "format": "int8_weight_only"}]), 0.05),
        (QuantizeConfig(rules=[{"match": "re:.*", "format": "int8_dynamic"}]), 0.1),
        (QuantizeConfig(rules=[{"match": "re:.*", "format": "intx4_weight_only"}]), 0.15),
        (QuantizeConfig(rules=[{"match": "re:.*", "format": "inc_rtn_int4"}]), 0.15),
        (QATConfig(rules=[{"match": "re:.*", "format": "int8_dynamic"}], **TRAIN), 0.1),
    ],
    ids=["torchao-int8_weight_only", "torchao-int8_dynamic", "torchao-intx4", "inc-rtn", "qat"],
)
def test_quantized_unet_takes_the_base_controlnet(transform, closeness, net, reference) -> None:
    """Residuals pass unchanged (float ControlNet, quantized UNet); the control's effect stays,
    and the latents stay within `closeness` x that effect of the uncompressed pipeline's."""
    pipe, _ = compressed(transform)
    controlled, notes = with_controlnet(pipe, net)
    assert notes == []
    change = effect(controlled)
    assert change > 1.0
    assert mean_abs(latents(controlled), reference) < closeness * change


@pytest.mark.gpu
def test_bitsandbytes_quantized_unet_takes_the_base_controlnet(net) -> None:
    """bitsandbytes layers load only on CUDA (quantize refuses other devices)."""
    import copy

    from compress.transforms.quantize.ptq import apply_quantize

    pipe = base_pipeline().to("cuda")
    cfg = QuantizeConfig(rules=[{"match": "re:.*attn.*", "format": "bnb_int8"}])
    apply_quantize(pipe, cfg, RunContext(device="cuda"))
    controlled, notes = with_controlnet(pipe, copy.deepcopy(net).to("cuda"))
    assert notes == [] and effect(controlled) > 1.0


# -- distilled students -------------------------------------------------------------------------


def unet_batches(pipe) -> list[int]:
    """The batch of each UNet call of the next pipeline call (2: with the CFG pass)."""
    seen: list[int] = []
    pipe.unet.register_forward_pre_hook(
        lambda m, args, kw: seen.append(len(kw.get("encoder_hidden_states"))), with_kwargs=True
    )
    return seen


@pytest.mark.parametrize(
    "transform,batches",
    [
        (DistillConfig(**TRAIN), [2] * 4),
        (DistillStepsConfig(student_steps=2, lora_rank=2, **TRAIN), [1] * 2),
        (DistillGuidanceConfig(embedding_dim=8, **TRAIN), [1] * 4),
    ],
    ids=["distill", "distill_steps", "distill_guidance"],
)
def test_distilled_students_take_the_base_controlnet(transform, batches, net) -> None:
    """Each student samples as it was made to (its steps, no CFG pass where it has none) in the
    ControlNet pipeline, with the control in effect."""
    pipe, _ = compressed(transform)
    controlled, notes = with_controlnet(pipe, net)
    assert notes == []
    seen = unet_batches(controlled)
    latents(controlled)
    assert seen == batches
    assert effect(controlled) > 1.0


# -- runtime ------------------------------------------------------------------------------------


def test_sampler_settings_reach_the_controlnet_pipeline(net) -> None:
    from diffusers import EulerDiscreteScheduler

    pipe, _ = compressed(SamplerConfig(scheduler="euler", steps=3, guidance_scale=4.0))
    controlled, _ = with_controlnet(pipe, net)
    seen = unet_batches(controlled)
    got = latents(controlled)
    assert seen == [2] * 3 and isinstance(controlled.scheduler, EulerDiscreteScheduler)
    # the uncompressed ControlNet pipeline on the same sampler gives the same latents
    base, _ = with_controlnet(base_pipeline(), net)
    base.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    set_call_defaults(base, num_inference_steps=3)
    torch.testing.assert_close(got, latents(base), rtol=0, atol=1e-6)


def test_deepcache_adds_controlnet_residuals_on_its_cached_steps(net, reference) -> None:
    """Cached steps run the shallow branch with the current residuals of its skips (the deep
    ones are in the feature of the last full step); given the full step's feature, the shallow
    branch with residuals reproduces the UNet exactly."""
    from compress.transforms.runtime import _deepcache as dc

    unet = build_tiny_pipeline().unet.eval()
    x, down, mid = controlnet_residuals(net, unet)
    residual = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
    for branch in range(dc.skip_count(unet) - 1):
        got: dict[str, torch.Tensor] = {}
        hook = dc.feature_module(unet, branch).register_forward_hook(
            lambda m, a, out, got=got: got.update(f=out[0] if isinstance(out, tuple) else out)
        )
        with torch.no_grad():
            full = unet(**x, **residual).sample
            hook.remove()
            part = dc.shallow_forward(unet, branch, got["f"], (), {**x, **residual}).sample
        torch.testing.assert_close(part, full, rtol=0, atol=1e-6)

    pipe, _ = compressed(CacheConfig(interval=2, branch=1))
    controlled, _ = with_controlnet(pipe, net)
    cached = latents(controlled)
    assert cache_stats(controlled) == {"denoiser_calls": 4, "full_calls": 2, "steps": 4}
    assert effect(controlled) > 1.0 and 0 < mean_abs(cached, reference) < 0.25 * effect(controlled)
    pipe, _ = compressed(CacheConfig(interval=1))  # every step full: exact
    torch.testing.assert_close(latents(with_controlnet(pipe, net)[0]), reference, rtol=0, atol=0)

    pipe, _ = compressed(PruneBlocksConfig(preset="small"), CacheConfig(interval=2))
    controlled, _ = with_controlnet(pipe, net)  # residuals mapped before the cache sees them
    assert effect(controlled) > 0.5
    assert cache_stats(controlled) == {"denoiser_calls": 4, "full_calls": 2, "steps": 4}


def test_compiled_unet_takes_the_base_controlnet(
    net, reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compile's wiring (dynamo traces the UNet with the residual inputs, full graph); inductor's
    kernels are tested in tests/transforms/test_compile.py."""
    monkeypatch.setenv("COMPRESS_COMPILE_BACKEND", "eager")
    assert os.environ["COMPRESS_COMPILE_BACKEND"] == "eager"
    pipe, _ = compressed(CompileConfig(attention="math"))
    controlled, _ = with_controlnet(pipe, net)
    # fused QKV and channels-last reorder float sums: latents of ~12 move by < 1e-4
    torch.testing.assert_close(latents(controlled), reference, rtol=0, atol=2e-4)
    assert effect(controlled) > 1.0

    pruned, _ = compressed(PruneBlocksConfig(preset="small"))
    want = latents(with_controlnet(pruned, net)[0])
    pipe, _ = compressed(PruneBlocksConfig(preset="small"), CompileConfig(attention="math"))
    torch.testing.assert_close(latents(with_controlnet(pipe, net)[0]), want, rtol=0, atol=2e-4)


def test_transformer_denoisers_are_refused(net) -> None:
    from compress.models.tiny import build_tiny_pixart_pipeline

    with pytest.raises(CompressError, match="UNet denoisers.*not PixArtTransformer2DModel"):
        controlnet_pipeline(build_tiny_pixart_pipeline(), net)
    with pytest.raises(CompressError, match="takes diffusers ControlNetModel"):
        controlnet_pipeline(base_pipeline(), build_tiny_pipeline().unet)
