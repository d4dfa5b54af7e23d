"""bitsandbytes formats: LLM.int8() (Dettmers et al. 2022), NF4 and FP4 (Dettmers et al. 2023)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from compress.errors import CompressError, MissingExtra

if TYPE_CHECKING:
    from diffusers import ModelMixin


def check(model: ModelMixin, assign: dict[str, str], device: str) -> None:
    """bitsandbytes layers load through diffusers, which requires a CUDA GPU and one format."""
    from compress._quiet import quiet_imports

    try:
        with quiet_imports():  # bitsandbytes prints missing optional kernels at import
            import bitsandbytes  # noqa: F401
    except ImportError:
        raise MissingExtra("bitsandbytes", "quantize") from None
    if not device.startswith("cuda"):
        raise CompressError(
            f"bitsandbytes formats {sorted(set(assign.values()))} need a CUDA GPU (diffusers' "
            f"bitsandbytes loader refuses other devices) but the device is {device!r}; on a CPU "
            "use the torchao formats int8_weight_only, int8_dynamic or intx4_weight_only"
        )
    if len(set(assign.values())) > 1:
        raise CompressError(
            f"bitsandbytes quantizes a model with one format; the rules ask for "
            f"{sorted(set(assign.values()))}"
        )


def quantize(model: ModelMixin, assign: dict[str, str], linears: list[str]) -> ModelMixin:
    """Replace the named Linear layers by bitsandbytes layers; every other Linear is skipped."""
    from diffusers import BitsAndBytesConfig

    from compress.transforms.quantize.backends.reload import through_diffusers

    fmt = next(iter(assign.values()))
    skip = sorted(n for n in linears if n not in assign)
    if fmt == "bnb_int8":
        qc = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    else:
        qc = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=fmt.removeprefix("bnb_"),
            bnb_4bit_compute_dtype=model.dtype,
            llm_int8_skip_modules=skip,
        )
    return through_diffusers(model, qc)


def quantized_names(model: ModelMixin) -> dict[str, str]:
    """Layer name -> bitsandbytes layer class of a loaded model."""
    out: dict[str, str] = {}
    for name, module in model.named_modules():
        if type(module).__module__.startswith("bitsandbytes"):
            out[name] = type(module).__name__
    return out
