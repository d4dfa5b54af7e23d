"""The built-in miniature text-to-image pipeline (trained on composed digits) and its judge."""

from __future__ import annotations

from pathlib import Path

from compress.errors import CompressError

HERE = Path(__file__).parent
WEIGHTS = HERE / "weights"


def weights_dir() -> Path:
    """Folder of the shipped miniature pipeline (loads with StableDiffusionPipeline)."""
    if not (WEIGHTS / "model_index.json").is_file():
        raise CompressError(
            f"the built-in miniature model is missing from {WEIGHTS}; "
            "rebuild it with `python scripts/train_miniature.py`"
        )
    return WEIGHTS
