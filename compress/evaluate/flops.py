"""FLOPs and memory of a pipeline's components, counted on the real architecture without its
weights: the modules are built on the `meta` device (shapes only) and run once under torch's
FlopCounterMode, which counts every matrix multiply, convolution and attention of the call.

Used by `compress search --plan` to turn a space into seconds, bytes and trial counts before
anything trains.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.errors import CompressError

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline
    from torch import nn


@dataclass(frozen=True)
class Costs:
    """One pipeline's per-call FLOPs and sizes at one resolution."""

    denoiser_flops: float  # one denoiser call on one latent
    text_flops: float  # the text encoders on one prompt
    decode_flops: float  # the VAE decoding one latent
    encode_flops: float  # the VAE encoding one image (training on images)
    denoiser_params: int
    pipeline_params: int  # every module (what an artifact folder saves)
    activation_bytes: float  # one training sample's saved activations through the denoiser
    latent_shape: tuple[int, ...]  # (C, h, w)
    text_shape: tuple[int, ...]  # (tokens, width) of the conditioning


def meta_pipeline(model: str) -> DiffusionPipeline:
    """The pipeline of a local folder (or `miniature`, `miniature-dit`) built from its configs
    on the meta device: no weight is read. Hub ids need a local folder first."""
    import diffusers
    import transformers
    from accelerate import init_empty_weights

    from compress.models.loading import resolve

    folder = Path(resolve(model))
    if not folder.is_dir():
        raise CompressError(
            f"the plan builds {model!r} from its configs: give a local folder (`hf download "
            f"{model} --local-dir DIR`), or a space whose `search.arch` names its architecture"
        )
    index = json.loads((folder / "model_index.json").read_text())
    parts: dict[str, Any] = {}
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        library, cls_name = spec
        path = folder / name
        if library == "diffusers" and name == "scheduler":
            parts[name] = getattr(diffusers, cls_name).from_pretrained(path)
        elif library == "diffusers":
            cls = getattr(diffusers, cls_name)
            with init_empty_weights():
                parts[name] = cls.from_config(cls.load_config(path))
        elif name.startswith("tokenizer"):
            parts[name] = getattr(transformers, cls_name).from_pretrained(path)
        elif library == "transformers":
            config = transformers.AutoConfig.from_pretrained(path)
            with init_empty_weights():
                parts[name] = getattr(transformers, cls_name)._from_config(config)
    for name, spec in index.items():  # optional components saved as [null, null]
        if isinstance(spec, list) and spec[0] is None:
            parts[name] = None
    cls = getattr(diffusers, index["_class_name"])
    accepted = set(cls.__init__.__code__.co_varnames)
    return cls(**{k: v for k, v in parts.items() if k in accepted})


def count(pipe: DiffusionPipeline, resolution: int | None = None) -> Costs:
    """FLOPs of each component's call and the denoiser's training activations, on `pipe`'s
    architecture (any device; meta costs nothing) at `resolution` (default: its own)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from compress.models.denoiser import denoiser
    from compress.train.diffusion import sample_size

    net = denoiser(pipe)
    size = resolution or sample_size(pipe)
    factor = int(pipe.vae_scale_factor)
    c = int(pipe.vae.config.latent_channels)
    latent = (c, size // factor, size // factor)
    dev, dtype = _place(net)
    text = _text_inputs(pipe, dev)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        cond = _encode(pipe, text)
    text_flops = counter.get_total_flops()
    kwargs = _denoiser_inputs(pipe, cond, latent, dev, dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(**kwargs)
    denoiser_flops = counter.get_total_flops()
    z = torch.zeros(1, *latent, device=dev, dtype=pipe.vae.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        pipe.vae.decode(z)
    decode_flops = counter.get_total_flops()
    image = torch.zeros(1, 3, size, size, device=dev, dtype=pipe.vae.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        pipe.vae.encode(image)
    encode_flops = counter.get_total_flops()
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    return Costs(
        denoiser_flops=float(denoiser_flops),
        text_flops=float(text_flops),
        decode_flops=float(decode_flops),
        encode_flops=float(encode_flops),
        denoiser_params=sum(p.numel() for p in net.parameters()),
        pipeline_params=sum(p.numel() for m in modules for p in m.parameters()),
        activation_bytes=_activations(net, kwargs),
        latent_shape=latent,
        text_shape=tuple(cond["encoder_hidden_states"].shape[1:]),
    )


def _place(net: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(net.parameters())
    return p.device, p.dtype


def _text_inputs(pipe: DiffusionPipeline, dev: Any) -> dict[str, Any]:
    import torch

    out = {}
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        tok = getattr(pipe, name.replace("text_encoder", "tokenizer"), None)
        if getattr(pipe, name, None) is not None and tok is not None:
            length = int(tok.model_max_length if tok.model_max_length < 10_000 else 77)
            out[name] = torch.zeros(1, length, dtype=torch.long, device=dev)
    return out


def _encode(pipe: DiffusionPipeline, text: dict[str, Any]) -> dict[str, Any]:
    """Run every text encoder once; the conditioning shape the denoiser takes."""
    states = []
    for name, ids in text.items():
        out = getattr(pipe, name)(ids, output_hidden_states=True)
        states.append(out.hidden_states[-2] if name != "text_encoder_3" else out[0])
    return {"encoder_hidden_states": states[0]}


def _denoiser_inputs(
    pipe: DiffusionPipeline, cond: dict[str, Any], latent: tuple[int, ...], dev: Any, dtype: Any
) -> dict[str, Any]:
    """One call's inputs: the sample, a timestep and conditioning of the right shapes."""
    import torch

    from compress.models.denoiser import denoiser

    net = denoiser(pipe)
    cfg = net.config
    name = type(net).__name__
    sample = torch.zeros(1, *latent, device=dev, dtype=dtype)
    t = torch.zeros(1, device=dev, dtype=dtype)
    width = (
        cfg.get("cross_attention_dim")
        or cfg.get("joint_attention_dim")
        or cfg.get("caption_channels")
    )
    tokens = int(cond["encoder_hidden_states"].shape[1])
    if getattr(pipe, "text_encoder_3", None) is not None:  # SD3: CLIP tokens, then T5's
        tokens += int(pipe.tokenizer_3.model_max_length)
    text = torch.zeros(1, tokens, int(width), device=dev, dtype=dtype)
    key = "sample" if name == "UNet2DConditionModel" else "hidden_states"
    kwargs: dict[str, Any] = {key: sample}
    kwargs |= {"timestep": t, "encoder_hidden_states": text}
    if name == "UNet2DConditionModel" and cfg.get("addition_embed_type") == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.zeros(1, pooled, device=dev, dtype=dtype),
            "time_ids": torch.zeros(1, 6, device=dev, dtype=dtype),
        }
    if name == "UNet2DConditionModel" and cfg.get("time_cond_proj_dim"):
        kwargs["timestep_cond"] = torch.zeros(1, cfg.time_cond_proj_dim, device=dev, dtype=dtype)
    if name.startswith("PixArt"):
        kwargs["added_cond_kwargs"] = {"resolution": None, "aspect_ratio": None}
    if name == "SD3Transformer2DModel":
        kwargs["pooled_projections"] = torch.zeros(
            1, cfg.pooled_projection_dim, device=dev, dtype=dtype
        )
    return kwargs


def _activations(net: nn.Module, kwargs: dict[str, Any]) -> float:
    """Bytes a backward pass keeps for one sample: the outputs of every parameterised leaf
    (convolutions, linears, norms) and attention, as autograd saves inputs of the next op."""
    import torch

    total = [0.0]

    def hook(module: nn.Module, args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            total[0] += out.numel() * out.element_size()

    handles = [
        m.register_forward_hook(hook)
        for m in net.modules()
        if not list(m.children())
        and (list(m.parameters(recurse=False)) or "Attention" in type(m).__name__)
    ]
    try:
        with torch.no_grad():
            net(**kwargs)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def _batched(value: Any, n: int) -> Any:
    """Inputs of one sample repeated to a batch of `n`."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.expand(n, *value.shape[1:]).contiguous()
    if isinstance(value, dict):
        return {k: _batched(v, n) for k, v in value.items()}
    return value
