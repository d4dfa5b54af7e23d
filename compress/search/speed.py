"""A quantized candidate against its unquantized parent (the same recipe without its quantize
and qat transforms): flag it, in its scores and the report, when it is no faster."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compress.recipe import Recipe, Scores
    from compress.search.trial import TrialJob

QUANTIZING = ("quantize", "qat")


def parent_transforms(recipe: Recipe) -> list[Any] | None:
    """The recipe's transforms without quantization; None when it quantizes nothing."""
    if not any(t.kind in QUANTIZING for t in recipe.transforms):
        return None
    return [t for t in recipe.transforms if t.kind not in QUANTIZING]


def parent_latency(job: TrialJob, recipe: Recipe, log: logging.Logger) -> Scores | None:
    """The parent's latency under the trial's own settings: the run's baseline when the parent
    is the uncompressed model measured with the same settings, else measured here; None when
    the parent would need training (too costly to repeat just for a comparison)."""
    from compress.recipe import Recipe, Scores
    from compress.transforms.base import Stage, spec_of

    parent = parent_transforms(recipe)
    if parent is None:
        return None
    if not parent and job.baseline_latency is not None:
        median, spread = job.baseline_latency
        log.info("parent: the uncompressed baseline, %.2f ms", median)
        return Scores(latency_ms=median, latency_spread_ms=spread)
    if any(spec_of(t).stage == Stage.training for t in parent):
        log.info("parent not timed: it trains (%s)", [t.kind for t in parent])
        return None
    from compress.apply import apply_recipe
    from compress.evaluate import EvalSettings
    from compress.evaluate.latency import measure_latency
    from compress.models.loading import load_pipeline

    settings = EvalSettings(**job.settings)
    pipe = load_pipeline(job.model, device=settings.device, dtype=job.dtype)
    if parent:
        apply_recipe(pipe, Recipe(name=f"{recipe.name}-parent", transforms=parent))
    result = measure_latency(pipe, settings)
    log.info("parent %s: %.2f ms", [t.kind for t in parent], result.median_ms)
    return Scores(latency_ms=result.median_ms, latency_spread_ms=result.spread_ms)


def flag_scores(scores: Scores, parent: Scores | None) -> Scores:
    """`scores` with the quantized-but-not-faster flag set or cleared against `parent`."""
    from compress.transforms.quantize import flag_if_not_faster

    return scores if parent is None else flag_if_not_faster(scores, parent)
