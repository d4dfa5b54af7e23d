"""Artifacts: a diffusers folder plus `recipe.yaml`, written atomically and reloaded exactly."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.apply import restore
from compress.errors import CompressError
from compress.fs import write_atomic
from compress.generate import call_defaults, set_call_defaults
from compress.model_card import CARD_FILE, card_text
from compress.recipe import Recipe, load_recipe, save_recipe
from compress.transforms.base import spec_of

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

RECIPE_FILE = "recipe.yaml"


def save_artifact(
    pipe: DiffusionPipeline, recipe: Recipe, out: str | os.PathLike[str], overwrite: bool = False
) -> Path:
    """Save pipeline weights (safetensors) and the applied recipe; rename into place at the end."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CompressError(
            f"{out} already exists and is not empty; pass --overwrite or a new --out"
        )
    stuck = [t.kind for t in recipe.transforms if not spec_of(t).native and not spec_of(t).restore]
    if stuck:
        raise CompressError(f"saving transforms {stuck} outside diffusers formats is not supported")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        save_recipe(recipe, tmp / RECIPE_FILE)
        notes = loading_notes(recipe, out, call_defaults(pipe))
        write_atomic(tmp / CARD_FILE, card_text(recipe, notes))
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def is_artifact(model: str) -> bool:
    """True for a folder written by `compress apply` (it holds the applied recipe)."""
    return Path(model).expanduser().is_dir() and (Path(model).expanduser() / RECIPE_FILE).is_file()


def load_model(model: str, **kwargs: Any) -> DiffusionPipeline:
    """Any model argument, loaded as it is meant to run: an artifact of `compress apply` with its
    recipe replayed (call defaults included), else a pipeline folder, hub id or built-in name."""
    from compress.models.loading import load_pipeline

    return load_artifact(model, **kwargs) if is_artifact(model) else load_pipeline(model, **kwargs)


def load_artifact(folder: str | os.PathLike[str], **kwargs: Any) -> DiffusionPipeline:
    """Load the saved structure and weights, then replay what the configs do not hold."""
    from compress.models.loading import load_pipeline

    folder = Path(folder)
    if not (folder / RECIPE_FILE).is_file():
        raise CompressError(
            f"{folder} has no {RECIPE_FILE}: it is not a compress artifact (a plain diffusers "
            "folder loads with DiffusionPipeline.from_pretrained or --model)"
        )
    recipe = load_recipe(folder / RECIPE_FILE)
    for record in recipe.records:  # e.g. quantized weights that diffusers would load as bfloat16
        if "load_dtype" in record.metadata:
            kwargs.setdefault("dtype", record.metadata["load_dtype"])
    if recipe.native:
        pipe = load_pipeline(str(folder), **kwargs)
        if recipe.base_call:
            set_call_defaults(pipe, **recipe.base_call)
        restore(pipe, recipe, only_replayed=True)
        return pipe
    return _load_restructured(folder, recipe, **kwargs)


def _load_restructured(folder: Path, recipe: Recipe, **kwargs: Any) -> DiffusionPipeline:
    """Non-native structure: build the denoiser from its saved config, replay the recorded
    transforms on it (e.g. pruned channels, an added guidance embedding), then load its weights
    from safetensors."""
    import json

    import diffusers
    import torch
    from safetensors.torch import load_file

    from compress.models.loading import load_pipeline, parse_dtype

    index = json.loads((folder / "model_index.json").read_text())
    attr = "unet" if "unet" in index else "transformer"
    cls = getattr(diffusers, index[attr][1])
    config = cls.load_config(folder / attr)
    for record in recipe.records:  # config fields a transform added: its on_load re-adds them
        for key in record.metadata.get("unet_config_added", []):
            config[key] = None
    pipe = load_pipeline(str(folder), **{attr: cls.from_config(config)}, **kwargs)
    if recipe.base_call:
        set_call_defaults(pipe, **recipe.base_call)
    # runtime transforms (e.g. compile) wrap the finished denoiser: replayed after its weights
    structure, runtime = _split_runtime(recipe)
    restore(pipe, structure, only_replayed=True)
    net = getattr(pipe, attr)
    state: dict[str, Any] = {}
    for f in sorted((folder / attr).glob("*.safetensors")):
        state.update(_load_weights(f, load_file))
    quantized = any(type(v) is not torch.Tensor for v in state.values())
    # quantized tensors replace the float parameters instead of being copied into them
    net.load_state_dict(state, strict=True, assign=quantized)
    if quantized:
        net.to(pipe.device)
    dtype = parse_dtype(kwargs.get("dtype")) or next(iter(state.values())).dtype
    if net.dtype != dtype:
        net.to(dtype=dtype)
    restore(pipe, runtime, only_replayed=True)
    return pipe


def _split_runtime(recipe: Recipe) -> tuple[Recipe, Recipe]:
    """The recipe's non-runtime transforms and its runtime ones, each with its records."""
    from compress.transforms.base import Stage

    pairs = list(zip(recipe.transforms, recipe.records, strict=True))
    parts = []
    for runtime in (False, True):
        kept = [(t, r) for t, r in pairs if (spec_of(t).stage == Stage.runtime) == runtime]
        update = {"transforms": [t for t, _ in kept], "records": [r for _, r in kept]}
        parts.append(recipe.model_copy(update=update))
    return parts[0], parts[1]


def _load_weights(path: Path, load_file: Any) -> dict[str, Any]:
    """A safetensors file's tensors, rebuilding torchao's quantized tensors from its metadata."""
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        metadata = f.metadata() or {}
    state = load_file(path)
    if "tensor_names" not in metadata:  # torchao names its quantized tensors in the metadata
        return state
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict
    from torchao.prototype.safetensors.safetensors_utils import is_metadata_torchao

    if not is_metadata_torchao(metadata):
        return state

    quantized, rest = unflatten_tensor_state_dict(state, metadata)
    return {**rest, **quantized}


def loading_notes(
    recipe: Recipe, folder: str | os.PathLike[str], call: dict[str, Any]
) -> list[str]:
    """How to load an artifact, truthfully per transform: what compress.load gives, and what
    plain diffusers gives (or why it cannot load the folder). `call` holds the call defaults
    the applied pipeline samples with (steps, guidance)."""
    where = repr(str(folder))
    args = ", ".join(f"{k}={v!r}" for k, v in sorted(call.items()))
    lines = [
        f"compress.load({where}) replays every transform"
        + (f"; a plain call samples with {args}" if args else "")
    ]
    specs = [(spec_of(t), t) for t in recipe.transforms]
    if not recipe.native:
        kinds = sorted(
            {
                s.kind
                for (s, t), r in zip(specs, recipe.records or [None] * len(specs), strict=True)
                if not (s.native and t.saves_natively())
                or (r is not None and r.metadata.get("native") is False)
            }
        )
        lines.append(
            f"plain diffusers cannot load it: {', '.join(kinds)} left layers or config fields "
            "diffusers' configs do not describe; use compress.load"
        )
        return lines
    dtypes = [r.metadata["load_dtype"] for r in recipe.records if "load_dtype" in r.metadata]
    dtype = f", torch_dtype=torch.{dtypes[0]}" if dtypes else ""
    plain = f"DiffusionPipeline.from_pretrained({where}{dtype}) loads the weights and scheduler"
    plain += f"; pass {args} (call arguments, not config)" if args else ""
    short = [f"{s.kind}: {s.plain}" for s, _ in specs if s.plain]
    lines.append("plain diffusers: " + plain + "".join(f"; {note}" for note in short))
    return lines
