"""Scoring a candidate's quality in stages: a prompt subset first, then the rest of the fixed
prompt set. (Its latency is timed apart, paired against the baseline: `compress.search.pairing`.)"""

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
    latency = score.latency_ms if score.latency_ms is not None else 0.0
    if not (math.isfinite(latency) and math.isfinite(score.quality)):
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
    """Quality on the first `settings.num_prompts` prompts of the metric's set (untimed)."""
    from compress.evaluate import evaluate

    n = settings.num_prompts
    t0 = time.perf_counter()
    refs = refs[:n] if refs and n else refs
    metric = metric_for(settings, options)
    score = evaluate(pipe, settings, reference_images=refs, metric=metric, timed=False)
    log.info(
        "%s: quality %.4f (%s) on %d prompts in %.2f s; %s",
        what,
        score.quality,
        score.quality_metric,
        len(score.prompts),
        time.perf_counter() - t0,
        score.peak_memory,
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
    from compress.evaluate.memory import sampling_peak

    t0 = time.perf_counter()
    metric = metric_for(full, options)
    prompts, seeds = metric.prompts(full.num_prompts)
    seeds = [s + full.seed for s in seeds]  # as evaluate() offsets the metric's fixed seeds
    k = len(first.images)
    if prompts[:k] != first.prompts or seeds[:k] != first.seeds:
        raise TrialFailed("stage 1 did not score the first prompts of the full set")
    with sampling_peak(pipe, full.device) as memory:  # the same batch size as stage 1's
        images = first.images + generate_images(pipe, prompts[k:], seeds[k:], full)
    peaks = [m for m in (first.peak_memory_mb, memory.mb) if m is not None]
    quality, parts = metric.score(images, prompts, reference_images=refs)
    score = first.model_copy(
        update={
            "quality": quality,
            "quality_parts": parts,
            "settings": {**first.settings, "num_prompts": len(prompts)},
            "prompts": prompts,
            "seeds": seeds,
            "images": images,
            "peak_memory_mb": max(peaks) if peaks else None,
        }
    )
    log.info(
        "full set: quality %.4f on %d prompts in %.2f s",
        quality,
        len(prompts),
        time.perf_counter() - t0,
    )
    check_finite(score, "stage 2")
    return score
