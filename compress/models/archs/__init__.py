"""Full-size SD 1.5 / 2.1 / XL, PixArt-Sigma, SD3-medium and Sana-600M pipelines from their
published configs, with random weights.

The configs are kept as JSON data beside this file (one folder per architecture, one file per
component, as in the published checkpoints). Weights are drawn directly on the target device in the
target dtype, so the latency of a real-size model is measurable on a GPU without any checkpoint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.errors import CompressError

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

HERE = Path(__file__).parent
ARCHS = ("sd15", "sd21", "sdxl", "pixart-sigma", "sd3-medium", "sana-600m")
# The vocabulary only shapes token ids; the text encoders see the real pipelines' sequence lengths
# (77 CLIP positions, 256 or 300 T5/Gemma ones), so small word tokenizers time the same work.
_WORDS = (
    "a an the of in on with and photo painting portrait of cat dog city street night forest "
    "mountain river house car red blue green golden light detailed"
).split()


def arch_config(arch: str, component: str) -> dict[str, Any]:
    """The published config of one component (`unet`, `vae`, `text_encoder`, ...) of `arch`."""
    _check(arch)
    path = HERE / arch / f"{component}.json"
    if not path.is_file():
        have = sorted(p.stem for p in (HERE / arch).glob("*.json"))
        raise CompressError(f"{arch} has no component {component!r}; it has {', '.join(have)}")
    return json.loads(path.read_text())


def _check(arch: str) -> None:
    if arch not in ARCHS:
        raise CompressError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")


def build_arch_pipeline(
    arch: str, *, device: str = "meta", dtype: str | torch.dtype | None = None, seed: int = 0
) -> DiffusionPipeline:
    """A random-weight pipeline of `arch` on `device` (`meta`: structure only, no memory)."""
    import diffusers
    import torch

    from compress.models.loading import parse_dtype

    _check(arch)
    dtype = parse_dtype(dtype) or torch.float32
    dev = torch.device(device)
    gen = None if dev.type == "meta" else torch.Generator(dev).manual_seed(seed)
    spec = arch_config(arch, "pipeline")
    parts: dict[str, Any] = {}
    for name in spec["components"]:
        cfg = arch_config(arch, name)
        cls_name = cfg.pop("_class_name")
        if name == "scheduler":
            parts[name] = getattr(diffusers, cls_name).from_config(cfg)
        elif name.startswith("text_encoder"):
            length = spec.get("tokenizer_max_length", {}).get(name, 77)
            tok = _tokenizer(cls_name, length)
            parts[name] = _text_encoder(cls_name, cfg, tok, dev, dtype, gen)
            parts["tokenizer" + name.removeprefix("text_encoder")] = tok
        else:
            parts[name] = _materialize(
                lambda c=cls_name, k=cfg: getattr(diffusers, c).from_config(k), dev, dtype, gen
            )
    extra = {
        k: spec[k] for k in ("requires_safety_checker", "force_zeros_for_empty_prompt") if k in spec
    }
    if spec["_class_name"] == "StableDiffusionPipeline":
        extra |= {"safety_checker": None, "feature_extractor": None}
    pipe = getattr(diffusers, spec["_class_name"])(**parts, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tokenizer(encoder: str, length: int) -> Any:
    """A word tokenizer of the family the text encoder was trained with (CLIP, T5, Gemma)."""
    from compress.models.tokenizer import (
        build_gemma_tokenizer,
        build_t5_tokenizer,
        build_word_tokenizer,
    )

    if encoder.startswith("T5"):
        return build_t5_tokenizer(_WORDS, max_length=length)
    if encoder.startswith("Gemma"):
        return build_gemma_tokenizer(_WORDS, max_length=length)
    return build_word_tokenizer(_WORDS, max_length=length)


def _text_encoder(cls_name: str, cfg: dict[str, Any], tok: Any, dev: Any, dtype: Any, gen: Any):
    import transformers

    cfg = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type")}
    # Token ids must come from the tokenizer in use (the pooled output reads the EOS position).
    cfg |= {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    if cls_name.startswith("T5"):
        # The encoder reads the shared token embedding, as in the published checkpoint; its
        # `tie_word_embeddings: false` concerns the (absent) LM head, yet transformers 5 unties
        # the encoder's copy too unless told to tie.
        config: Any = transformers.T5Config(**(cfg | {"tie_word_embeddings": True}))
    elif cls_name.startswith("Gemma2"):
        config = transformers.Gemma2Config(**cfg)
    else:
        config = transformers.CLIPTextConfig(**cfg)
    return _materialize(lambda: getattr(transformers, cls_name)(config), dev, dtype, gen)


def _materialize(make: Any, dev: torch.device, dtype: torch.dtype, gen: torch.Generator | None):
    """Build on `meta`, then draw each weight straight on the device (no CPU init, no copy)."""
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device

    with init_empty_weights(include_buffers=False):  # buffers (position ids) stay real
        module = make()
    if hasattr(module, "tie_weights"):  # transformers skips tying under init_empty_weights
        module.tie_weights()
    module.eval().requires_grad_(False)
    if dev.type == "meta":
        return module.to(dtype)
    for name, param in list(module.named_parameters()):
        value = _random(name, param, dev, dtype, gen)
        set_module_tensor_to_device(module, name, dev, value=value, dtype=dtype, clear_cache=False)
    if hasattr(module, "tie_weights"):  # tied embeddings point at the new tensor again
        module.tie_weights()
    return module.to(dev)


def _random(name: str, p: torch.Tensor, dev: Any, dtype: Any, gen: Any) -> torch.Tensor:
    """Variance-preserving weights (std 1/sqrt(fan_in)), norms at 1 and biases at 0: finite
    activations in float16, which is all latency needs."""
    import torch

    if p.dim() >= 2:
        fan_in = math.prod(p.shape[1:])
        out = torch.empty(p.shape, device=dev, dtype=dtype)
        return out.normal_(0.0, fan_in**-0.5, generator=gen)
    fill = 1.0 if name.endswith("weight") else 0.0
    return torch.full(p.shape, fill, device=dev, dtype=dtype)
