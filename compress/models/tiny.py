"""Tiny random-weight pipelines (SD, SDXL, PixArt, SD3, Sana), built in code for tests (no
download)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from compress.models.tokenizer import (
    build_gemma_tokenizer,
    build_t5_tokenizer,
    build_word_tokenizer,
)

if TYPE_CHECKING:
    from diffusers import (
        PixArtSigmaPipeline,
        SanaPipeline,
        StableDiffusion3Pipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

# Stable Diffusion's training noise schedule.
SD_SCHEDULE = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
}
WORDS = "a an the red green blue digit zero one two three four five six seven eight nine on".split()


def _vae(**kwargs):  # 16 px images <-> (4, 8, 8) latents
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
        **kwargs,
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


def build_tiny_pixart_pipeline(seed: int = 0, num_layers: int = 4) -> PixArtSigmaPipeline:
    """PixArt-Sigma-shaped: T5 text encoder, 4 adaLN-single transformer blocks with self- and
    cross-attention, learned variance (8 output channels), DPM-Solver++ on a DDPM schedule.

    The VAE downsamples 8x and the transformer's sample size is 32, one of the sizes PixArt's
    resolution binning knows: the default call makes 256 px images without resizing.
    """
    import torch
    from diffusers import AutoencoderKL, PixArtSigmaPipeline, PixArtTransformer2DModel

    torch.manual_seed(seed)
    tok = build_t5_tokenizer(WORDS, max_length=16)
    text = _t5(32, tok)
    transformer = PixArtTransformer2DModel(
        sample_size=32,
        patch_size=4,
        in_channels=4,
        out_channels=8,
        num_layers=num_layers,
        num_attention_heads=2,
        attention_head_dim=16,
        cross_attention_dim=32,
        caption_channels=32,
        use_additional_conditions=False,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=256,
    )
    pipe = PixArtSigmaPipeline(
        tokenizer=tok,
        text_encoder=text,
        vae=vae,
        transformer=transformer,
        scheduler=_pixart_scheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _t5(width: int, tok):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(
        d_model=width,
        d_ff=2 * width,
        d_kv=8,
        num_heads=width // 8,
        num_layers=2,
        vocab_size=len(tok),
        dropout_rate=0.0,
    )
    return T5EncoderModel(cfg).eval()


def _pixart_scheduler():
    """PixArt's DDPM training schedule (linear betas), sampled by DPM-Solver++."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02)


def build_tiny_sd3_pipeline(seed: int = 0, num_layers: int = 4) -> StableDiffusion3Pipeline:
    """SD3-shaped: two CLIP text encoders, no T5 one (SD3 runs without; its 256 padded positions
    would dominate a tiny model's cost), 4 MMDiT joint blocks (the last one closes the text
    stream), flow matching with FlowMatchEuler, shift 3."""
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    torch.manual_seed(seed)
    tok = build_word_tokenizer(WORDS)
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=num_layers,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # the two CLIP widths, 16 + 16
        caption_projection_dim=32,
        pooled_projection_dim=32,  # the two CLIP projections, concatenated
        pos_embed_max_size=16,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(shift_factor=0.0609, scaling_factor=1.5305),
        text_encoder=_text(16, len(tok), projection=True),
        tokenizer=tok,
        text_encoder_2=_text(16, len(tok), projection=True),
        tokenizer_2=tok,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


SANA_CALL = {"height": 32, "width": 32, "use_resolution_binning": False}


def build_tiny_sana_pipeline(seed: int = 0) -> SanaPipeline:
    """Sana-shaped: Gemma-2 text encoder, 4 linear-attention blocks with GLU conv feed-forward,
    a DC autoencoder, flow matching with the flow variant of DPM-Solver++ (shift 3).

    Sana bins every request to at least 512 px; call it with `SANA_CALL` (32 px, no binning).
    """
    import torch
    from diffusers import (
        AutoencoderDC,
        DPMSolverMultistepScheduler,
        SanaPipeline,
        SanaTransformer2DModel,
    )
    from transformers import Gemma2Config, Gemma2Model

    torch.manual_seed(seed)
    tok = build_gemma_tokenizer(WORDS, max_length=16)
    text = Gemma2Model(
        Gemma2Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=16,
            vocab_size=len(tok),
            pad_token_id=tok.pad_token_id,
            attn_implementation="eager",
        )
    ).eval()
    transformer = SanaTransformer2DModel(
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=4,
        num_attention_heads=2,
        attention_head_dim=16,
        num_cross_attention_heads=2,
        cross_attention_head_dim=16,
        cross_attention_dim=32,
        caption_channels=32,
        sample_size=16,
    )
    vae = AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)),
        decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1),
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.41407,
    )
    scheduler = DPMSolverMultistepScheduler(
        use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0
    )
    pipe = SanaPipeline(
        tokenizer=tok, text_encoder=text, vae=vae, transformer=transformer, scheduler=scheduler
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
