"""A guidance-scale input for diffusion transformers that have none (PixArt, SD3, Sana).

diffusers gives UNets one (`time_cond_proj_dim`), and StableDiffusionPipeline feeds it; PixArt,
SD3 and Sana pipelines feed no scale to their transformer. So, as for the UNet, the scale's
sinusoidal embedding goes through a zero-initialised linear layer and is added to the timestep
embedding (Meng et al. 2023's w-conditioning); a forward hook adds it, since no diffusers config
can express the layer, and the scale to embed is held on the layer: set per batch in training,
and on load from the recipe (`set_embedded_guidance` changes it). The pipeline then samples
with guidance_scale 1, one transformer call per step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from compress.errors import CompressError

NAME = "compress_guidance"  # the submodule holding the layer (its weights save with the rest)
# where each class embeds the timestep: (B, inner_dim) outputs the layer's output is added to
TIME_EMBEDDING = {
    "PixArtTransformer2DModel": "adaln_single.emb",
    "SanaTransformer2DModel": "time_embed.emb",
    "SD3Transformer2DModel": "time_text_embed",
}


class GuidanceEmbedding(nn.Module):
    """Linear(dim -> width) of the sinusoidal embedding of `scale - 1`, zero at start."""

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.dim = dim
        self.proj = nn.Linear(dim, width)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.scale: torch.Tensor | float = 1.0  # what the next calls embed: (B,) or one value

    def forward(self, n: int) -> torch.Tensor:
        w = torch.as_tensor(self.scale, dtype=torch.float32).flatten() - 1.0
        w = w.expand(n) if w.numel() == 1 else w
        return self.proj(sinusoid(w, self.dim).to(self.proj.weight))

    def add(self, _module: nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor:
        """Forward hook on the timestep embedding: its (B, width) output plus this embedding."""
        return out + self(out.shape[0]).to(out)


def sinusoid(w: torch.Tensor, dim: int) -> torch.Tensor:
    """(B, dim) sinusoidal embedding of guidance values `w` (B,), as diffusers' UNet pipelines
    embed theirs (`get_guidance_scale_embedding`)."""
    w = w.float().cpu() * 1000.0
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    emb = w[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    return torch.nn.functional.pad(emb, (0, 1)) if dim % 2 else emb


def _target(net: nn.Module) -> nn.Module:
    name = TIME_EMBEDDING.get(type(net).__name__)
    if name is None:
        raise CompressError(
            f"a guidance embedding can be added to {', '.join(TIME_EMBEDDING)} or a UNet, "
            f"not {type(net).__name__}"
        )
    try:
        return net.get_submodule(name)
    except AttributeError:
        raise CompressError(
            f"{type(net).__name__} has no plain timestep embedding at {name} (does it embed "
            "guidance already, e.g. guidance_embeds: true?)"
        ) from None


def add(net: nn.Module, dim: int, scale: float) -> None:
    """Attach a zero-initialised guidance embedding (a no-op until trained) embedding `scale`."""
    if has(net):
        raise CompressError(f"{type(net).__name__} already has a guidance embedding")
    cfg = net.config
    width = cfg.num_attention_heads * cfg.attention_head_dim
    target = _target(net)
    layer = GuidanceEmbedding(dim, width).to(next(net.parameters()))
    layer.scale = scale
    net.add_module(NAME, layer)
    target.register_forward_hook(layer.add)


def has(net: nn.Module) -> bool:
    return hasattr(net, NAME)


def set_scale(net: nn.Module, scale: torch.Tensor | float) -> None:
    """The guidance scale(s) the transformer's next calls embed: (B,) per sample or one value."""
    getattr(net, NAME).scale = scale


def set_embedded_guidance(pipe: Any, scale: float) -> None:
    """Sample a guidance-distilled transformer pipeline at another scale (one call per step)."""
    from compress.models.denoiser import denoiser

    net = denoiser(pipe)
    if not has(net):
        raise CompressError(f"{type(net).__name__} has no guidance embedding (distill_guidance)")
    set_scale(net, float(scale))
