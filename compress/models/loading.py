"""Load diffusers pipelines from a hub id, a local folder, or a built-in name (`miniature`,
`miniature-dit`)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.errors import CompressError

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

BUILTIN = ("miniature", "miniature-dit")
SUPPORTED = (
    "StableDiffusionPipeline",
    "StableDiffusionXLPipeline",
    "PixArtAlphaPipeline",
    "PixArtSigmaPipeline",
    "StableDiffusion3Pipeline",
    "SanaPipeline",
)
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_DTYPES = ("float32", "float16", "bfloat16")


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """`"float16"` -> torch.float16; None stays None (the checkpoint's own dtype)."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise CompressError(f"dtype {dtype!r} is not supported; use one of {', '.join(_DTYPES)}")
    return getattr(torch, dtype)


def resolve(model: str) -> str:
    """Turn a model argument into a local folder or hub id, or raise naming the accepted forms."""
    if model == "miniature":
        from compress.models.miniature import weights_dir

        return str(weights_dir())
    if model == "miniature-dit":
        from compress.models import miniature_dit

        return str(miniature_dit.weights_dir())
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise CompressError(
                f"{model} is a folder but has no model_index.json; pass a folder written by "
                "DiffusionPipeline.save_pretrained (or `compress apply`)"
            )
        return str(path)
    if path.exists() or model.startswith((".", "/", "~")) or not _HUB_ID.match(model):
        raise CompressError(
            f"model {model!r} not found: give a local pipeline folder, a hub id like "
            f"'org/name', or one of the built-in names: {', '.join(BUILTIN)}"
        )
    return model


def weights_digest(model: str) -> str | None:
    """SHA-256 over a local pipeline folder's weight files (names and contents); None for a hub id.

    Whole files are hashed: a fine-tune may change only a few tensors in the middle of a file,
    and hashing runs at about 1 GB/s, seconds even for SDXL.
    """
    source = Path(resolve(model))
    if not source.is_dir():
        return None
    digest = hashlib.sha256()
    for f in sorted(source.rglob("*")):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".ckpt", ".pt"):
            digest.update(f"{f.relative_to(source).as_posix()}\n".encode())
            with f.open("rb") as fh:
                digest.update(hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()


def load_pipeline(
    model: str, *, device: str = "cpu", dtype: str | torch.dtype | None = None, **kwargs: Any
) -> DiffusionPipeline:
    """Load a Stable Diffusion (1.x/2.x), SDXL, PixArt, SD3 or Sana pipeline, ready on `device`."""
    from diffusers import DiffusionPipeline

    source = resolve(model)
    local = Path(source).is_dir()
    if local:
        kwargs = {**absent_components(Path(source)), **kwargs}
    try:
        pipe = DiffusionPipeline.from_pretrained(
            source, torch_dtype=parse_dtype(dtype), local_files_only=local, **kwargs
        )
    except (OSError, ValueError) as exc:
        hint = (
            "check that the folder is complete (configs and safetensors weights)"
            if local
            else f"download it first (`hf download {source} --local-dir DIR`) and pass --model DIR"
        )
        raise CompressError(f"could not load {model!r}: {exc}; {hint}") from exc
    if type(pipe).__name__ not in SUPPORTED or not any(
        getattr(pipe, a, None) is not None for a in ("unet", "transformer")
    ):
        raise CompressError(
            f"{model!r} is a {type(pipe).__name__}; supported pipelines: {', '.join(SUPPORTED)}"
        )
    pipe.set_progress_bar_config(disable=True)
    from compress.generate import set_call_defaults
    from compress.models import miniature_dit

    # what the DiT miniature and every pipeline derived from it need to sample as trained
    set_call_defaults(pipe, **miniature_dit.trained_call(pipe))
    if model == "miniature":  # sampled at 20 steps and its tuned guidance, not diffusers' 50/7.5
        from compress.models.miniature.prompts import DEFAULT_CALL

        set_call_defaults(pipe, **DEFAULT_CALL)
    elif model == "miniature-dit":  # its tuned steps and guidance
        set_call_defaults(pipe, **miniature_dit.DEFAULT_CALL)
    return pipe.to(device)


def absent_components(folder: Path) -> dict[str, None]:
    """Components a pipeline folder was saved without (`[null, null]` in model_index.json, e.g.
    SD3 without its T5 encoder): diffusers loads such a folder only when they are passed as None."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return {}  # from_pretrained reports the broken folder itself
    return {k: None for k, v in index.items() if isinstance(v, list) and v[:1] == [None]}
