"""cache: DeepCache's shallow branch reproduces the UNet exactly when fed the full step's feature,
runs the whole UNet only on its schedule, resets per pipeline call, composes with the other
transforms and reloads; diffusers' cache hooks run on tiny PixArt and SD3 pipelines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import compress
from compress.apply import apply_recipe, restore
from compress.artifact import save_artifact
from compress.context import RunContext
from compress.errors import CompressError
from compress.generate import generate
from compress.models.tiny import (
    SD_SCHEDULE,
    WORDS,
    _vae,
    build_tiny_pipeline,
    build_tiny_sdxl_pipeline,
)
from compress.models.tokenizer import build_word_tokenizer
from compress.models.unet import example_inputs
from compress.recipe import Recipe, load_recipe
from compress.transforms.distill.guidance import DistillGuidanceConfig
from compress.transforms.prune.blocks import PruneBlocksConfig, apply_prune_blocks
from compress.transforms.quantize.ptq import QuantizeConfig
from compress.transforms.runtime import _deepcache as dc
from compress.transforms.runtime.cache import CacheConfig, apply_cache, cache_stats, remove_cache
from compress.transforms.runtime.sampler import SamplerConfig

PROMPTS = ["a red seven on a blue background", "a green digit two"]


def images(pipe, steps: int = 6, **kw) -> np.ndarray:
    """8-bit images (float outputs may differ in the last ulp after a reload)."""
    out = generate(pipe, PROMPTS, [0, 1], num_inference_steps=steps, **kw)
    return np.stack([np.asarray(im) for im in out]).astype(np.float32)


def assert_reloaded(got: np.ndarray, want: np.ndarray) -> None:
    """Reloaded weights can differ from the in-memory ones in the last float ulp (on 2 CPU
    threads this flipped one 8-bit level of one pixel of the SD2-style pipeline): the same
    images up to that."""
    np.testing.assert_allclose(got, want, rtol=0, atol=1)
    assert (got == want).mean() > 0.99


def pruned_pipeline():
    pipe = build_tiny_pipeline()
    apply_prune_blocks(pipe, PruneBlocksConfig(preset="small"), RunContext())  # no mid block
    return pipe


def guided_unet():  # a guidance embedding (time_cond_proj_dim), as distill_guidance adds
    from diffusers import UNet2DConditionModel

    unet = build_tiny_pipeline().unet
    return UNet2DConditionModel.from_config({**unet.config, "time_cond_proj_dim": 8})


@pytest.mark.parametrize(
    "build",
    [
        lambda: build_tiny_pipeline().unet,
        lambda: build_tiny_sdxl_pipeline().unet,  # added text_time conditions
        lambda: pruned_pipeline().unet,
        guided_unet,
    ],
    ids=["sd", "sdxl", "pruned", "guidance-embedding"],
)
def test_shallow_branch_reproduces_the_unet_given_the_full_steps_feature(build) -> None:
    unet = build().eval()
    x = example_inputs(unet, batch=2)  # a CFG-sized batch
    for branch, side in [(b, 4) for b in range(dc.skip_count(unet) - 1)] + [(1, 5)]:
        # side 5: odd latents, upsample sizes forwarded
        x["sample"] = torch.randn(2, 4, side, side, generator=torch.Generator().manual_seed(0))
        got: dict[str, torch.Tensor] = {}

        def keep(m, a, out, got=got) -> None:
            got["f"] = out[0] if isinstance(out, tuple) else out

        hook = dc.feature_module(unet, branch).register_forward_hook(keep)
        with torch.no_grad():
            full = unet(**x, return_dict=False)[0]
        hook.remove()
        with torch.no_grad():
            part = dc.shallow_forward(unet, branch, got["f"], (), {**x, "return_dict": False})[0]
        torch.testing.assert_close(part, full, rtol=0, atol=1e-6)


def test_schedules() -> None:
    assert dc.full_steps(20, 3, "uniform") == [0, 3, 6, 9, 12, 15, 18]
    for steps in (4, 8, 20, 50):
        for interval in (2, 3, 5):
            uniform = dc.full_steps(steps, interval, "uniform")
            other = dc.full_steps(steps, interval, "nonuniform")
            assert len(other) == len(uniform) and other == sorted(set(other))
            assert other[0] == 0 and other[-1] < steps
    assert dc.full_steps(20, 3, "nonuniform") != dc.full_steps(20, 3, "uniform")


def test_deepcache_runs_the_whole_unet_on_its_schedule_only() -> None:
    base = build_tiny_pipeline()
    pipe = build_tiny_pipeline()
    sampler = SamplerConfig(steps=7, guidance_scale=4.0)
    recipe = Recipe(name="c", transforms=[sampler, CacheConfig(interval=3, branch=1)])
    meta = apply_recipe(pipe, recipe).records[1].metadata
    assert meta["full_steps"] == [0, 3, 6] and meta["full_calls"] == 3 and meta["steps"] == 7
    deep: list[int] = []
    pipe.unet.mid_block.register_forward_hook(lambda *_: deep.append(1))
    cached = images(pipe, 7, guidance_scale=4.0)
    assert cache_stats(pipe) == {"denoiser_calls": 7, "full_calls": 3, "steps": 7}
    assert len(deep) == 3  # the deep part ran on the full steps only
    ref = images(base, 7, guidance_scale=4.0)
    assert 0 < np.abs(cached - ref).mean() < 12  # approximate (8-bit levels), not broken
    np.testing.assert_array_equal(images(pipe, 7, guidance_scale=4.0), cached)  # reset per call
    images(pipe, 4, guidance_scale=4.0)  # another step count: its own schedule
    assert cache_stats(pipe) == {"denoiser_calls": 4, "full_calls": 2, "steps": 4}
    apply_cache(pipe, CacheConfig(interval=1), RunContext())  # every step full: exact
    np.testing.assert_array_equal(images(pipe, 7, guidance_scale=4.0), ref)
    remove_cache(pipe)
    assert cache_stats(pipe) is None
    np.testing.assert_array_equal(images(pipe, 7, guidance_scale=4.0), ref)


def test_branch_must_fit_the_unet() -> None:
    apply_cache(build_tiny_pipeline(), CacheConfig(branch=4), RunContext())  # 6 skips: 0-4
    with pytest.raises(CompressError, match="branch 5 is deeper than this UNet.*0-4"):
        apply_cache(build_tiny_pipeline(), CacheConfig(branch=5), RunContext())
    with pytest.raises(CompressError, match="4 skip connections.*0-2"):
        apply_cache(pruned_pipeline(), CacheConfig(branch=3), RunContext())


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"method": "first_block", "interval": 2}, "first_block does not take interval"),
        ({"method": "deepcache", "threshold": 0.1}, "deepcache does not take threshold"),
        ({"method": "taylorseer", "branch": 1}, "taylorseer does not take branch"),
        ({"method": "deepcache", "options": {"x": 1}}, "does not take options"),
        ({"method": "teacache"}, "method"),
    ],
)
def test_each_method_takes_its_own_knobs(fields: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        CacheConfig(**fields)


# -- diffusers' hooks on transformer denoisers (tiny pipelines built here) --


def _t5(vocab: int):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=vocab, d_model=32, d_ff=64, d_kv=8, num_layers=1, num_heads=4)
    return T5EncoderModel(cfg).eval()


def tiny_pixart():
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    torch.manual_seed(0)
    tok = build_word_tokenizer(WORDS)
    net = PixArtTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=3,
        cross_attention_dim=16,
        sample_size=8,
        caption_channels=32,
        norm_num_groups=1,
    )
    pipe = PixArtAlphaPipeline(
        tokenizer=tok,
        text_encoder=_t5(len(tok)),
        vae=_vae(),
        transformer=net,
        scheduler=DPMSolverMultistepScheduler(**SD_SCHEDULE),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3():
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(0)
    tok = build_word_tokenizer(WORDS)
    n = len(tok)
    clip = CLIPTextConfig(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=1,
        vocab_size=n,
        max_position_embeddings=16,
        projection_dim=32,
        bos_token_id=n - 2,
        eos_token_id=n - 1,
        pad_token_id=n - 1,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        shift_factor=0.0,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    net = SD3Transformer2DModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        num_layers=3,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,
        pooled_projection_dim=64,
        pos_embed_max_size=16,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=net,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=CLIPTextModelWithProjection(clip).eval(),
        tokenizer=tok,
        text_encoder_2=CLIPTextModelWithProjection(clip).eval(),
        tokenizer_2=tok,
        text_encoder_3=_t5(n),
        tokenizer_3=tok,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def dit_images(pipe, steps: int = 4) -> np.ndarray:
    extra = {"clean_caption": False, "use_resolution_binning": False}
    kw = extra if "PixArt" in type(pipe).__name__ else {}
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    return pipe(
        PROMPTS,
        num_inference_steps=steps,
        guidance_scale=4.0,
        height=16,
        width=16,
        generator=gens,
        max_sequence_length=16,
        output_type="np",
        **kw,
    ).images


BUILDERS = {"pixart": tiny_pixart, "sd3": tiny_sd3}
HOOK_CASES = [
    ("pixart", CacheConfig(method="first_block", threshold=10.0)),  # skips every step after 0
    ("pixart", CacheConfig(method="pyramid_attention_broadcast", interval=2)),
    ("pixart", CacheConfig(method="faster_cache", interval=2)),
    ("pixart", CacheConfig(method="taylorseer", interval=2, options={"max_order": 2})),
    ("sd3", CacheConfig(method="pyramid_attention_broadcast", interval=3)),
    ("sd3", CacheConfig(method="faster_cache", interval=2)),
    ("sd3", CacheConfig(method="taylorseer", interval=2)),
]


@pytest.fixture(scope="module")
def dit_reference() -> dict[str, np.ndarray]:
    return {k: dit_images(build()) for k, build in BUILDERS.items()}


@pytest.mark.parametrize(("arch", "cfg"), HOOK_CASES, ids=lambda v: getattr(v, "method", v))
def test_diffusers_hooks_on_tiny_transformers(arch: str, cfg: CacheConfig, dit_reference) -> None:
    from compress.transforms.base import spec_of

    pipe = BUILDERS[arch]()
    meta = apply_cache(pipe, cfg, RunContext())
    assert meta["method"] == cfg.method and meta["config"]  # the diffusers config as plain data
    ref = dit_reference[arch]
    got = dit_images(pipe)
    stats = cache_stats(pipe)
    assert stats["denoiser_calls"] == 4 and stats["steps"] == 4
    assert stats["full_calls"] == (1 if cfg.method == "first_block" else 4)
    assert 0 < np.abs(got - ref).mean() < 0.05  # cached: changed, but close
    np.testing.assert_array_equal(dit_images(pipe), got)  # state reset per call
    fresh = BUILDERS[arch]()
    spec_of(cfg).restore(fresh, cfg, meta)  # what compress.load replays
    np.testing.assert_array_equal(dit_images(fresh), got)
    remove_cache(pipe)
    np.testing.assert_array_equal(dit_images(pipe), ref)


def test_methods_refused_where_they_do_not_apply() -> None:
    with pytest.raises(CompressError, match="first_block is not available for SD3"):
        apply_cache(tiny_sd3(), CacheConfig(method="first_block"), RunContext())
    pixart = tiny_pixart()
    with pytest.raises(CompressError, match="not UNet2DConditionModel.*deepcache"):
        apply_cache(build_tiny_pipeline(), CacheConfig(method="first_block"), RunContext())
    with pytest.raises(CompressError, match="applies to UNet denoisers.*first_block"):
        apply_cache(pixart, CacheConfig(method="deepcache"), RunContext())
    with pytest.raises(CompressError, match="not fields of diffusers' TaylorSeerCacheConfig"):
        apply_cache(pixart, CacheConfig(method="taylorseer", options={"bogus": 1}), RunContext())
    no_match = CacheConfig(method="taylorseer", options={"cache_identifiers": ["nothing"]})
    with pytest.raises(CompressError, match="matched no module"):
        apply_cache(pixart, no_match, RunContext())


# -- composition and reload --


def test_pruned_guidance_distilled_quantized_cached_pipeline_reloads(tmp_path: Path) -> None:
    pipe = build_tiny_pipeline()
    recipe = Recipe(
        name="all",
        transforms=[
            PruneBlocksConfig(preset="small"),
            DistillGuidanceConfig(
                steps=2, batch_size=2, samples=2, teacher_steps=2, embedding_dim=8
            ),
            QuantizeConfig(rules=[{"match": "up_blocks", "format": "int8_weight_only"}]),
            SamplerConfig(steps=5, guidance_scale=4.0),
            CacheConfig(interval=2, branch=2),  # the pruned UNet has 4 skips: branches 0-2
        ],
    )
    applied = apply_recipe(pipe, recipe, RunContext(prompts=PROMPTS))
    assert applied.records[-1].metadata["full_steps"] == [0, 2, 4]
    before = images(pipe, 5)
    assert cache_stats(pipe) == {"denoiser_calls": 5, "full_calls": 3, "steps": 5}
    loaded = compress.load(str(save_artifact(pipe, applied, tmp_path / "a")))
    assert_reloaded(images(loaded, 5), before)
    assert cache_stats(loaded) == {"denoiser_calls": 5, "full_calls": 3, "steps": 5}


def tiny_sd2_style():
    """SD2-shaped, unlike any pipeline the project ships: v-prediction, linear projections,
    per-block head dims, three levels."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from compress.models.tiny import _text

    torch.manual_seed(1)
    tok = build_word_tokenizer(WORDS)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        cross_attention_dim=32,
        norm_num_groups=8,
    )
    sched = DDIMScheduler(**SD_SCHEDULE, prediction_type="v_prediction", clip_sample=False)
    pipe = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=_text(32, len(tok)),
        tokenizer=tok,
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("build", [tiny_sd2_style, build_tiny_sdxl_pipeline], ids=["sd2", "sdxl"])
def test_preset_applies_to_unseen_pipelines_and_reloads(build, tmp_path: Path) -> None:
    preset = load_recipe(Path(__file__).parents[2] / "recipes" / "deepcache.yaml")
    pipe = build()
    ref = images(pipe)
    applied = apply_recipe(pipe, preset)
    cached = images(pipe)
    assert cache_stats(pipe)["full_calls"] == 2  # steps 0 and 3 of 6
    assert 0 < np.abs(cached - ref).mean() < 12
    fresh = build()
    restore(fresh, applied)  # the recorded cache on the same weights: the same images
    np.testing.assert_array_equal(images(fresh), cached)
    loaded = compress.load(str(save_artifact(pipe, applied, tmp_path / "a")))
    assert_reloaded(images(loaded), cached)


def test_gpu_check_deepcache_row_fits_the_published_architecture() -> None:
    from compress.bench.gpu_rows import Target, baseline, deepcache
    from compress.models.archs import build_arch_pipeline
    from compress.recipe import Recipe

    target = Target("sd15", "cuda", "bfloat16", 512, float8=True)
    pipe = build_arch_pipeline("sd15", device="meta")  # structure only
    recipe = Recipe(name="deepcache", transforms=[baseline(target), *deepcache()])
    meta = apply_recipe(pipe, recipe).records[-1].metadata
    assert meta["skip_connections"] == 12 and meta["steps"] == target.steps == 25
    assert (meta["interval"], meta["branch"]) == (3, 1)
    assert meta["full_calls"] == len(range(0, 25, 3)) == 9
