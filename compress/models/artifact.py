"""Artifacts: a diffusers folder plus `recipe.yaml`, written atomically and reloaded exactly."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.apply import restore
from compress.errors import CompressError
from compress.recipe import Recipe, load_recipe, save_recipe

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
    if not recipe.native:
        kinds = [t.kind for t in recipe.transforms]
        raise CompressError(f"saving transforms {kinds} outside diffusers formats is not supported")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        save_recipe(recipe, tmp / RECIPE_FILE)
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
    pipe = load_pipeline(str(folder), **kwargs)
    restore(pipe, recipe, only_replayed=True)
    return pipe
