"""ControlNets made for the uncompressed model, run with a compressed pipeline.

A ControlNet adds one residual to each skip connection of the UNet's down path (conv_in, each
down resnet or attention, each downsampler) and one to the mid block's output. diffusers' UNet
pairs them with its own skips by position (`zip`): on a block-pruned UNet, which has fewer, they
land on the wrong skips (a shape error, or silently where shapes agree), and on a channel-pruned
one their widths differ. `controlnet_pipeline` builds diffusers' ControlNet pipeline from a
compressed pipeline (its components and call defaults) and, on a pruned UNet, maps the residuals
onto the skips they were made for, from what the pruning recorded on the UNet: those of removed
layers are dropped (one warning names them), the others sliced to the channels prune_channels
kept. Every other transform keeps the skips: residuals pass unchanged.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from compress.errors import CompressError
from compress.models.unet import SKIP_CHANNELS, out_width, skip_layer, skip_modules
from compress.transforms.prune.blocks import REMOVALS, original_name

if TYPE_CHECKING:
    import torch
    from diffusers import ControlNetModel, DiffusionPipeline
    from torch import nn

_HANDLE = "_compress_controlnet_map"  # the mapping pre-hook's handle, on the UNet
_LOAD = "load the pipeline with compress.load (or apply_recipe), which records the pruning"


@dataclass(frozen=True)
class ResidualMap:
    """Where a ControlNet's residuals (made for the unpruned UNet) go on a pruned UNet."""

    skips: tuple[int, ...]  # per skip of this UNet: the residual it takes
    channels: tuple[tuple[int, ...] | None, ...]  # per skip: the residual's channels it keeps
    mid: bool  # the mid residual still fits (not once the innermost stage is gone)
    mid_channels: tuple[int, ...] | None
    widths: tuple[int, ...]  # the residuals' channels, as the ControlNet makes them
    dropped: tuple[str, ...]  # the ControlNet's skip modules (and mid_block) no skip takes
    sliced: tuple[str, ...]  # this UNet's layers whose residuals lose channels

    def apply(
        self, down: tuple[torch.Tensor, ...], mid: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        out = tuple(_take(down[o], c) for o, c in zip(self.skips, self.channels, strict=True))
        # a dropped mid residual is a zero: with None diffusers would take the call for an adapter's
        return out, _take(mid, self.mid_channels) if self.mid else out[-1].new_zeros(())

    def fits(self, down: tuple[torch.Tensor, ...] | None, mid: torch.Tensor | None) -> bool:
        """True for residuals shaped as this ControlNet's (a ControlNet made for the pruned UNet
        passes unchanged)."""
        return (
            down is not None and mid is not None and tuple(d.shape[1] for d in down) == self.widths
        )


def _take(x: torch.Tensor, channels: tuple[int, ...] | None) -> torch.Tensor:
    return x if channels is None else x[:, list(channels)]


def residual_map(unet: nn.Module, controlnet: ControlNetModel) -> ResidualMap | None:
    """How `controlnet`'s residuals reach `unet`'s skips; None where they fit as they are.
    Raises where they cannot: a count or width the pruning records do not explain."""
    base = skip_modules(controlnet)
    widths = tuple(b.out_channels for b in controlnet.controlnet_down_blocks)
    mid_width = controlnet.controlnet_mid_block.out_channels
    layers = [skip_layer(unet, m) for m in skip_modules(unet)]
    own = [out_width(unet, layer) for layer in layers]
    # with the mid block removed, the mid residual meets the last down block's output
    mid_layer = skip_layer(unet, "mid_block") if unet.mid_block is not None else layers[-1]
    if tuple(own) == widths and out_width(unet, mid_layer) == mid_width:
        return None
    removals = getattr(unet, REMOVALS, None) or []
    # each skip module by the name it had in the unpruned UNet, which the ControlNet mirrors
    names = [original_name(unet, m) for m in skip_modules(unet)]
    unknown = [n for n in names if n not in base]
    if unknown or (not removals and len(own) != len(widths)):
        why = (
            f"nothing records which layers were removed: {_LOAD}"
            if not removals
            else f"it has no skip module {', '.join(unknown)}: use a ControlNet of the model "
            "the recipe was applied to"
        )
        raise CompressError(
            f"the ControlNet makes {len(widths)} skip residuals and this UNet has {len(own)} "
            f"skip connections; {why}"
        )
    skips = tuple(base.index(n) for n in names)
    kept = getattr(unet, SKIP_CHANNELS, None) or {}
    bad: list[str] = []
    channels = tuple(
        _channels(layer, width, widths[o], kept, bad)
        for layer, width, o in zip(layers, own, skips, strict=True)
    )
    mid = not any(layout.get("drop_stage") for layout in removals)  # else another resolution
    mid_channels = (
        _channels(mid_layer, out_width(unet, mid_layer), mid_width, kept, bad) if mid else None
    )
    if bad:
        raise CompressError(
            f"the ControlNet's residuals do not fit this UNet's skip connections ({'; '.join(bad)})"
            f": without prune_channels' record of the kept channels they cannot be sliced "
            f"({_LOAD}), or the ControlNet was made for another model"
        )
    dropped = [m for i, m in enumerate(base) if i not in skips] + ([] if mid else ["mid_block"])
    sliced = [layer for layer, c in zip(layers, channels, strict=True) if c is not None]
    sliced += [mid_layer] if mid_channels is not None and mid_layer not in sliced else []
    return ResidualMap(skips, channels, mid, mid_channels, widths, tuple(dropped), tuple(sliced))


def _channels(
    layer: str, width: int, given: int, kept: dict[str, list[int]], bad: list[str]
) -> tuple[int, ...] | None:
    """The residual channels a skip of `width` keeps (None: all), or a line for `bad`."""
    idx = kept.get(layer)
    if idx is not None and len(idx) == width and max(idx) < given:
        return None if len(idx) == given else tuple(idx)
    if idx is None and width == given:
        return None
    bad.append(f"{layer} has {width} channels, the residual {given}")
    return None


def controlnet_pipeline(pipe: DiffusionPipeline, controlnet: Any) -> DiffusionPipeline:
    """diffusers' ControlNet pipeline for a compressed `pipe` (the same components, the same
    call defaults), taking `controlnet` (a ControlNetModel, a list of them or a
    MultiControlNetModel) made for the uncompressed UNet.

    On a pruned UNet the residuals are mapped onto the skips they were made for (a forward
    pre-hook on the UNet; residuals shaped for the pruned UNet pass unchanged); one warning
    names the residuals dropped with removed layers and the layers whose residuals lose the
    channels prune_channels removed.
    """
    from diffusers import AutoPipelineForText2Image
    from diffusers.utils.torch_utils import is_compiled_module

    from compress.generate import call_defaults, set_call_defaults
    from compress.models.denoiser import require_unet

    unet = require_unet(
        pipe,
        "controlnet_pipeline",
        "diffusers' ControlNet pipeline of its family where there is one (SD3: "
        "StableDiffusion3ControlNetPipeline); compress maps residuals onto UNet skips only",
    )
    inner = unet._orig_mod if is_compiled_module(unet) else unet
    nets = _nets(controlnet)
    maps = [residual_map(inner, net) for net in nets]
    if any(m != maps[0] for m in maps):
        raise CompressError(
            "the ControlNets given together were made for different UNets; give ControlNets "
            "of one model"
        )
    out = AutoPipelineForText2Image.from_pipe(pipe, controlnet=controlnet)
    takes = inspect.signature(type(out).__call__).parameters
    defaults = {k: v for k, v in call_defaults(pipe).items() if k in takes}
    if defaults:
        set_call_defaults(out, **defaults)
    out.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    _install(unet, maps[0])
    removed_mid = inner.mid_block is None and bool(getattr(inner, REMOVALS, None))
    note = _message(maps[0], removed_mid)
    if note:
        warnings.warn(note, stacklevel=2)
    return out


def _nets(controlnet: Any) -> list[Any]:
    nets = getattr(controlnet, "nets", None)  # a MultiControlNetModel
    if nets is None:
        nets = controlnet if isinstance(controlnet, list | tuple) else [controlnet]
    nets = list(nets)
    if not nets or not all(hasattr(n, "controlnet_down_blocks") for n in nets):
        raise CompressError(
            "controlnet_pipeline takes diffusers ControlNetModel(s) (down-block residuals for a "
            f"UNet), not {type(controlnet).__name__}"
        )
    return nets


def _install(unet: nn.Module, residuals: ResidualMap | None) -> None:
    """Put the mapping pre-hook on the UNet the pipeline calls (replacing an earlier one)."""
    old = getattr(unet, _HANDLE, None)
    if old is not None:
        old.remove()
        object.__setattr__(unet, _HANDLE, None)
    if residuals is None:
        return

    def remap(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
        down = kwargs.get("down_block_additional_residuals")
        mid = kwargs.get("mid_block_additional_residual")
        if not residuals.fits(down, mid):
            return None
        down, mid = residuals.apply(tuple(down), mid)
        new = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        return args, {**kwargs, **new}

    handle = unet.register_forward_pre_hook(remap, with_kwargs=True)
    object.__setattr__(unet, _HANDLE, handle)


def _message(residuals: ResidualMap | None, removed_mid: bool) -> str:
    """What a user of the ControlNet should know (empty: the residuals fit as they are)."""
    parts = []
    if residuals is not None and residuals.dropped:
        parts.append(
            f"the residuals of {', '.join(residuals.dropped)} are dropped (prune_blocks removed "
            "those layers)"
        )
    if removed_mid and (residuals is None or residuals.mid):
        parts.append(
            "the mid residual is added to the last down block's output, where the removed mid "
            "block's output was"
        )
    if residuals is not None and residuals.sliced:
        parts.append(
            f"the residuals of {', '.join(residuals.sliced)} keep only the channels "
            "prune_channels kept"
        )
    if not parts:
        return ""
    return "ControlNet made for the unpruned UNet on a pruned one: " + "; ".join(parts)
