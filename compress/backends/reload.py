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
    return out.to(device) if device.type == "cpu" else out
