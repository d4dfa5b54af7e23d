"""Quantization formats and the backends that implement them (torchao, bitsandbytes,
neural_compressor)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Requirement = Literal["any", "cpu", "cuda", "cuda-sm89"]
Backend = Literal["torchao", "bitsandbytes", "neural_compressor"]


@dataclass(frozen=True)
class Format:
    """One numeric format: which backend makes it, what it needs, how many bits a weight keeps."""

    backend: Backend
    needs: Requirement
    weight_bits: int
    description: str


FORMATS: dict[str, Format] = {
    "int8_weight_only": Format("torchao", "any", 8, "int8 weights (per row), float activations"),
    "int8_dynamic": Format(
        "torchao", "any", 8, "int8 weights and dynamically quantized int8 inputs"
    ),
    "int4_weight_only": Format("torchao", "cuda", 4, "int4 weights, group 128 (tinygemm kernel)"),
    "intx4_weight_only": Format("torchao", "any", 4, "int4 weights, group 32, any device"),
    "float8_dynamic": Format("torchao", "cuda-sm89", 8, "float8 e4m3 weights and inputs"),
    "bnb_int8": Format("bitsandbytes", "cuda", 8, "LLM.int8() with outlier decomposition"),
    "bnb_nf4": Format("bitsandbytes", "cuda", 4, "4-bit NormalFloat weights"),
    "bnb_fp4": Format("bitsandbytes", "cuda", 4, "4-bit float weights"),
    "inc_static_int8": Format(
        "neural_compressor", "cpu", 8, "int8 weights, uint8 inputs with calibrated static ranges"
    ),
    "inc_rtn_int4": Format("neural_compressor", "cpu", 4, "int4 weights, group 32, rounded"),
    "inc_gptq_int4": Format("neural_compressor", "cpu", 4, "int4 weights, group 32, GPTQ"),
}
FormatName = Literal[
    "int8_weight_only",
    "int8_dynamic",
    "int4_weight_only",
    "intx4_weight_only",
    "float8_dynamic",
    "bnb_int8",
    "bnb_nf4",
    "bnb_fp4",
    "inc_static_int8",
    "inc_rtn_int4",
    "inc_gptq_int4",
]
