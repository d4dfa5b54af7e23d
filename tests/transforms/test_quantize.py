"""quantize: rule resolution, protected layers, clear errors before any work, smaller and close."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compress.context import RunContext
from compress.errors import CompressError
from compress.models.tiny import build_tiny_pipeline
from compress.transforms.quantize.ptq import QuantizeConfig, apply_quantize, linear_layers, resolve


def q(*rules: tuple[str, str], **kw) -> QuantizeConfig:
    return QuantizeConfig(rules=[{"match": m, "format": f} for m, f in rules], **kw)


@pytest.fixture(scope="module")
def unet():
    return build_tiny_pipeline().unet


def unet_out(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x, e = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 7, 32, generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([10, 700]), e).sample


def test_first_matching_rule_wins_and_time_embedding_is_protected(unet) -> None:
    assign, protected = resolve(
        unet,
        q(
            ("re:.*attn2\\..*", "none"),
            ("mid_block", "int8_dynamic"),
            ("re:.*", "int8_weight_only"),
        ),
    )
    assert protected == ["time_embedding.linear_1", "time_embedding.linear_2"]
    assert not any(n.startswith("time_embedding") for n in assign)
    assert not any(".attn2." in n for n in assign)
    mids = {f for n, f in assign.items() if n.startswith("mid_block.")}
    assert mids == {"int8_dynamic"}
    assert assign["down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2"] == "int8_weight_only"


def test_a_block_group_pruning_removed_is_skipped(unet) -> None:
    import copy

    pruned = copy.deepcopy(unet)
    pruned.mid_block = None  # as prune_blocks leaves it (mid_block_type null)
    cfg = q(("re:.*", "none"), mid_block="int8_dynamic", up_blocks="int8_weight_only")
    assign, _ = resolve(pruned, cfg)
    assert assign and {f for f in assign.values()} == {"int8_weight_only"}
    assert all(n.startswith("up_blocks.") for n in assign)
    with pytest.raises(CompressError, match="selects no Linear layer"):  # rules stay strict
        resolve(pruned, q(("re:mid_block\\..*", "int8_dynamic")))


def test_protection_is_configurable(unet) -> None:
    assign, protected = resolve(unet, q(("time_embedding", "int8_weight_only"), protect=[]))
    assert protected == [] and set(assign) == {"time_embedding.linear_1", "time_embedding.linear_2"}


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ((("re:nothing\\..*", "int8_dynamic"),), "selects no Linear layer"),
        ((("no_such_block", "int8_dynamic"),), "no module named 'no_such_block'"),
        ((("conv_in", "int8_dynamic"),), "Conv2d with no Linear layers"),
        ((("time_embedding", "int8_dynamic"),), "is protected"),
    ],
)
def test_bad_rules_are_named(unet, rules, message: str) -> None:
    with pytest.raises(CompressError, match=message):
        resolve(unet, q(*rules))


def test_invalid_regex_and_format_fail_validation() -> None:
    with pytest.raises(ValueError, match="invalid regular expression"):
        q(("re:(", "int8_dynamic"))
    with pytest.raises(ValueError, match="format"):
        q(("mid_block", "int3"))


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ((("re:.*", "float8_dynamic"),), "need a CUDA GPU"),
        ((("re:.*", "int4_weight_only"),), "need a CUDA GPU"),
        ((("re:.*", "bnb_nf4"),), "need a CUDA GPU"),
        ((("mid_block", "bnb_int8"), ("re:.*", "int8_dynamic")), "mix"),
    ],
)
def test_unsupported_combinations_fail_before_any_work(rules, message: str) -> None:
    pipe = build_tiny_pipeline()
    before, state = pipe.unet, {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    with pytest.raises(CompressError, match=message):
        apply_quantize(pipe, q(*rules), RunContext(device="cpu"))
    assert pipe.unet is before
    assert all(torch.equal(v, state[k]) for k, v in pipe.unet.state_dict().items())


@pytest.mark.parametrize("fmt", ["int8_weight_only", "int8_dynamic", "intx4_weight_only"])
def test_cpu_formats_shrink_the_denoiser_and_stay_close(fmt: str, tmp_path: Path) -> None:
    pipe = build_tiny_pipeline()
    ref = unet_out(pipe.unet)
    pipe.unet.save_pretrained(tmp_path / "fp")
    linear = linear_layers(pipe.unet)
    weight_bytes = sum(linear[n].weight.nbytes for n in linear if not n.startswith("time_emb"))
    meta = apply_quantize(pipe, q(("re:.*", fmt)), RunContext())
    assert meta["backend"] == "torchao" and set(meta["modules"].values()) == {fmt}
    assert len(meta["modules"]) == len(linear_layers(pipe.unet)) - 2  # all but time_embedding
    out = unet_out(pipe.unet)
    assert (out - ref).norm() / ref.norm() < (0.1 if "4" in fmt else 0.03)
    pipe.unet.save_pretrained(tmp_path / "q")

    def size(d: Path) -> int:
        return sum(f.stat().st_size for f in d.glob("*.safetensors"))

    # float32 -> one byte per weight plus scales (torchao stores int4 values unpacked in int8 on
    # CPU); the tiny denoiser's convolutions stay float32, so compare with the Linear bytes alone
    assert size(tmp_path / "q") < size(tmp_path / "fp") - 0.6 * weight_bytes


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["float8_dynamic", "int4_weight_only", "bnb_nf4", "bnb_int8"])
def test_gpu_formats_stay_close(fmt: str) -> None:
    pipe = build_tiny_pipeline().to("cuda")
    ref = unet_out(pipe.unet.to("cuda"))
    apply_quantize(pipe, q(("re:.*attn.*", fmt)), RunContext(device="cuda"))
    out = unet_out(pipe.unet)
    assert (out - ref).norm() / ref.norm() < 0.1


def test_restore_refuses_metadata_recorded_on_another_model() -> None:
    from compress.apply import restore
    from compress.errors import RestoreMismatch
    from compress.recipe import Recipe, Record

    cfg = q(("mid_block", "int8_dynamic"))
    recorded = {"backend": "torchao", "modules": {"mid_block.other": "int8_dynamic"}}
    recipe = Recipe(
        name="r", transforms=[cfg], records=[Record(kind="quantize", metadata=recorded)]
    )
    with pytest.raises(RestoreMismatch, match="resolve differently"):
        restore(build_tiny_pipeline(), recipe)


def test_quantize_after_channel_pruning_saves_and_reloads(tmp_path: Path) -> None:
    import numpy as np

    from compress.apply import apply_recipe
    from compress.artifact import load_artifact, save_artifact
    from compress.generate import generate
    from compress.recipe import Recipe
    from compress.transforms.prune.channels import PruneChannelsConfig

    def images(p) -> np.ndarray:
        return np.stack(
            [np.asarray(i) for i in generate(p, ["a red seven"], [0], num_inference_steps=3)]
        )

    pipe = build_tiny_pipeline()
    transforms = [PruneChannelsConfig(ratio=0.25), q(("re:.*", "int8_dynamic"))]
    applied = apply_recipe(pipe, Recipe(name="pruned-int8", transforms=transforms))
    loaded = load_artifact(save_artifact(pipe, applied, tmp_path / "a"))
    np.testing.assert_array_equal(images(loaded), images(pipe))


def test_search_space_builds_ptq_and_qat_recipes() -> None:
    from compress.search.space import load_space

    space = load_space("search_spaces/miniature-quantize.yaml")
    values = {"method": "ptq", "backend": "torchao", "quant_down": "none"}
    values |= {"quant_mid": "int8_dynamic", "quant_up": "intx4_weight_only"}
    (ptq,) = space.recipe(values, "p").transforms
    assert [(r.match, r.format) for r in ptq.all_rules()] == [
        ("re:down_blocks\\..*", "none"),
        ("re:mid_block\\..*", "int8_dynamic"),
        ("re:up_blocks\\..*", "intx4_weight_only"),
        ("re:.*", "none"),
    ]
    assign, _ = resolve(build_tiny_pipeline().unet, ptq)
    assert {f for n, f in assign.items() if n.startswith("up_blocks.")} == {"intx4_weight_only"}
    assert not any(n.startswith("down_blocks.") for n in assign)
    values = {"method": "ptq", "backend": "neural_compressor", "inc_down": "inc_rtn_int4"}
    values |= {"inc_mid": "inc_static_int8", "inc_up": "none", "calibration": "small"}
    (inc,) = space.recipe(values, "i").transforms
    assert inc.calibration.prompts == 4 and not inc.saves_natively()
    values = {"method": "qat", "qat_precision": "int8-weights", "qat_samples": 64}
    (qat,) = space.recipe(values, "q").transforms
    assert qat.kind == "qat" and qat.samples == 64 and qat.data == "miniature-digits"
