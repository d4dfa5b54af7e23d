"""compress: automated compression with architecture search for text-to-image diffusion."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

__all__ = [
    "__version__",
    "load",
    "apply_recipe",
    "load_recipe",
    "load_pipeline",
    "set_embedded_guidance",
]


def load(folder: str, **kwargs: Any) -> DiffusionPipeline:
    """Load any artifact written by `compress apply` (recipe replayed, weights from safetensors)."""
    from compress.artifact import load_artifact

    return load_artifact(folder, **kwargs)


def __getattr__(name: str) -> Any:
    # Lazy re-exports keep `import compress` (and `compress --help`) free of torch imports.
    if name == "apply_recipe":
        from compress.apply import apply_recipe

        return apply_recipe
    if name == "load_recipe":
        from compress.recipe import load_recipe

        return load_recipe
    if name == "load_pipeline":
        from compress.models.loading import load_pipeline

        return load_pipeline
    if name == "set_embedded_guidance":  # a guidance-distilled transformer's sampling scale
        from compress.transforms.distill._dit_guidance import set_embedded_guidance

        return set_embedded_guidance
    raise AttributeError(f"module 'compress' has no attribute {name!r}")
