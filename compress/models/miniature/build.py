"""Untrained miniature components: standard diffusers/transformers classes at a 2-CPU scale."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from compress.models.miniature.data import IMAGE_SIZE, MAX_TOKENS, WORDS
from compress.models.tokenizer import build_word_tokenizer

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

# Stable Diffusion's training noise schedule, so SD schedulers and transforms apply unchanged.
SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "prediction_type": "epsilon",
}
TEXT_WIDTH = 64
LATENT_SIZE = IMAGE_SIZE // 4  # three VAE stages: two downsamplings


def build_tokenizer() -> CLIPTokenizer:
    return build_word_tokenizer(WORDS, MAX_TOKENS)


def build_vae() -> AutoencoderKL:
    """(3, 32, 32) images <-> (4, 8, 8) latents; one layer per block keeps it cheap to train."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
    )


def build_text_encoder(tok: CLIPTokenizer) -> CLIPTextModel:
    """A 2-layer CLIP text transformer of width 64 over the whole-word vocabulary."""
    from transformers import CLIPTextModel

    return CLIPTextModel(text_config(tok))


def text_config(tok: CLIPTokenizer) -> CLIPTextConfig:
    """The miniatures' text encoder: 2 layers of width 64, 4 heads, a projection of width 64."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=TEXT_WIDTH,
        intermediate_size=4 * TEXT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=TEXT_WIDTH,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def build_unet() -> UNet2DConditionModel:
    """SD1.x-shaped: two stages (32, 64), two layers per block, cross-attention everywhere."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=4,  # diffusers' legacy name: this is the number of heads
        norm_num_groups=8,
    )


def build_scheduler():
    """The default sampler: DPM-Solver++ (Lu et al. 2022) over the SD noise schedule."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(**SCHEDULE, algorithm_type="dpmsolver++")
