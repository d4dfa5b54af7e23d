"""neural_compressor formats: static int8 (PT2E), RTN and GPTQ int4; close outputs, real int
layers, clear errors before any work, and artifacts that reload to identical outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compress.context import RunContext
from compress.errors import CompressError, RestoreMismatch
from compress.models.tiny import build_tiny_pipeline
from compress.transforms.quantize.ptq import QuantizeConfig, apply_quantize

PROMPTS = ["a red seven on a blue background", "a green two"]
CALIBRATION = {"prompts": 2, "timesteps": 3, "steps": 4}
FF_UP = "re:up_blocks\\.1\\..*\\.ff\\..*"


def q(*rules: tuple[str, str]) -> QuantizeConfig:
    return QuantizeConfig(
        rules=[{"match": m, "format": f} for m, f in rules], calibration=CALIBRATION
    )


def unet_out(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x, e = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 7, 32, generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([10, 700]), e).sample


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_mixed_formats_stay_close_shrink_and_reload_identically(tmp_path: Path) -> None:
    from neural_compressor.torch.algorithms.weight_only.modules import INCWeightOnlyLinear

    from compress.apply import apply_recipe
    from compress.artifact import load_artifact, save_artifact
    from compress.recipe import Recipe
    from compress.transforms.quantize.backends.inc_static import StaticInt8Linear

    pipe = build_tiny_pipeline()
    ref = unet_out(pipe.unet)
    float_bytes = sum(t.nbytes for t in pipe.unet.state_dict().values())
    cfg = q(("mid_block", "inc_static_int8"), (FF_UP, "inc_gptq_int4"), ("re:.*", "inc_rtn_int4"))
    applied = apply_recipe(pipe, Recipe(name="inc", transforms=[cfg]), RunContext(prompts=PROMPTS))
    meta = applied.records[0].metadata
    assert meta["backend"] == "neural_compressor" and not applied.native
    assert meta["calibration"]["timesteps_kept"] == [999.0, 500.0, 250.0]
    kinds = {type(m) for n, m in pipe.unet.named_modules() if n in meta["modules"]}
    assert kinds == {StaticInt8Linear, INCWeightOnlyLinear}
    mid = pipe.unet.get_submodule("mid_block.attentions.0.transformer_blocks.0.attn1.to_q")
    assert "quantize_per_tensor" in mid._graph.code  # real uint8 inputs, not a float copy
    out = unet_out(pipe.unet)
    assert rel(out, ref) < 0.1
    assert sum(t.nbytes for t in pipe.unet.state_dict().values()) < 0.9 * float_bytes

    loaded = load_artifact(save_artifact(pipe, applied, tmp_path / "a"))
    assert torch.equal(unet_out(loaded.unet), out)


def test_gptq_beats_rtn_on_the_calibration_data() -> None:
    from compress.transforms.quantize._calibration import Calibration, capture, replay

    base = build_tiny_pipeline()
    calls = capture(base, Calibration(**CALIBRATION), PROMPTS)
    outputs = {}
    for fmt in ("inc_rtn_int4", "inc_gptq_int4", None):
        pipe = build_tiny_pipeline()
        if fmt:
            apply_quantize(pipe, q((FF_UP, fmt)), RunContext(prompts=PROMPTS))
        got = []
        pipe.unet.register_forward_hook(lambda _m, _i, o, got=got: got.append(o[0]))
        replay(pipe.unet, calls)
        outputs[fmt] = torch.cat(got)
    gptq, rtn = (rel(outputs[f], outputs[None]) for f in ("inc_gptq_int4", "inc_rtn_int4"))
    assert gptq < rtn


@pytest.mark.parametrize(
    ("rules", "device", "message"),
    [
        ((("re:.*", "inc_rtn_int4"),), "cuda", "run on the CPU"),
        ((("mid_block", "inc_static_int8"), ("re:.*", "int8_dynamic")), "cpu", "mix"),
    ],
)
def test_unsupported_combinations_fail_before_any_work(rules, device: str, message: str) -> None:
    pipe = build_tiny_pipeline()
    before = pipe.unet
    with pytest.raises(CompressError, match=message):
        apply_quantize(pipe, q(*rules), RunContext(device=device, prompts=PROMPTS))
    assert pipe.unet is before and not any("INC" in type(m).__name__ for m in before.modules())


def test_calibrated_formats_need_prompts_and_refuse_restore_without_data() -> None:
    from compress.apply import restore
    from compress.recipe import Recipe, Record

    with pytest.raises(CompressError, match="needs prompts"):
        apply_quantize(build_tiny_pipeline(), q(("mid_block", "inc_static_int8")), RunContext())
    pipe = build_tiny_pipeline()
    cfg = q(("mid_block", "inc_gptq_int4"))
    meta = apply_quantize(pipe, cfg, RunContext(prompts=PROMPTS))
    recipe = Recipe(name="r", transforms=[cfg], records=[Record(kind="quantize", metadata=meta)])
    with pytest.raises(RestoreMismatch, match="load the saved artifact"):
        restore(build_tiny_pipeline(), recipe)
    restore(pipe, recipe)  # the quantized pipeline itself matches its record


def test_rtn_restores_exactly_from_the_recipe() -> None:
    from compress.apply import restore
    from compress.recipe import Recipe, Record

    pipe, again = build_tiny_pipeline(), build_tiny_pipeline()
    cfg = q(("mid_block", "inc_rtn_int4"))
    meta = apply_quantize(pipe, cfg, RunContext())
    assert "calibration" not in meta
    record = Record(kind="quantize", metadata=meta)
    restore(again, Recipe(name="r", transforms=[cfg], records=[record]))
    assert torch.equal(unet_out(again.unet), unet_out(pipe.unet))
