"""qat: fake-quantized distillation through the shared loop, ending in the real format."""

from __future__ import annotations

import pytest
import torch

from compress.context import RunContext
from compress.errors import CompressError
from compress.models.tiny import build_tiny_pipeline
from compress.transforms.quantize.qat import QATConfig, apply_qat

PROMPTS = ["a red seven on a blue background", "a green digit two"]
LAYER = "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2"


def qat(fmt: str, **kw) -> QATConfig:
    small = {"steps": 3, "samples": 4, "batch_size": 2, "teacher_steps": 2, "lr": 1e-5}
    return QATConfig(rules=[{"match": "re:.*", "format": fmt}], **(small | kw))


def unet_out(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x, e = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 7, 32, generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([10, 700]), e).sample


def test_trains_then_converts_to_the_real_format() -> None:
    from torchao.utils import TorchAOBaseTensor

    pipe = build_tiny_pipeline()
    ref, before = unet_out(pipe.unet), pipe.unet.get_submodule(LAYER).weight.detach().clone()
    meta = apply_qat(pipe, qat("int8_dynamic"), RunContext(prompts=PROMPTS))
    assert meta["steps"] == 3 and meta["data"]["source"] == "prompts"
    assert meta["loss_first"] > 0 and meta["loss_last"] > 0
    layer = pipe.unet.get_submodule(LAYER)
    assert isinstance(layer.weight, TorchAOBaseTensor)  # real int8, no fake quantizer left
    assert type(layer) is torch.nn.Linear
    assert not torch.equal(layer.weight.dequantize(), before)  # trained and quantized
    assert (unet_out(pipe.unet) - ref).norm() / ref.norm() < 0.05
    assert "time_embedding.linear_1" not in meta["modules"]  # protected as in quantize


@pytest.mark.parametrize(
    ("fmt", "ctx", "message"),
    [
        ("bnb_nf4", RunContext(prompts=PROMPTS), "qat trains the formats"),
        ("float8_dynamic", RunContext(prompts=PROMPTS), "qat trains the formats"),
        ("int8_dynamic", RunContext(), "needs prompts"),
    ],
)
def test_bad_requests_fail_before_training(fmt: str, ctx: RunContext, message: str) -> None:
    pipe = build_tiny_pipeline()
    unet = pipe.unet
    with pytest.raises(CompressError, match=message):
        apply_qat(pipe, qat(fmt), ctx)
    assert pipe.unet is unet
    assert type(unet.get_submodule(LAYER)) is torch.nn.Linear


def test_teacher_data_is_drawn_once_into_the_shared_store(tmp_path, counted) -> None:
    """In a search (RunContext.data_cache set) qat's teacher latents come from the shared store:
    a second trial from the same teacher draws nothing and trains to the same weights as one
    that drew in memory."""
    ctx = RunContext(prompts=PROMPTS, data_cache=tmp_path)
    first, second, memory = build_tiny_pipeline(), build_tiny_pipeline(), build_tiny_pipeline()
    apply_qat(first, qat("int8_dynamic"), ctx)
    apply_qat(second, qat("int8_dynamic"), ctx)
    assert counted == [4]  # drawn once, by the first
    assert sum(1 for p in tmp_path.iterdir() if (p / "entry.json").is_file()) == 1
    apply_qat(memory, qat("int8_dynamic"), RunContext(prompts=PROMPTS))
    torch.testing.assert_close(unet_out(second.unet), unet_out(memory.unet), rtol=0, atol=0)
