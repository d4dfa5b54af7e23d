"""Small pipelines built here with plain diffusers, at sizes none of the builders in
`compress/models/tiny.py` uses (other widths, depths, heads, patch size and text width): the
contract holds for models the project never saw, not only for its own."""

from __future__ import annotations

from typing import Any

from compress.models.tokenizer import build_t5_tokenizer, build_word_tokenizer

WORDS = "a an the red green blue digit zero one two three four five six seven eight nine on".split()
SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def build_unseen_unet_pipeline(seed: int = 1) -> Any:
    """SD-shaped: three UNet stages (24, 48, 48), attention at the outer two, text width 24."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tok = build_word_tokenizer(WORDS, max_length=12)
    text = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=24,
            intermediate_size=48,
            num_attention_heads=3,
            num_hidden_layers=1,
            vocab_size=len(tok),
            max_position_embeddings=12,
            bos_token_id=len(tok) - 2,
            eos_token_id=len(tok) - 1,
            pad_token_id=len(tok) - 1,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(24, 48, 48),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=24,
        attention_head_dim=6,
        norm_num_groups=6,
    )
    vae = AutoencoderKL(
        block_out_channels=(12, 24),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=6,
        sample_size=16,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tok,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SCHEDULE, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_unseen_pixart_pipeline(seed: int = 1) -> Any:
    """PixArt-Sigma-shaped: 3 blocks of 3 heads x 8, patch 2, T5 width 24."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        PixArtSigmaPipeline,
        PixArtTransformer2DModel,
    )
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tok = build_t5_tokenizer(WORDS, max_length=12)
    text = T5EncoderModel(
        T5Config(
            d_model=24,
            d_ff=48,
            d_kv=8,
            num_heads=3,
            num_layers=1,
            vocab_size=len(tok),
            dropout_rate=0.0,
        )
    ).eval()
    transformer = PixArtTransformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=4,
        out_channels=8,
        num_layers=3,
        num_attention_heads=3,
        attention_head_dim=8,
        cross_attention_dim=24,
        caption_channels=24,
        use_additional_conditions=False,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=256,
    )
    scheduler = DPMSolverMultistepScheduler(
        beta_schedule="linear", beta_start=0.0001, beta_end=0.02
    )
    pipe = PixArtSigmaPipeline(
        tokenizer=tok, text_encoder=text, vae=vae, transformer=transformer, scheduler=scheduler
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
