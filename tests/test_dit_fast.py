"""The shipped `dit-fast` preset on PixArt- and SD3-style checkpoints written by plain diffusers
and transformers calls (not by this project's builders): fewer transformer parameters, and the
artifact gives the same images through plain diffusers (given the steps) and `compress.load`."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import compress
from compress.cli import app

PROMPTS = ["a red cat on a blue chair", "a green tree"]
RECIPE = Path(__file__).parents[1] / "recipes" / "dit-fast.yaml"


def _t5(width: int = 32):
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    words = "a red green blue cat on chair tree".split()
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(c, -5.0) for c in string.ascii_lowercase] + [(f"▁{w}", -1.0) for w in words]
    tok = T5Tokenizer(vocab=vocab, extra_ids=0)
    cfg = T5Config(d_model=width, d_ff=64, d_kv=8, num_heads=4, num_layers=2, vocab_size=len(vocab))
    return tok, T5EncoderModel(cfg).eval()


def _vae(levels: int, **kw):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8,) * levels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        **kw,
    )


def pixart_folder(path: Path) -> Path:
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    torch.manual_seed(0)
    tok, text = _t5()
    transformer = PixArtTransformer2DModel(
        sample_size=32,  # a size PixArt's resolution binning knows: 256 px by default
        patch_size=4,
        in_channels=4,
        out_channels=8,
        num_layers=8,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=32,
    )
    scheduler = DPMSolverMultistepScheduler(
        beta_schedule="linear", beta_start=0.0001, beta_end=0.02
    )
    pipe = PixArtSigmaPipeline(
        tokenizer=tok, text_encoder=text, vae=_vae(4), transformer=transformer, scheduler=scheduler
    )
    pipe.save_pretrained(path)
    return path


def sd3_folder(path: Path) -> Path:
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    letters = list(string.ascii_lowercase)
    vocab = {t: i for i, t in enumerate([*letters, *(c + "</w>" for c in letters)])}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    clip_tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)

    def clip():
        cfg = CLIPTextConfig(
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=1,
            vocab_size=len(vocab),
            max_position_embeddings=16,
            projection_dim=16,
            bos_token_id=len(vocab) - 2,
            eos_token_id=len(vocab) - 1,
            pad_token_id=len(vocab) - 1,
        )
        return CLIPTextModelWithProjection(cfg).eval()

    t5_tok, t5 = _t5()
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=8,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,
        pooled_projection_dim=32,
        pos_embed_max_size=16,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(2, shift_factor=0.06, scaling_factor=1.5),
        text_encoder=clip(),
        tokenizer=clip_tok,
        text_encoder_2=clip(),
        tokenizer_2=clip_tok,
        text_encoder_3=t5,
        tokenizer_3=t5_tok,
    )
    pipe.save_pretrained(path)
    return path


def images(pipe, **kw) -> np.ndarray:
    gens = [torch.Generator().manual_seed(i) for i in range(len(PROMPTS))]
    with torch.inference_mode():
        out = pipe(PROMPTS, generator=gens, output_type="np", **kw).images
    return (np.asarray(out) * 255).round().astype(np.uint8)


def n_params(pipe) -> int:
    return sum(p.numel() for p in pipe.transformer.parameters())


@pytest.mark.parametrize("make", [pixart_folder, sd3_folder], ids=["pixart", "sd3"])
def test_dit_fast_applies_to_checkpoints_saved_by_others(make, tmp_path: Path) -> None:
    from diffusers import DiffusionPipeline

    source = make(tmp_path / "source")
    out = tmp_path / "fast"
    result = CliRunner().invoke(
        app, ["apply", str(RECIPE), "--model", str(source), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output

    original = DiffusionPipeline.from_pretrained(source)
    plain = DiffusionPipeline.from_pretrained(out, torch_dtype=torch.float32)
    loaded = compress.load(out)
    assert plain.transformer.config.num_layers == 7  # block 6 of 8 gone (every 7th)
    assert n_params(plain) < n_params(original)
    assert type(plain.scheduler).__name__ == "DPMSolverMultistepScheduler"
    flow = type(original.scheduler).__name__.startswith("FlowMatch")
    assert plain.scheduler.config.get("use_flow_sigmas", False) == flow  # its own family
    guidance = 7.0 if flow else 4.5  # the pipelines' own defaults
    got = images(plain, num_inference_steps=4)
    assert got.std() > 0
    np.testing.assert_array_equal(images(loaded), got)
    explicit = images(plain, num_inference_steps=4, guidance_scale=guidance)
    np.testing.assert_array_equal(explicit, got)
