"""DeepCache (Ma et al. 2024, "DeepCache: Accelerating Diffusion Models for Free") for diffusers'
UNet2DConditionModel: between full steps only a shallow branch runs (conv_in, the first down
layers, the last up layers), fed by the deep feature the last full step left at the branch's
entrance.

Written by hand because diffusers ships no DeepCache for UNets (its cache hooks target
transformer blocks) and the DeepCache package replaces diffusers' UNet and pipelines with copies
of an older diffusers. The partial forward below mirrors UNet2DConditionModel.forward for the
layers it runs; full steps call the UNet's own forward unchanged.

Skip connections are numbered as the down path produces them: 0 is conv_in's output, then one per
down resnet (with its attention) and per downsampler. Up layer j consumes skip K-1-j, so branch b
runs the down layers up to skip b and the last b+1 up layers; the cached feature is the hidden
state entering the up layer that consumes skip b. A pruned UNet (fewer resnets per block, no mid
block) has fewer skips and so fewer branches.

ControlNet residuals (one per skip, one for the mid block's output) stay on: a cached step adds
the current step's residuals to the skips the shallow branch makes, and the deep ones are in the
feature the last full step (with its residuals) left. T2I-Adapter residuals, which enter inside
the down blocks, make a call run the whole UNet.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from compress.errors import CompressError

if TYPE_CHECKING:
    import torch
    from torch import nn

DOWN_BLOCKS = ("DownBlock2D", "CrossAttnDownBlock2D")
UP_BLOCKS = ("UpBlock2D", "CrossAttnUpBlock2D")
# DeepCache's non-uniform (N:U) variant: full steps denser around this fraction of the run.
CENTER, POWER = 0.3, 1.4


def skip_count(unet: nn.Module) -> int:
    """Skip connections of `unet` (K): conv_in's output plus one per down layer."""
    kinds = [type(b).__name__ for b in unet.down_blocks] + [
        type(b).__name__ for b in unet.up_blocks
    ]
    odd = sorted({k for k in kinds if k not in DOWN_BLOCKS + UP_BLOCKS})
    if odd:
        raise CompressError(
            "cache method deepcache supports UNets built from "
            f"{', '.join(DOWN_BLOCKS + UP_BLOCKS)}; this one has {', '.join(odd)}"
        )
    return 1 + sum(len(b.resnets) + len(b.downsamplers or []) for b in unet.down_blocks)


def check_branch(unet: nn.Module, branch: int) -> int:
    """K for `unet`, or a clear error when `branch` does not fit it."""
    k = skip_count(unet)
    if branch > k - 2:
        raise CompressError(
            f"cache branch {branch} is deeper than this UNet: it has {k} skip connections "
            f"(conv_in and {k - 1} down layers), so branch can be 0-{k - 2} (0 is the shallowest)"
        )
    return k


def feature_module(unet: nn.Module, branch: int) -> nn.Module:
    """The module whose output is the feature that branch `branch` reuses."""
    j = skip_count(unet) - 1 - branch  # the first up layer the shallow branch runs
    for i, block in enumerate(unet.up_blocks):
        if j < len(block.resnets):
            if j == 0:  # entering a block: the previous up block's output (after its upsampler)
                return unet.up_blocks[i - 1]
            attns = getattr(block, "attentions", None)
            return attns[j - 1] if attns is not None else block.resnets[j - 1]
        j -= len(block.resnets)
    raise AssertionError("branch checked against the UNet")


def full_steps(steps: int, interval: int, schedule: str) -> list[int]:
    """Sampler steps (0-based) that run the whole UNet: every `interval`-th (uniform), or as many
    placed densest around step CENTER * steps (non-uniform, DeepCache's N:U variant)."""
    uniform = list(range(0, steps, interval))
    if schedule == "uniform" or len(uniform) < 3:
        return uniform
    k, c, p = len(uniform), CENTER * (steps - 1), POWER
    while p > 1.0:  # as in DeepCache: flatten the curve until k distinct steps remain
        lo, hi = -(c ** (1 / p)), (steps - 1 - c) ** (1 / p)
        u = [lo + (hi - lo) * i / (k - 1) for i in range(k)]
        picked = sorted({round(c + math.copysign(abs(v) ** p, v)) for v in u})
        if len(picked) == k:
            return picked
        p -= 0.02
    return sorted({round(i * (steps - 1) / (k - 1)) for i in range(k)})


def _units(block: nn.Module) -> Iterator[tuple[nn.Module, nn.Module | None, bool]]:
    """(module, its attention or None, is_resnet) for each skip-producing layer of a down block."""
    attns = getattr(block, "attentions", None)
    for i, resnet in enumerate(block.resnets):
        yield resnet, (attns[i] if attns is not None else None), True
    for down in block.downsamplers or []:
        yield down, None, False


def _call_args(unet: nn.Module, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    bound = inspect.signature(type(unet).forward).bind(unet, *args, **kwargs)
    out = dict(bound.arguments)
    out.pop("self", None)
    return out


def needs_full(unet: nn.Module, args: tuple, kwargs: dict[str, Any]) -> bool:
    """True for calls the shallow branch cannot serve: T2I-Adapter residuals (intrablock, or
    down residuals without a mid one, which diffusers takes for an adapter's)."""
    a = _call_args(unet, args, kwargs)
    controlnet = a.get("mid_block_additional_residual") is not None
    down = a.get("down_block_additional_residuals") is not None
    return a.get("down_intrablock_additional_residuals") is not None or (down and not controlnet)


def shallow_forward(
    unet: nn.Module, branch: int, feature: torch.Tensor, args: tuple, kwargs: dict[str, Any]
) -> Any:
    """The UNet's output with the deep part replaced by `feature` (same call as the UNet's)."""
    from diffusers.utils import apply_lora_scale

    return apply_lora_scale("cross_attention_kwargs")(_shallow)(
        unet, branch=branch, feature=feature, **_call_args(unet, args, kwargs)
    )


def _shallow(
    unet: Any,
    *,
    branch: int,
    feature: torch.Tensor,
    sample: torch.Tensor,
    timestep: Any,
    encoder_hidden_states: torch.Tensor,
    class_labels: torch.Tensor | None = None,
    timestep_cond: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    cross_attention_kwargs: dict[str, Any] | None = None,
    added_cond_kwargs: dict[str, Any] | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
    return_dict: bool = True,
    **_: Any,  # the mid residual is in the cached feature; adapters run the full UNet
) -> Any:
    import torch
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    # -- the conditioning, as UNet2DConditionModel.forward prepares it --
    factor = 2**unet.num_upsamplers
    forward_upsample_size = any(s % factor != 0 for s in sample.shape[-2:])
    if attention_mask is not None:
        attention_mask = ((1 - attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
    if encoder_attention_mask is not None:
        encoder_attention_mask = (1 - encoder_attention_mask.to(sample.dtype)) * -10000.0
        encoder_attention_mask = encoder_attention_mask.unsqueeze(1)
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), timestep_cond)
    class_emb = unet.get_class_embed(sample=sample, class_labels=class_labels)
    if class_emb is not None:
        emb = (
            torch.cat([emb, class_emb], -1)
            if unet.config.class_embeddings_concat
            else emb + class_emb
        )
    aug = unet.get_aug_embed(
        emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
    )
    if unet.config.addition_embed_type == "image_hint":
        aug, hint = aug
        sample = torch.cat([sample, hint], dim=1)
    emb = emb + aug if aug is not None else emb
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    encoder_hidden_states = unet.process_encoder_hidden_states(
        encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
    )
    if cross_attention_kwargs is not None and cross_attention_kwargs.get("gligen") is not None:
        cross_attention_kwargs = dict(cross_attention_kwargs)
        gligen = cross_attention_kwargs.pop("gligen")
        cross_attention_kwargs["gligen"] = {"objs": unet.position_net(**gligen)}
    attn_kw = {
        "encoder_hidden_states": encoder_hidden_states,
        "cross_attention_kwargs": cross_attention_kwargs,
        "attention_mask": attention_mask,
        "encoder_attention_mask": encoder_attention_mask,
        "return_dict": False,
    }

    # -- shallow down path: skips 0..branch --
    h = unet.conv_in(sample)
    skips = [h]
    units = (u for block in unet.down_blocks for u in _units(block))
    while len(skips) <= branch:
        module, attn, is_resnet = next(units)
        h = module(h, emb) if is_resnet else module(h)
        if attn is not None:
            h = attn(h, **attn_kw)[0]
        skips.append(h)
    if down_block_additional_residuals is not None:  # a ControlNet's, added as the UNet does
        skips = [s + r for s, r in zip(skips, down_block_additional_residuals, strict=False)]

    # -- shallow up path: the last branch+1 up layers, from the cached feature --
    h, j = feature, 0
    first = skip_count(unet) - 1 - branch
    for block in unet.up_blocks:
        attns = getattr(block, "attentions", None)
        for i, resnet in enumerate(block.resnets):
            if j >= first:
                h = resnet(torch.cat([h, skips.pop()], dim=1), emb)
                if attns is not None:
                    h = attns[i](h, **attn_kw)[0]
            j += 1
        if block.upsamplers is not None and j > first:
            size = skips[-1].shape[2:] if forward_upsample_size else None
            for up in block.upsamplers:
                h = up(h, size)

    if unet.conv_norm_out:
        h = unet.conv_act(unet.conv_norm_out(h))
    h = unet.conv_out(h)
    return UNet2DConditionOutput(sample=h) if return_dict else (h,)
