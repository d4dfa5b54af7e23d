"""Tiny random-weight SD and SDXL pipelines, built in code for tests (no download)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from compress.models.tokenizer import build_word_tokenizer

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

# Stable Diffusion's training noise schedule.
SD_SCHEDULE = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
}
WORDS = "a an the red green blue digit zero one two three four five six seven eight nine on".split()


def _vae():  # 16 px images <-> (4, 8, 8) latents
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )


def _text(hidden: int, vocab: int, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=vocab,
        max_position_embeddings=16,
        projection_dim=hidden,
        bos_token_id=vocab - 2,
        eos_token_id=vocab - 1,
        pad_token_id=vocab - 1,
    )
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def build_tiny_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """SD1.x-shaped: UNet channels (32, 64), two layers per block, cross-attention, mid block."""
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    tok = build_word_tokenizer(WORDS)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    pipe = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=_text(32, len(tok)),
        tokenizer=tok,
        unet=unet,
        scheduler=DPMSolverMultistepScheduler(**SD_SCHEDULE),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """SDXL-shaped: two text encoders, text_time conditioning, per-block transformer depth."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    tok = build_word_tokenizer(WORDS)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64,
        norm_num_groups=16,
    )
    pipe = StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=_text(32, len(tok)),
        tokenizer=tok,
        text_encoder_2=_text(32, len(tok), projection=True),
        tokenizer_2=tok,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SD_SCHEDULE),
        force_zeros_for_empty_prompt=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
