"""Intel Neural Compressor formats: int4 weight-only round-to-nearest and GPTQ (Frantar et al.
2023), and calibrated static int8 through its PT2E export path (`inc_static`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from compress.errors import CompressError, MissingExtra

if TYPE_CHECKING:
    import torch.nn as nn

GROUP = 32  # int4 weights share one scale per 32 input features
BITS = 4
CALIBRATED = ("inc_static_int8", "inc_gptq_int4")
WEIGHT_ONLY = ("inc_rtn_int4", "inc_gptq_int4")


def _require() -> None:
    from compress._quiet import quiet_imports

    try:
        with quiet_imports():
            import neural_compressor.torch  # noqa: F401
    except ImportError:
        raise MissingExtra("neural-compressor-pt", "quantize") from None


def check(model: nn.Module, assign: dict[str, str], device: str) -> None:
    """Raise before any work if a layer cannot take its format or the device is not a CPU."""
    _require()
    if not device.startswith("cpu"):
        raise CompressError(
            f"the neural_compressor formats {sorted(set(assign.values()))} run on the CPU here "
            f"(INC's int8 graph targets x86 CPUs; its int4 layers dequantize in plain PyTorch) but "
            f"the device is {device!r}; on a GPU use the torchao or bitsandbytes formats"
        )
    for name, fmt in assign.items():
        features = model.get_submodule(name).in_features
        if fmt in WEIGHT_ONLY and features % GROUP:
            raise CompressError(
                f"{name} has {features} input features, not a multiple of {fmt}'s group size "
                f"{GROUP}; give it another format or a rule with format 'none'"
            )


def _gptq_settings() -> dict[str, Any]:
    """INC's per-layer GPTQ settings, read from its own `GPTQConfig` defaults (4 bits, sym)."""
    from neural_compressor.torch.quantization import GPTQConfig

    c = GPTQConfig(bits=BITS, group_size=GROUP, use_sym=True, use_layer_wise=False)
    return {
        "dtype": c.dtype,
        "bits": c.bits,
        "sym": c.use_sym,
        "group_size": c.group_size,
        "perchannel": True,
        "mse": c.use_mse_search,
        "use_double_quant": c.use_double_quant,
        "double_quant_dtype": c.double_quant_dtype,
        "double_quant_bits": c.double_quant_bits,
        "double_quant_sym": c.double_quant_use_sym,
        "double_quant_group_size": c.double_quant_group_size,
        "act_order": False,  # a permutation would need storing; groups stay in input order
        "hybrid_order": False,
        "fp8_aware": False,
        "percdamp": c.percdamp,
        "block_size": c.block_size,
        "static_groups": c.static_groups,
        "true_sequential": False,
    }


def _gptq(model: nn.Module, names: list[str], run: Callable[[nn.Module], None]) -> None:
    """GPTQ on each named Linear from its inputs over the calibration data.

    INC's GPTQ driver walks an LLM's stack of identical transformer blocks, feeding each block's
    output to the next; a UNet has no such stack (skip connections, convolutions), so the layers'
    Hessians are collected here with hooks and INC's per-layer `GPTQ` solver does the rest.
    """
    import torch
    from neural_compressor.torch.algorithms.weight_only.gptq import GPTQ
    from neural_compressor.torch.algorithms.weight_only.utility import quant_weight_w_scale

    settings = _gptq_settings()
    solvers: dict[str, Any] = {}
    handles = []
    for name in names:
        layer = model.get_submodule(name)
        solvers[name] = GPTQ(layer, layer.weight.data.clone().float(), "cpu")
        solvers[name].quantizer.configure(settings)
        handles.append(layer.register_forward_hook(_collector(solvers[name])))
    try:
        run(model)
    finally:
        for h in handles:
            h.remove()
    for name, solver in solvers.items():
        layer = model.get_submodule(name)
        scale, _, zero, q = solver.fasterquant(
            layer.weight.data.clone().float(),
            blocksize=settings["block_size"],
            percdamp=settings["percdamp"],
            groupsize=GROUP,
            static_groups=settings["static_groups"],
        )
        ints = quant_weight_w_scale(q, scale.cpu(), None, None, GROUP).type(torch.int32)
        new = _shell(layer)
        new.pack(ints, scale.cpu(), None, layer.bias)
        new.compress_format = "inc_gptq_int4"
        model.set_submodule(name, new.to(layer.weight.device))
        solver.free()


def _collector(solver: Any) -> Callable[..., None]:
    def hook(_module: nn.Module, inputs: tuple, output: Any) -> None:
        x = inputs[0].data  # (batch, tokens, features) or (batch, features): one sample per call
        solver.add_batch(x.reshape(1, -1, x.shape[-1]), output.data)

    return hook


def _shell(linear: nn.Linear) -> nn.Module:
    """An INC int4 layer with the shape of `linear` (as INC's RTN and GPTQ build them)."""
    from neural_compressor.torch.algorithms.weight_only.modules import INCWeightOnlyLinear

    return INCWeightOnlyLinear(
        linear.in_features,
        linear.out_features,
        dtype="int",
        bits=BITS,
        group_size=GROUP,
        zp=False,
        bias=linear.bias is not None,
        device="cpu",
    )


def _rtn(model: nn.Module, names: list[str]) -> nn.Module:
    import re

    from neural_compressor.torch.quantization import RTNConfig, convert, prepare

    # op names are regular expressions to INC: escape and anchor so each selects one layer
    exact = [f"^{re.escape(n)}$" for n in names]
    cfg = RTNConfig(
        bits=BITS, group_size=GROUP, use_sym=True, use_layer_wise=False, white_list=exact
    )
    return convert(prepare(model, cfg))


def quantize(
    model: nn.Module, assign: dict[str, str], run: Callable[[nn.Module], None] | None
) -> nn.Module:
    """Quantize the named Linear layers, each to its format; `run(model)` feeds calibration data
    (needed by GPTQ and static int8). Weight-only layers go first, so the static int8 inputs are
    calibrated on the model as it will run."""
    from compress._quiet import quiet_imports
    from compress.transforms.quantize.backends import inc_static

    by_format = {f: sorted(n for n, g in assign.items() if g == f) for f in set(assign.values())}
    if run is None and any(f in CALIBRATED for f in by_format):
        raise CompressError(f"formats {sorted(set(by_format) & set(CALIBRATED))} need calibration")
    with quiet_imports():  # INC logs at INFO level and warns about unrelated LLM layers
        if by_format.get("inc_gptq_int4"):
            _gptq(model, by_format["inc_gptq_int4"], run)
        if by_format.get("inc_rtn_int4"):
            model = _rtn(model, by_format["inc_rtn_int4"])
    if by_format.get("inc_static_int8"):
        inc_static.quantize(model, by_format["inc_static_int8"], run)
    got = quantized_names(model)
    if got != assign:
        diff = sorted(set(got.items()) ^ set(assign.items()))
        raise CompressError(f"neural_compressor quantized other layers than asked: {diff[:5]}")
    return model


def quantized_names(model: nn.Module) -> dict[str, str]:
    """Layer name -> format of every INC-quantized layer (RTN and GPTQ build the same layer
    type; GPTQ's are tagged when built)."""
    from neural_compressor.torch.algorithms.weight_only.modules import INCWeightOnlyLinear

    from compress.transforms.quantize.backends.inc_static import StaticInt8Linear

    out: dict[str, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, StaticInt8Linear):
            out[name] = "inc_static_int8"
        elif isinstance(module, INCWeightOnlyLinear):
            out[name] = getattr(module, "compress_format", "inc_rtn_int4")
    return out


def shells(model: nn.Module, assign: dict[str, str]) -> None:
    """Empty INC layers in place of the named Linear layers, to be filled by a state dict."""
    from compress.transforms.quantize.backends import inc_static

    for name, fmt in sorted(assign.items()):
        linear = model.get_submodule(name)
        if fmt == "inc_static_int8":
            inc_static.shells(model, [name])
        else:
            new = _shell(linear).to(linear.weight.device)
            new.compress_format = fmt
            model.set_submodule(name, new)
