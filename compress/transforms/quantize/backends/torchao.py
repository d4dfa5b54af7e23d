"""torchao formats: int8 weight-only, int8 dynamic, int4 weight-only, float8 dynamic."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from compress.errors import CompressError, MissingExtra

if TYPE_CHECKING:
    from diffusers import ModelMixin

INTX4_GROUP = 32  # int4 weights share one scale per 32 input features
INT4_GROUP = 128


def _require() -> None:
    from compress._quiet import quiet_imports

    try:
        with quiet_imports():  # torchao prints optional-kernel load failures at import
            import torchao  # noqa: F401
    except ImportError:
        raise MissingExtra("torchao", "quantize") from None


def ao_config(fmt: str) -> Any:
    """The torchao config object for one of our format names."""
    import torch
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Int4WeightOnlyConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
    )
    from torchao.quantization.granularity import PerGroup, PerRow

    if fmt == "int8_weight_only":
        return Int8WeightOnlyConfig()
    if fmt == "int8_dynamic":
        return Int8DynamicActivationInt8WeightConfig()
    if fmt == "int4_weight_only":
        return Int4WeightOnlyConfig(group_size=INT4_GROUP)
    if fmt == "intx4_weight_only":
        return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(INTX4_GROUP))
    if fmt == "float8_dynamic":
        return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    raise CompressError(f"{fmt!r} is not a torchao format")


def check(model: ModelMixin, assign: dict[str, str], device: str) -> None:
    """Raise before any work if a format cannot run on `device` or a layer cannot take it."""
    import torch

    _require()
    formats = set(assign.values())
    if formats & {"int4_weight_only", "float8_dynamic"} and not device.startswith("cuda"):
        bad = sorted(formats & {"int4_weight_only", "float8_dynamic"})
        raise CompressError(
            f"format(s) {bad} need a CUDA GPU but the device is {device!r}; on a CPU use "
            "int8_weight_only, int8_dynamic or intx4_weight_only"
        )
    if "float8_dynamic" in formats:
        major, minor = torch.cuda.get_device_capability(torch.device(device))
        if (major, minor) < (8, 9):
            raise CompressError(
                f"float8_dynamic needs compute capability 8.9 or newer (Ada, Hopper); "
                f"{torch.cuda.get_device_name(torch.device(device))} has {major}.{minor}"
            )
    if "int4_weight_only" in formats:
        try:
            import mslk  # noqa: F401  (torchao's int4 kernel package)
        except ImportError:
            raise MissingExtra("mslk") from None
    for name, fmt in assign.items():
        group = {"intx4_weight_only": INTX4_GROUP, "int4_weight_only": INT4_GROUP}.get(fmt)
        features = model.get_submodule(name).in_features
        if group and features % group:
            raise CompressError(
                f"{name} has {features} input features, not a multiple of {fmt}'s group size "
                f"{group}; give it another format or a rule with format 'none'"
            )


def quantize(model: ModelMixin, assign: dict[str, str]) -> ModelMixin:
    """Quantize exactly the named Linear layers in place, each to its format (`FqnToConfig`)."""
    from diffusers import TorchAoConfig
    from torchao.quantization import FqnToConfig, quantize_

    from compress.transforms.quantize.backends.reload import attach

    table = FqnToConfig({name: ao_config(fmt) for name, fmt in sorted(assign.items())})
    quantize_(model, table, filter_fn=None)
    attach(model, TorchAoConfig(table))
    return model


def quantized_names(model: ModelMixin) -> dict[str, str]:
    """Layer name -> torchao config class, read from a natively loaded model's saved config."""
    qc = getattr(model.config, "quantization_config", None)
    table = getattr(getattr(qc, "quant_type", None), "fqn_to_config", {})
    return {name: type(cfg).__name__ for name, cfg in table.items()}
