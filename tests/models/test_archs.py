"""Full-size architectures from their published configs: exact sizes, random weights on a device."""

from __future__ import annotations

import pytest
import torch

from compress.errors import CompressError
from compress.models.archs import ARCHS, _materialize, arch_config, build_arch_pipeline


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# Parameter counts of the published checkpoints (diffusers / transformers report these). The
# Sana transformer's is what diffusers' conversion of the published checkpoint (its
# SanaMS_600M_P1_D28 config) holds; the others are the published components' counts.
T5_XXL = 4_762_310_656
PUBLISHED = {
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sd21": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sdxl": {
        "unet": 2_567_463_684,
        "vae": 83_653_863,
        "text_encoder": 123_060_480,
        "text_encoder_2": 694_659_840,
    },
    "pixart-sigma": {"transformer": 610_856_096, "vae": 83_653_863, "text_encoder": T5_XXL},
    "sd3-medium": {
        "transformer": 2_028_328_000,
        "vae": 83_819_683,
        "text_encoder": 123_650_304,
        "text_encoder_2": 694_659_840,
        "text_encoder_3": T5_XXL,
    },
    "sana-600m": {"transformer": 591_747_872, "vae": 312_250_275, "text_encoder": 2_614_341_888},
}
# Positions the (first) tokenizer pads to, as in each published pipeline.
TOKENS = {"pixart-sigma": 300, "sana-600m": 300}


@pytest.mark.parametrize("arch", ARCHS)
def test_meta_build_matches_published_sizes(arch: str) -> None:
    pipe = build_arch_pipeline(arch)  # meta: structure only, no memory
    for name, expected in PUBLISHED[arch].items():
        module = getattr(pipe, name)
        assert _count(module) == expected, name
        assert next(module.parameters()).device.type == "meta"
    assert pipe.tokenizer.model_max_length == TOKENS.get(arch, 77)
    assert pipe.scheduler.config.num_train_timesteps == 1000


def test_sd21_predicts_v_and_sdxl_conditions_on_time() -> None:
    assert arch_config("sd21", "scheduler")["prediction_type"] == "v_prediction"
    assert arch_config("sana-600m", "scheduler")["prediction_type"] == "flow_prediction"
    assert arch_config("sd3-medium", "scheduler")["shift"] == 3.0
    assert arch_config("sdxl", "unet")["addition_embed_type"] == "text_time"
    assert arch_config("sdxl", "vae")["scaling_factor"] == 0.13025


def test_unknown_arch_and_component() -> None:
    with pytest.raises(CompressError, match="sd15, sd21, sdxl, pixart-sigma"):
        build_arch_pipeline("sd3")
    with pytest.raises(CompressError, match="no component 'text_encoder_2'"):
        arch_config("sd15", "text_encoder_2")


def test_materialize_draws_weights_on_device_in_dtype() -> None:
    """The same path the full-size build takes, on a small text encoder (CPU, bfloat16)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=100,
        max_position_embeddings=77,
    )
    gen = torch.Generator("cpu").manual_seed(0)
    model = _materialize(lambda: CLIPTextModel(cfg), torch.device("cpu"), torch.bfloat16, gen)
    params = dict(model.named_parameters())
    assert all(p.device.type == "cpu" and p.dtype == torch.bfloat16 for p in params.values())
    fc = next(p for n, p in params.items() if n.endswith("fc1.weight")).float()
    assert abs(fc.std().item() - 32**-0.5) < 0.02  # variance-preserving draw
    norm = next(p for n, p in params.items() if n.endswith("layer_norm1.weight"))
    assert torch.all(norm == 1)
    # buffers (position ids) are real values, not uninitialised memory
    assert torch.equal(
        dict(model.named_buffers())["embeddings.position_ids"][0, :5], torch.arange(5)
    )
    out = model(input_ids=torch.tensor([[1, 2, 3]])).last_hidden_state
    assert torch.isfinite(out.float()).all()


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ARCHS)
def test_full_size_runs_on_gpu_in_float16(arch: str) -> None:
    from compress.models.denoiser import denoiser, denoiser_attr

    pipe = build_arch_pipeline(arch, device="cuda", dtype="float16")
    net = denoiser(pipe)
    assert net.dtype == torch.float16 and net.device.type == "cuda"
    assert _count(net) == PUBLISHED[arch][denoiser_attr(pipe)]
    with torch.inference_mode():
        image = pipe(
            prompt=["a photo of a cat"],
            num_inference_steps=2,
            height=512,
            width=512,
            output_type="np",
        ).images
    assert image.shape == (1, 512, 512, 3)
