"""torch-pruning mechanics for prune_channels: prune dependency groups while noting the kept
channels of stage outputs, and bring diffusers modules in line with their pruned weights."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from compress.errors import CompressError
from compress.models.unet import (
    FEATURE_CHANNELS,
    SKIP_CHANNELS,
    feature_channels,
    feature_pairs,
    output_layer,
    skip_layer,
    skip_modules,
)

if TYPE_CHECKING:
    from torch import nn


@contextlib.contextmanager
def traceable(unet: nn.Module) -> Iterator[None]:
    """torch-pruning follows the autograd graph: gradients must be on, whatever the caller froze."""
    import torch

    flags = [p.requires_grad for p in unet.parameters()]
    unet.requires_grad_(True)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:  # pruning replaces parameters but keeps their number and order
        for p, flag in zip(unet.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def check_groups(unet: nn.Module, ratios: list[float]) -> None:
    """Refuse a ratio that would empty a GroupNorm group or an attention head."""
    from diffusers.models.attention_processor import Attention
    from torch import nn

    worst = max(ratios)
    for name, m in unet.named_modules():
        size = (
            m.num_channels // m.num_groups
            if isinstance(m, nn.GroupNorm)
            else m.to_q.out_features // m.heads
            if isinstance(m, Attention)
            else 0
        )
        if size and int(size * (1 - worst)) < 1:
            raise CompressError(
                f"ratio {worst} would empty the {size}-channel groups of {name}; "
                f"use a ratio <= {1 - 1 / size:.3g}"
            )


def sync_attributes(unet: nn.Module, head_dims: dict[str, int], whole_heads: bool) -> None:
    """Bring module attributes in line with pruned weights; keep attention logits' scale."""
    import torch
    from diffusers.models.attention_processor import Attention
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.upsampling import Upsample2D

    for name, m in unet.named_modules():
        if isinstance(m, Upsample2D | Downsample2D) and getattr(m, "conv", None) is not None:
            m.channels, m.out_channels = m.conv.in_channels, m.conv.out_channels
        if isinstance(m, Attention) and name in head_dims:
            if whole_heads:
                m.heads = m.to_q.out_features // head_dims[name]
            d_new = m.to_q.out_features // m.heads
            if d_new != head_dims[name]:  # SDPA scales by the new head dim: fold the old scale in
                with torch.no_grad():
                    m.to_q.weight.mul_((d_new / head_dims[name]) ** 0.5)
                    if m.to_q.bias is not None:
                        m.to_q.bias.mul_((d_new / head_dims[name]) ** 0.5)
            m.inner_dim, m.scale = m.to_q.out_features, d_new**-0.5
    unet._compress_channels_pruned = True


def head_dims(unet: nn.Module) -> dict[str, int]:
    from diffusers.models.attention_processor import Attention

    return {
        n: m.to_q.out_features // m.heads
        for n, m in unet.named_modules()
        if isinstance(m, Attention)
    }


def prune_groups(dg: Any, unet: nn.Module, groups: Any) -> None:
    """Prune `groups` in order and note, on the UNet, which channels each stage output kept
    (for feature distillation) and each skip connection and the mid block's output (for
    ControlNet residuals)."""
    names = {m: n for n, m in unet.named_modules()}
    pruned: dict[str, tuple[int, list[int]]] = {}
    for group in groups:
        for dep, idxs in group:
            mod = dep.target.module
            if dg.is_out_channel_pruning_fn(dep.handler) and mod in names:
                pruned[names[mod]] = (dg.get_out_channels(mod), [int(i) for i in idxs])
        group.prune()
    if not hasattr(unet, "down_blocks"):  # a transformer's block outputs keep their width
        return
    channels = feature_channels(unet)
    for student, _teacher in feature_pairs(unet):
        _note(channels, student, pruned.get(output_layer(unet, student)))
    setattr(unet, FEATURE_CHANNELS, channels)
    skips = dict(getattr(unet, SKIP_CHANNELS, None) or {})
    mid = ["mid_block"] if unet.mid_block is not None else []
    for layer in {skip_layer(unet, m) for m in skip_modules(unet) + mid}:
        _note(skips, layer, pruned.get(layer))
    setattr(unet, SKIP_CHANNELS, skips)


def _note(channels: dict[str, list[int]], key: str, pruned: tuple[int, list[int]] | None) -> None:
    """Record the kept channels of `key` (pruned: its width and removed indices)."""
    if pruned is None:
        return
    width, gone = pruned[0], set(pruned[1])
    kept = [i for i in range(width) if i not in gone]
    old = channels.get(key)  # pruned twice: indices compose
    channels[key] = [old[i] for i in kept] if old else kept


def kept_indices(
    dg: Any, unet: nn.Module, root: str, out: bool, pruned: list[int]
) -> dict[str, Any]:
    """Kept indices of a pruned root, with the width it had (one-shot: now + len(pruned))."""
    mod = unet.get_submodule(root)
    fn = dg.get_pruner_of_module(mod)
    now = fn.get_out_channels(mod) if out else fn.get_in_channels(mod)
    gone = {int(i) for i in pruned}
    total = now + len(gone)
    return {"channels": total, "indices": [i for i in range(total) if i not in gone]}
