"""The built-in DiT miniature: an SD3-shaped pipeline trained by flow matching on composed digits.

It shares the UNet miniature's data, VAE and judge (`compress.models.miniature`); only the
denoiser (an MMDiT, `SD3Transformer2DModel`), its two small CLIP text encoders and the
flow-matching scheduler are its own.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from compress.errors import CompressError

HERE = Path(__file__).parent
WEIGHTS = HERE / "weights"
# SD3 pads the text context with `max_sequence_length` zero tokens where the T5 encoder would be
# (256 unless told). The DiT miniature has no T5 and was trained without them: sampled with 256
# constant tokens in every attention its images would drift, so it is always sampled with none.
TRAINED_CALL: dict[str, Any] = {"max_sequence_length": 0}
# Its default call: the scheduler's steps and guidance that scored best (reports/dit.md).
DEFAULT_CALL: dict[str, Any] = {"num_inference_steps": 20, "guidance_scale": 4.0, **TRAINED_CALL}


def weights_dir() -> Path:
    """Folder of the shipped DiT miniature (loads with StableDiffusion3Pipeline)."""
    if not (WEIGHTS / "model_index.json").is_file():
        raise CompressError(
            f"the built-in miniature-dit model is missing from {WEIGHTS}; "
            "rebuild it with `python scripts/train_miniature_dit.py`"
        )
    return WEIGHTS


def trained_call(pipe: Any) -> dict[str, Any]:
    """TRAINED_CALL for the DiT miniature or any pipeline derived from it (an SD3 pipeline without
    T5 that tokenizes with the miniature's vocabulary), else nothing."""
    if type(pipe).__name__ != "StableDiffusion3Pipeline" or pipe.text_encoder_3 is not None:
        return {}
    tok = getattr(pipe, "tokenizer", None)
    return dict(TRAINED_CALL) if tok is not None and tok.get_vocab() == _vocab() else {}


@cache
def _vocab() -> dict[str, int]:
    from compress.models.miniature.build import build_tokenizer

    return build_tokenizer().get_vocab()
