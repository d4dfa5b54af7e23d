"""LoRAs trained on the uncompressed model, on every transform's result: what plain
`pipe.load_lora_weights` does, what `compress.lora.load_lora` does (loads and changes the images,
skips removed blocks with one warning, or refuses with what to do), and `compress apply --lora`.

The LoRA is trained nowhere: peft's adapter on the tiny pipeline's attention projections with
random up matrices (nonzero, so it changes the images), alpha twice the rank, saved with the
pipeline class's `save_lora_weights` and its LoraConfig metadata."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.apply import apply_recipe
from compress.context import RunContext
from compress.errors import CompressError
from compress.generate import generate
from compress.lora import fuse_lora, load_lora
from compress.models.tiny import build_tiny_pipeline
from compress.recipe import Recipe, parse_recipe
from compress.transforms.base import TransformConfig, spec_of
from compress.transforms.prune.blocks import PruneBlocksConfig
from compress.transforms.prune.channels import PruneChannelsConfig
from compress.transforms.quantize.ptq import QuantizeConfig

PROMPTS = ["a red seven on a blue background"]
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def make_lora(folder: Path, rank: int = 4, alpha: int = 8, targets: list[str] = TARGETS) -> Path:
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = build_tiny_pipeline().unet
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets)
    unet.add_adapter(config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=get_peft_model_state_dict(unet),
        unet_lora_adapter_metadata=config.to_dict(),
        safe_serialization=True,
    )
    return folder / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lora(tmp_path_factory.mktemp("lora"))


def images(pipe, steps: int = 2) -> np.ndarray:
    return np.asarray(generate(pipe, PROMPTS, [0], output_type="np", num_inference_steps=steps))


def compressed(*configs: TransformConfig, **ctx) -> object:
    pipe = build_tiny_pipeline()
    if configs:
        apply_recipe(pipe, Recipe(name="r", transforms=list(configs)), RunContext(**ctx))
    return pipe


def changed(pipe, lora: Path, plain: bool = True, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Images before and after `load_lora`, which must skip nothing (and not warn of it); with
    `plain`, diffusers' own `load_lora_weights` on a copy gives the same images."""
    before = images(pipe, **kwargs)
    twin = copy.deepcopy(pipe) if plain else None
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="LoRA: skipped")
        assert load_lora(pipe, lora) == []
    after = images(pipe, **kwargs)
    assert np.abs(after - before).max() > 0.05, "the LoRA did not change the images"
    if twin is not None:
        twin.load_lora_weights(str(lora))
        np.testing.assert_allclose(images(twin, **kwargs), after, atol=1e-6)
    return before, after


def test_uncompressed_loads_exactly_as_diffusers_does(lora: Path) -> None:
    """The alpha/rank scaling from the file's LoraConfig metadata survives the fitting."""
    plain = build_tiny_pipeline()
    plain.load_lora_weights(str(lora))
    _, ours = changed(build_tiny_pipeline(), lora)
    np.testing.assert_array_equal(ours, images(plain))


def test_layout_rebuilt_from_a_record_equals_the_plan() -> None:
    from compress.transforms.prune._block_plan import layout_of, plan
    from compress.transforms.prune.blocks import resolve

    unet = build_tiny_pipeline().unet
    for cfg in (
        PruneBlocksConfig(preset="base"),
        PruneBlocksConfig(preset="small"),
        PruneBlocksConfig(remove=("down_blocks.1.1", "up_blocks.0.2")),
    ):
        names = resolve(unet, cfg)
        assert layout_of(names, [2, 2]) == plan(unet, names, {})


def test_block_pruned_skips_removed_blocks_with_one_warning(lora: Path, tmp_path: Path) -> None:
    """The reference is the LoRA fused into the unpruned model, then pruned: the kept blocks carry
    their own LoRA. Plain diffusers puts a removed pair's LoRA on the pair renumbered in its
    place (up_blocks.1 keeps pairs 0 and 2 as 0 and 1)."""
    from compress.artifact import load_artifact, save_artifact

    small = PruneBlocksConfig(preset="small")
    reference = build_tiny_pipeline()
    reference.load_lora_weights(str(lora))
    reference.fuse_lora()
    reference.unload_lora_weights()
    apply_recipe(reference, Recipe(name="r", transforms=[small]), RunContext())

    plain = compressed(small)
    plain.load_lora_weights(str(lora))  # logs the keys it dropped, loads the rest misplaced
    renumbered = plain.unet.up_blocks[1].attentions[1].transformer_blocks[0].attn1.to_q
    from safetensors.torch import load_file

    removed_pair = "unet.up_blocks.1.attentions.1.transformer_blocks.0.attn1.to_q.lora_A.weight"
    assert torch.equal(renumbered.lora_A["default_0"].weight, load_file(lora)[removed_pair])
    assert np.abs(images(plain) - images(reference)).max() > 0.05

    pipe = compressed(small)
    untouched = images(pipe)
    with pytest.warns(UserWarning) as record:
        skipped = load_lora(pipe, lora)
    ours = [str(w.message) for w in record if "LoRA" in str(w.message)]
    assert len(ours) == 1, ours
    for block in ("down_blocks.0.attentions.1", "mid_block", "up_blocks.1.attentions.1"):
        assert f"{block} (" in ours[0]
    assert "prune_blocks removed" in ours[0]
    assert len(skipped) == 3 * 2 * len(TARGETS)  # three attention blocks, attn1 and attn2
    got = images(pipe)
    np.testing.assert_allclose(got, images(reference), atol=1e-5)
    assert np.abs(got - untouched).max() > 0.05

    # an artifact reloaded by compress.load knows its pruned layout from the recipe's record
    applied = apply_recipe(build_tiny_pipeline(), Recipe(name="r", transforms=[small]))
    folder = save_artifact(compressed(small), applied, tmp_path / "pruned")
    loaded = load_artifact(folder)
    with pytest.warns(UserWarning, match="prune_blocks removed"):
        load_lora(loaded, lora)
    np.testing.assert_allclose(images(loaded), got, atol=1e-6)


def test_kohya_format_with_network_alphas_is_fitted_the_same(lora: Path, tmp_path: Path) -> None:
    """The A1111/kohya layout (`lora_unet_...lora_down`, an `.alpha` per layer) reaches diffusers
    as attention-processor keys with separate network alphas: both are renamed and filtered."""
    from safetensors.torch import load_file, save_file

    kohya = {}
    for key, value in load_file(lora).items():
        module, _, part = key.removeprefix("unet.").rpartition(".lora_")
        name = "lora_unet_" + module.replace(".", "_")
        kohya[f"{name}.lora_{'down' if part.startswith('A') else 'up'}.weight"] = value
        kohya[f"{name}.alpha"] = torch.tensor(8.0)
    save_file(kohya, tmp_path / "kohya.safetensors")
    ours, theirs = (compressed(PruneBlocksConfig(preset="small")) for _ in range(2))
    with pytest.warns(UserWarning, match="prune_blocks removed"):
        assert load_lora(ours, tmp_path / "kohya.safetensors") == load_lora(theirs, lora)
    np.testing.assert_array_equal(images(ours), images(theirs))


def test_block_pruned_transformer_skips_removed_blocks(tmp_path: Path) -> None:
    """SD3: transformer_blocks.1 removed, 2 and 3 renumbered; as on the UNet, the result is the
    LoRA fused into the unpruned transformer, then pruned."""
    from diffusers import StableDiffusion3Pipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from compress.models.tiny import build_tiny_sd3_pipeline

    net = build_tiny_sd3_pipeline().transformer
    net.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"]))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
    layers = get_peft_model_state_dict(net)
    StableDiffusion3Pipeline.save_lora_weights(tmp_path, transformer_lora_layers=layers)
    prune = Recipe(name="r", transforms=[PruneBlocksConfig(remove=("transformer_blocks.1",))])
    reference = build_tiny_sd3_pipeline()
    reference.load_lora_weights(tmp_path)
    reference.fuse_lora()
    reference.unload_lora_weights()
    apply_recipe(reference, prune)
    plain = build_tiny_sd3_pipeline()
    apply_recipe(plain, prune)
    plain.load_lora_weights(tmp_path)  # block 1's LoRA lands on the block renumbered 1
    removed = layers["transformer_blocks.1.attn.to_q.lora_A.weight"]
    assert torch.equal(
        plain.transformer.transformer_blocks[1].attn.to_q.lora_A["default_0"].weight, removed
    )

    pipe = build_tiny_sd3_pipeline()
    apply_recipe(pipe, prune)
    untouched = images(pipe)
    with pytest.warns(UserWarning, match=r"removed: transformer_blocks\.1 \(3 layers\)"):
        assert len(load_lora(pipe, tmp_path)) == 3
    got = images(pipe)
    np.testing.assert_allclose(got, images(reference), atol=1e-5)
    assert np.abs(got - untouched).max() > 0.01


def test_channel_pruned_is_refused_naming_the_layers(lora: Path) -> None:
    pipe = compressed(PruneChannelsConfig(ratio=0.25))
    with pytest.raises(RuntimeError, match="size mismatch"):  # plain diffusers: peft's load
        copy.deepcopy(pipe).load_lora_weights(str(lora))
    before = images(pipe)
    with pytest.raises(CompressError) as err:
        load_lora(pipe, lora)
    said = str(err.value)
    assert "prune_channels removed channels" in said and "attn1.to_q (output 24, LoRA 32)" in said
    assert "compress apply RECIPE --model BASE --out DIR --lora FILE" in said
    assert not getattr(pipe.unet, "peft_config", None)  # refused before anything loaded
    np.testing.assert_array_equal(images(pipe), before)


# measured: the LoRA's effect on the quantized denoiser's output differs from its effect on the
# float one by 0.7% (int8 weights), 2% (int8 dynamic) and 11% (int4 weights, which also carry it
# through the quantized layers after the adapted ones); a LoRA at half or double scale: 50%
EFFECT_TOLERANCE = {"int8_dynamic": 0.05, "int8_weight_only": 0.05, "intx4_weight_only": 0.2}


@pytest.mark.parametrize("fmt", sorted(EFFECT_TOLERANCE))
def test_torchao_layers_take_the_lora(lora: Path, fmt: str) -> None:
    """peft wraps torchao's quantized Linear layers (as plain diffusers does): the LoRA's effect
    on the denoiser's output matches its effect on the float model."""
    quantize = QuantizeConfig(rules=[{"match": "re:.*", "format": fmt}])
    pipe = compressed(quantize)
    plain = copy.deepcopy(pipe)
    plain.load_lora_weights(str(lora))
    changed(pipe, lora)
    assert type(pipe.unet.mid_block.attentions[0].transformer_blocks[0].attn1.to_q).__name__ == (
        "TorchaoLoraLinear"
    )
    np.testing.assert_array_equal(images(pipe), images(plain))

    def effect(unet_with, unet_without) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        x, e = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 7, 32, generator=g)
        with torch.no_grad():
            return unet_with(x, 500, e).sample - unet_without(x, 500, e).sample

    fp, fp_lora = build_tiny_pipeline(), build_tiny_pipeline()
    fp_lora.load_lora_weights(str(lora))
    want = effect(fp_lora.unet, fp.unet)
    got = effect(pipe.unet, compressed(quantize).unet)
    assert (got - want).norm() / want.norm() < EFFECT_TOLERANCE[fmt]


def test_neural_compressor_layers_are_refused(lora: Path) -> None:
    pipe = compressed(QuantizeConfig(rules=[{"match": "re:.*", "format": "inc_rtn_int4"}]))
    with pytest.raises(ValueError, match="is not supported"):  # plain diffusers: peft refuses
        copy.deepcopy(pipe).load_lora_weights(str(lora))
    with pytest.raises(CompressError, match="cannot attach to 48 quantized layers") as err:
        load_lora(pipe, lora)
    assert "(INCWeightOnlyLinear)" in str(err.value) and "--lora FILE" in str(err.value)
    assert not getattr(pipe.unet, "peft_config", None)


@pytest.mark.parametrize("fmt", ["inc_rtn_int4", "inc_gptq_int4", "inc_static_int8"])
def test_every_neural_compressor_layer_class_is_refused(lora: Path, fmt: str) -> None:
    """The layers compress.load builds for each format before filling them (calibrating the
    static int8 graph takes over a minute; its layer class is what the refusal looks at)."""
    from compress.transforms.quantize.backends import neural_compressor

    pipe = build_tiny_pipeline()
    attn = "mid_block.attentions.0.transformer_blocks.0.attn1.to_q"
    neural_compressor.shells(pipe.unet, {attn: fmt})
    with pytest.raises(CompressError, match=f"cannot attach to 1 quantized layers.*{attn}"):
        load_lora(pipe, lora)


def test_qat_layers_take_the_lora(lora: Path) -> None:
    from compress.transforms.quantize.qat import QATConfig

    qat = QATConfig(
        rules=[{"match": "up_blocks", "format": "int8_dynamic"}],
        steps=2,
        samples=2,
        batch_size=2,
        teacher_steps=2,
    )
    changed(compressed(qat, prompts=PROMPTS), lora)


TRAINED = {
    "distill": {"steps": 2, "batch_size": 2, "samples": 2, "teacher_steps": 2},
    "distill_steps": {
        "steps": 2,
        "batch_size": 2,
        "samples": 2,
        "teacher_steps": 2,
        "student_steps": 2,
        "lora_rank": 2,  # the student's own adapter is fused and unloaded: no name clash
    },
    "distill_guidance": {
        "steps": 2,
        "batch_size": 2,
        "samples": 2,
        "teacher_steps": 2,
        "embedding_dim": 8,
    },
}


@pytest.mark.parametrize("kind", sorted(TRAINED))
def test_distilled_students_take_the_lora(lora: Path, kind: str) -> None:
    recipe = parse_recipe({"name": "r", "transforms": [{"kind": kind, **TRAINED[kind]}]})
    changed(compressed(*recipe.transforms, prompts=PROMPTS), lora)


def test_a_sampler_change_takes_the_lora(lora: Path) -> None:
    from compress.transforms.runtime.sampler import SamplerConfig

    changed(compressed(SamplerConfig(scheduler="euler", steps=3)), lora, steps=3)


def test_deepcache_takes_the_lora_as_if_loaded_first(lora: Path) -> None:
    from compress.transforms.runtime.cache import CacheConfig

    cache = CacheConfig(interval=2)
    _, after = changed(compressed(cache), lora, steps=4)
    first = build_tiny_pipeline()
    first.load_lora_weights(str(lora))
    spec_of(cache).apply(first, cache, RunContext())
    np.testing.assert_array_equal(after, images(first, steps=4))


@pytest.mark.parametrize("cached", [False, True], ids=["compile", "cache+compile"])
def test_compiled_pipeline_is_recompiled_with_the_lora(
    lora: Path, cached: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain diffusers loads the LoRA beside a compiled denoiser's `_orig_mod` names: its weights
    stay on the meta device and the next call fails. load_lora takes the compile off (the whole
    denoiser's, or, under DeepCache's hooks, its modules'), loads, and puts it back without fused
    QKV projections (they would bypass the LoRA of q, k and v); it compiles at the next call."""
    from compress.models.runtime import is_compiled
    from compress.transforms.runtime.cache import CacheConfig
    from compress.transforms.runtime.compile import CompileConfig

    monkeypatch.setenv("COMPRESS_COMPILE_BACKEND", "eager")  # dynamo's graphs, no C++ build
    runtime = [CacheConfig(interval=2)] if cached else []
    runtime.append(CompileConfig(attention="math", vae=False))
    if not cached:
        plain = compressed(*runtime)
        plain.load_lora_weights(str(lora))
        with pytest.raises(Exception, match="meta"):
            images(plain)

    pipe = compressed(*runtime)
    assert any(getattr(m, "fused_projections", False) for m in pipe.unet.modules())
    assert load_lora(pipe, lora) == []
    assert is_compiled(pipe)
    assert not any(getattr(m, "fused_projections", False) for m in pipe.unet.modules())
    eager = compressed(*runtime[:-1])
    untouched = images(eager, steps=4)
    eager.load_lora_weights(str(lora))
    got = images(pipe, steps=4)  # compiles here
    np.testing.assert_allclose(got, images(eager, steps=4), atol=1e-5)
    assert np.abs(got - untouched).max() > 0.05


def test_a_denoiser_compiled_by_hand_is_refused(lora: Path) -> None:
    pipe = build_tiny_pipeline()
    pipe.unet = torch.compile(pipe.unet)  # nothing recorded how to undo it
    with pytest.raises(CompressError, match="load a LoRA before compiling"):
        load_lora(pipe, lora)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["bnb_nf4", "bnb_int8", "float8_dynamic"])
def test_gpu_quantized_layers_take_the_lora(lora: Path, fmt: str) -> None:
    pipe = build_tiny_pipeline().to("cuda")
    quantize = QuantizeConfig(rules=[{"match": "re:.*attn.*", "format": fmt}])
    apply_recipe(pipe, Recipe(name="q", transforms=[quantize]), RunContext(device="cuda"))
    changed(pipe, lora, plain=False)


@pytest.mark.gpu
def test_torchao_int4_layers_are_refused(lora: Path) -> None:
    pipe = build_tiny_pipeline().to("cuda")
    quantize = QuantizeConfig(rules=[{"match": "re:.*ff\\.net\\.2", "format": "int4_weight_only"}])
    apply_recipe(pipe, Recipe(name="q", transforms=[quantize]), RunContext(device="cuda"))
    feed_forward = make_lora(lora.parent / "ff", targets=["ff.net.2"])
    with pytest.raises(CompressError, match="Int4Tensor"):
        load_lora(pipe, feed_forward)


def test_fuse_lora_bakes_it_in(lora: Path) -> None:
    pipe = build_tiny_pipeline()
    fused = fuse_lora(pipe, lora, scale=0.5)
    assert fused.file == lora.name and fused.scale == 0.5 and len(fused.sha256) == 64
    assert not getattr(pipe.unet, "peft_config", None)
    assert not any("lora" in k for k in pipe.unet.state_dict())
    half = build_tiny_pipeline()
    half.load_lora_weights(str(lora))
    half.set_adapters(["default_0"], [0.5])
    np.testing.assert_allclose(images(pipe), images(half), atol=1e-5)


def test_apply_with_lora_bakes_it_into_the_artifact(
    lora: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    from huggingface_hub import ModelCard
    from typer.testing import CliRunner

    import compress
    from compress.cli import app
    from compress.models.loading import load_pipeline
    from compress.recipe import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\ntransforms:\n  - kind: prune_blocks\n    preset: small\n")
    runner = CliRunner()
    args = ["apply", str(recipe), "--model", str(tiny_dir)]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "l"), "--lora", str(lora)])
    assert res.exit_code == 0, res.output
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "p")]).exit_code == 0

    with_lora, without = compress.load(str(tmp_path / "l")), compress.load(str(tmp_path / "p"))
    assert np.abs(images(with_lora) - images(without)).max() > 0.05
    reference = load_pipeline(str(tiny_dir))
    reference.set_progress_bar_config(disable=True)
    fuse_lora(reference, lora)
    apply_recipe(reference, load_recipe(recipe))
    np.testing.assert_array_equal(images(with_lora), images(reference))

    fused = load_recipe(tmp_path / "l" / "recipe.yaml").provenance.fused_lora
    assert fused is not None and fused.file == lora.name and fused.scale == 1.0
    assert load_recipe(tmp_path / "p" / "recipe.yaml").provenance.fused_lora is None
    card = ModelCard.load(tmp_path / "l" / "README.md")
    assert f"The LoRA `{lora.name}`" in card.text and fused.sha256 in card.text

    missing = runner.invoke(app, [*args, "--out", str(tmp_path / "m"), "--lora", "no.safetensors"])
    assert isinstance(missing.exception, CompressError) and "--lora" in str(missing.exception)
    assert not (tmp_path / "m").exists()
