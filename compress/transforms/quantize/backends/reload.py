"""Quantize a denoiser through diffusers' own quantizers, so the result saves and loads natively."""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import ModelMixin


def through_diffusers(model: ModelMixin, quantization_config: Any) -> ModelMixin:
    """Reload `model` with `quantization_config`: diffusers quantizes it and records the config.

    A round trip through a temporary folder is the one public way to attach diffusers' quantizer
    (which `save_pretrained` needs to serialize quantized weights) to an existing model.
    """
    from compress._quiet import quiet_imports

    device = next(model.parameters()).device
    with tempfile.TemporaryDirectory(prefix="compress-quantize-") as tmp:
        with quiet_imports():  # diffusers draws a progress bar for one shard
            model.save_pretrained(tmp, safe_serialization=True)
        kwargs: dict[str, Any] = {"torch_dtype": model.dtype}
        if device.type != "cpu":
            kwargs["device_map"] = {"": str(device)}
        out = type(model).from_pretrained(tmp, quantization_config=quantization_config, **kwargs)
    for name, value in vars(model).items():  # what earlier transforms noted on it (e.g. pruning)
        if name.startswith("_compress_"):
            setattr(out, name, value)
    return out.to(device) if device.type == "cpu" else out


def attach(model: ModelMixin, quantization_config: Any) -> None:
    """Record diffusers' quantizer on a model quantized in place, so `save_pretrained` writes the
    quantized weights and the config that makes `from_pretrained` load them natively.

    Needed where a round trip cannot rebuild the model from its config (e.g. pruned channels).
    """
    from diffusers.quantizers import DiffusersAutoQuantizer

    quantizer = DiffusersAutoQuantizer.from_config(quantization_config, pre_quantized=False)
    quantizer.validate_environment(torch_dtype=model.dtype, device_map=None)
    model.register_to_config(quantization_config=quantization_config)
    model.hf_quantizer = quantizer
