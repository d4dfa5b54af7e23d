"""UNet2DConditionModel helpers shared by the structure transforms and distillation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from diffusers import UNet2DConditionModel

# Set on a pruned UNet for feature distillation against its unpruned ancestor (BK-SDM):
# FEATURE_PAIRS: [(student module, teacher module)] stage outputs to match;
# FEATURE_CHANNELS: {student module: the teacher channel indices its output channels kept}.
FEATURE_PAIRS = "_compress_feature_pairs"
FEATURE_CHANNELS = "_compress_feature_channels"
# Set on a channel-pruned UNet for ControlNet residuals made for the unpruned one
# (compress/controlnet.py): {skip or mid block output layer: the unpruned channel indices kept}.
SKIP_CHANNELS = "_compress_skip_channels"


def as_list(value: Any, n: int) -> list[Any]:
    """A per-block config value (int or tuple, as diffusers accepts either) as a list of n."""
    return list(value) if isinstance(value, list | tuple) else [value] * n


def example_inputs(unet: UNet2DConditionModel, batch: int = 1) -> dict[str, Any]:
    """Small random inputs that exercise every module of `unet` (for tracing and MAC counts)."""
    import torch

    cfg = unet.config
    side = 2 ** max(len(cfg.block_out_channels) - 1, 0) * 2
    dev, dtype = unet.device, unet.dtype
    cross = cfg.cross_attention_dim
    cross = cross[0] if isinstance(cross, list | tuple) else cross
    gen = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {
        "sample": torch.randn(batch, cfg.in_channels, side, side, generator=gen).to(dev, dtype),
        "timestep": torch.tensor([500] * batch, device=dev),
        "encoder_hidden_states": torch.randn(batch, 4, cross, generator=gen).to(dev, dtype),
    }
    if cfg.addition_embed_type == "text_time":
        text = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        out["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, text, generator=gen).to(dev, dtype),
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * batch, device=dev, dtype=dtype),
        }
    if cfg.time_cond_proj_dim is not None:
        out["timestep_cond"] = torch.randn(batch, cfg.time_cond_proj_dim, generator=gen).to(
            dev, dtype
        )
    return out


def forward(unet: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    return unet(**inputs, return_dict=False)[0]


def stage_names(unet: UNet2DConditionModel) -> list[str]:
    """The stage modules whose outputs BK-SDM's feature loss matches: down, mid, up blocks."""
    names = [f"down_blocks.{i}" for i in range(len(unet.down_blocks))]
    names += ["mid_block"] if unet.mid_block is not None else []
    return names + [f"up_blocks.{i}" for i in range(len(unet.up_blocks))]


def output_layer(unet: UNet2DConditionModel, stage: str) -> str:
    """The conv/linear whose output channels are the channels of a stage's output."""
    block = unet.get_submodule(stage)
    for leaf in ("proj_out", "conv2"):  # a single attention or resnet module
        if hasattr(block, leaf):
            return f"{stage}.{leaf}"
    for sampler in ("downsamplers", "upsamplers"):
        if getattr(block, sampler, None):
            return f"{stage}.{sampler}.0.conv"
    # a block's last op is its last attention (after the last resnet) if it has attentions
    if getattr(block, "attentions", None) and len(block.attentions) >= len(block.resnets):
        return f"{stage}.attentions.{len(block.attentions) - 1}.proj_out"
    return f"{stage}.resnets.{len(block.resnets) - 1}.conv2"


def feature_pairs(net: torch.nn.Module) -> list[tuple[str, str]]:
    """Recorded (student, teacher) stage pairs, or the stages matched by name: a UNet's down, mid
    and up blocks, a diffusion transformer's blocks."""
    pairs = getattr(net, FEATURE_PAIRS, None)
    if pairs:
        return [tuple(p) for p in pairs]
    if not hasattr(net, "down_blocks"):
        return [(f"transformer_blocks.{i}",) * 2 for i in range(len(net.transformer_blocks))]
    return [(n, n) for n in stage_names(net)]


def feature_channels(unet: UNet2DConditionModel) -> dict[str, list[int]]:
    return dict(getattr(unet, FEATURE_CHANNELS, None) or {})


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def skip_modules(net: torch.nn.Module) -> list[str]:
    """The modules whose outputs are the skip connections of a UNet's (or a ControlNet's) down
    path, in the order diffusers pairs them with ControlNet residuals: conv_in, then per down
    block each resnet (its attention, where it has one) and the downsampler."""
    out = ["conv_in"]
    for i, block in enumerate(net.down_blocks):
        attns = getattr(block, "attentions", None)
        kind = "attentions" if attns else "resnets"
        out += [f"down_blocks.{i}.{kind}.{k}" for k in range(len(block.resnets))]
        out += [f"down_blocks.{i}.downsamplers.{k}" for k in range(len(block.downsamplers or []))]
    return out


def skip_layer(net: torch.nn.Module, module: str) -> str:
    """The conv/linear whose output channels are a skip module's (or the mid block's) output."""
    if module == "conv_in":
        return module
    if ".downsamplers." in module:
        return f"{module}.conv"
    return output_layer(net, module)


def out_width(net: torch.nn.Module, layer: str) -> int:
    m = net.get_submodule(layer)
    return int(getattr(m, "out_channels", None) or m.out_features)
