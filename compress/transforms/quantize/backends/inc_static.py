"""Calibrated static int8 Linear layers through Intel Neural Compressor's PT2E path: each layer is
exported on its own (`neural_compressor.torch.export.export`), observed on calibration data and
converted with `StaticQuantConfig` (int8 per-channel weights, uint8 per-tensor inputs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from torch.fx import GraphModule

# Calibration collects a histogram of every input (all timesteps alike); the deployed graph is
# rebuilt from the range that histogram chose, so a reload rebuilds exactly the same graph.
CALIBRATION_ALGO = "kl"


class _Flat(nn.Module):
    """A Linear over (tokens, features): the exported graph has one dynamic token dimension."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.lin = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def _export(linear: nn.Linear, algo: str) -> GraphModule:
    from compress._quiet import quiet_imports

    with quiet_imports():  # INC logs every step at INFO level
        from neural_compressor.torch.export import export
        from neural_compressor.torch.quantization import StaticQuantConfig, prepare

        example = torch.zeros(2, linear.in_features, dtype=linear.weight.dtype)
        tokens = torch.export.Dim("tokens", min=2)
        graph = export(_Flat(linear), (example,), dynamic_shapes=({0: tokens},))
        return prepare(graph, StaticQuantConfig(act_algo=algo))


def _input_observer(graph: GraphModule) -> Any:
    for node in graph.graph.nodes:
        if node.op == "call_module" and node.args and node.args[0].op == "placeholder":
            if "activation_post_process" in str(node.target):
                return graph.get_submodule(str(node.target))
    raise RuntimeError("the exported Linear has no input observer")


class StaticInt8Linear(nn.Module):
    """A Linear layer run as INC's converted int8 graph (quantize -> dequantize -> linear in
    eager mode; `torch.compile` fuses it into int8 kernels). Its state is the float weight, the
    bias and the calibrated input range, so `load_state_dict` rebuilds the identical graph."""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None
        self.register_buffer("input_range", torch.zeros(2))  # calibrated (low, high)
        self.__dict__["_graph"] = None  # outside the state dict: rebuilt from it
        self.register_load_state_dict_post_hook(lambda module, _keys: module.build())

    @classmethod
    def like(cls, linear: nn.Linear) -> StaticInt8Linear:
        out = cls(linear.in_features, linear.out_features, linear.bias is not None)
        return out.to(device=linear.weight.device, dtype=linear.weight.dtype)

    def build(self) -> None:
        """Convert a fresh export whose input observer saw exactly `input_range`."""
        from compress._quiet import quiet_imports

        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None)
        linear = linear.to(self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        graph = _export(linear, "minmax")
        low, high = self.input_range.tolist()
        x = torch.full((2, self.in_features), low, dtype=self.weight.dtype)
        x[1] = high
        with torch.no_grad(), quiet_imports():
            from neural_compressor.torch.quantization import convert

            graph(x)  # the weight observer sees the weight; the input observer exactly the range
            self.__dict__["_graph"] = convert(graph)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._graph is None:
            raise RuntimeError("StaticInt8Linear has no graph: load its state or call build()")
        y = self._graph(x.reshape(-1, self.in_features))
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        low, high = self.input_range.tolist()
        return f"{self.in_features}, {self.out_features}, input range [{low:.4g}, {high:.4g}]"


def quantize(model: nn.Module, names: list[str], run: Callable[[nn.Module], None]) -> None:
    """Replace the named Linear layers by calibrated static int8 layers, in place; `run(model)`
    feeds the calibration data through the model."""
    from compress._quiet import quiet_imports

    originals = {name: model.get_submodule(name) for name in names}
    observed = {name: _export(lin, CALIBRATION_ALGO) for name, lin in originals.items()}
    for name, graph in observed.items():
        model.set_submodule(name, _Observed(graph, originals[name].in_features))
    try:
        run(model)
    finally:
        for name, lin in originals.items():
            model.set_submodule(name, lin)
    for name, graph in observed.items():
        observer = _input_observer(graph)
        with quiet_imports():
            scale, zero = observer.calculate_qparams()
        scale, zero = float(scale), int(zero)
        grid = (observer.quant_min - zero) * scale, (observer.quant_max - zero) * scale
        layer = StaticInt8Linear.like(originals[name])
        with torch.no_grad():
            layer.weight.copy_(originals[name].weight)
            if layer.bias is not None:
                layer.bias.copy_(originals[name].bias)
            layer.input_range.copy_(torch.tensor(grid))  # the integer grid chosen, as floats
        layer.build()
        model.set_submodule(name, layer)


class _Observed(nn.Module):
    def __init__(self, graph: GraphModule, features: int) -> None:
        super().__init__()
        self.graph, self.features = graph, features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.graph(x.reshape(-1, self.features))
        return y.reshape(*x.shape[:-1], y.shape[-1])


def shells(model: nn.Module, names: list[str]) -> None:
    """Empty static int8 layers in place of the named Linear layers (a load fills them)."""
    for name in names:
        model.set_submodule(name, StaticInt8Linear.like(model.get_submodule(name)))
