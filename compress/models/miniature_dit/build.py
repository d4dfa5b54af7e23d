"""Untrained DiT-miniature components: standard diffusers/transformers classes at a 2-CPU scale.

SD3's layout (Esser et al. 2024): two CLIP text encoders with projection whose penultimate
hidden states form the context and whose pooled outputs condition every block's adaLN, no T5
(`text_encoder_3=None`), an MMDiT denoiser and rectified-flow sampling.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from compress.models.miniature.build import LATENT_SIZE, build_tokenizer, text_config

if TYPE_CHECKING:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

TEXT_WIDTH = 64  # each of the two CLIP encoders
WIDTH = 128  # the transformer's hidden size: 4 heads of 32
# SD3 pads the CLIP context with zeros to the T5 width; here both CLIP widths fill it exactly.
JOINT_DIM = 2 * TEXT_WIDTH

__all__ = ["build_tokenizer"]


def build_text_encoder(tok: CLIPTokenizer) -> CLIPTextModelWithProjection:
    """The UNet miniature's text encoder, with a projection for the pooled output."""
    from transformers import CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(text_config(tok))


def build_transformer(layers: int = 4, patch_size: int = 2) -> SD3Transformer2DModel:
    """An MMDiT over the VAE's (4, 8, 8) latents: `patch_size` 2 gives 16 image tokens."""
    from diffusers import SD3Transformer2DModel

    net = SD3Transformer2DModel(
        sample_size=LATENT_SIZE,
        patch_size=patch_size,
        in_channels=4,
        out_channels=4,
        num_layers=layers,
        attention_head_dim=32,
        num_attention_heads=WIDTH // 32,
        joint_attention_dim=JOINT_DIM,
        caption_projection_dim=WIDTH,
        pooled_projection_dim=2 * TEXT_WIDTH,
        pos_embed_max_size=LATENT_SIZE // patch_size,
    )
    return adaln_zero(net)


def adaln_zero(net: SD3Transformer2DModel) -> SD3Transformer2DModel:
    """DiT's adaLN-Zero initialisation (Peebles & Xie 2023): every block starts as the identity
    (zero modulation, so zero gates) and the output projection at zero. diffusers initialises
    these layers like any other Linear, and DiT's ablation found zero-initialised blocks train
    markedly faster."""
    import torch

    with torch.no_grad():
        for name, module in net.named_modules():
            if name.endswith(("norm1.linear", "norm1_context.linear", "norm_out.linear")):
                module.weight.zero_()
                module.bias.zero_()
        net.proj_out.weight.zero_()
        net.proj_out.bias.zero_()
    return net


def build_scheduler(shift: float = 1.0) -> FlowMatchEulerDiscreteScheduler:
    """Rectified-flow Euler sampling; `shift` > 1 spends more steps at high noise (SD3 uses 3)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
