"""A quantized candidate against its unquantized parent (the same recipe without its quantize
and qat transforms): flag it, in its scores and the report, when it is no faster."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compress.recipe import Recipe, Scores

QUANTIZING = ("quantize", "qat")


def parent_transforms(recipe: Recipe) -> list[Any] | None:
    """The recipe's transforms without quantization; None when it quantizes nothing."""
    if not any(t.kind in QUANTIZING for t in recipe.transforms):
        return None
    return [t for t in recipe.transforms if t.kind not in QUANTIZING]


def flag_scores(scores: Scores) -> Scores:
    """`scores` with the quantized-but-not-faster flag set or cleared from the paired interval
    against the parent; unchanged where no parent was timed (nothing quantized)."""
    from compress.transforms.quantize.ptq import flag_if_not_faster

    return scores if scores.parent_speedup_ci is None else flag_if_not_faster(scores)
