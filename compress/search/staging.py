"""Scoring a candidate in stages: a prompt subset first, then the rest of the fixed prompt set."""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

from compress.errors import CompressError

if TYPE_CHECKING:
    from compress.evaluate import EvalSettings, Score


class TrialFailed(CompressError):
    """A candidate could not be evaluated (bad recipe, NaN output, out of memory...)."""


def check_finite(score: Score, what: str) -> None:
    if not (math.isfinite(score.latency_ms) and math.isfinite(score.quality)):
        raise TrialFailed(
            f"{what} gave non-finite scores (latency {score.latency_ms} ms, "
            f"quality {score.quality}): the candidate produces NaN or inf outputs"
        )


def metric_for(settings: EvalSettings, options: dict[str, Any]) -> Any:
    """The settings' metric, built with its options (weights, prompts) and cached per process."""
    from compress.evaluate.quality import get_metric

    return get_metric(settings.metric, device=settings.device, **options)


def evaluate_stage(
    pipe: Any,
    settings: EvalSettings,
    refs: list[Any] | None,
    log: logging.Logger,
    what: str,
    options: dict[str, Any],
) -> Score:
    """Latency and quality on the first `settings.num_prompts` prompts of the metric's set."""
    from compress.evaluate import evaluate

    n = settings.num_prompts
    t0 = time.perf_counter()
    refs = refs[:n] if refs and n else refs
    score = evaluate(pipe, settings, reference_images=refs, metric=metric_for(settings, options))
    log.info(
        "%s: latency %.2f ms, quality %.4f (%s) in %.2f s",
        what,
        score.latency_ms,
        score.quality,
        score.quality_metric,
        time.perf_counter() - t0,
    )
    check_finite(score, what)
    return score


def extend(
    pipe: Any,
    first: Score,
    full: EvalSettings,
    refs: list[Any] | None,
    log: logging.Logger,
    options: dict[str, Any],
) -> Score:
    """The full-set score of the pipeline stage 1 measured: its latency and first images are
    reused (same pipeline, prompts and seeds), only the remaining prompts are generated."""
    from compress.evaluate import generate_images

    t0 = time.perf_counter()
    metric = metric_for(full, options)
    prompts, seeds = metric.prompts(full.num_prompts)
    seeds = [s + full.seed for s in seeds]  # as evaluate() offsets the metric's fixed seeds
    k = len(first.images)
    if prompts[:k] != first.prompts or seeds[:k] != first.seeds:
        raise TrialFailed("stage 1 did not score the first prompts of the full set")
    images = first.images + generate_images(pipe, prompts[k:], seeds[k:], full)
    quality, parts = metric.score(images, prompts, reference_images=refs)
    score = first.model_copy(
        update={
            "quality": quality,
            "quality_parts": parts,
            "settings": {**first.settings, "num_prompts": len(prompts)},
            "prompts": prompts,
            "seeds": seeds,
            "images": images,
        }
    )
    log.info(
        "stage 2: quality %.4f on %d prompts (stage-1 latency kept) in %.2f s",
        quality,
        len(prompts),
        time.perf_counter() - t0,
    )
    check_finite(score, "stage 2")
    return score
