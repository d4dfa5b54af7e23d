"""A trial's latency, paired: its candidate timed against the uncompressed baseline (loaded once
per worker and kept) and, for a quantized candidate, its unquantized parent, in one process."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from compress.evaluate.paired import PairedTiming, paired_latency

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from compress.evaluate import EvalSettings
    from compress.search.isolation import Placement

BASELINE, PARENT = "baseline", "parent"
_REFERENCES: dict[tuple[str, str, str | None], Any] = {}  # this worker's baseline pipelines


def reference_pipe(model: str, device: str, dtype: str | None) -> DiffusionPipeline:
    """The uncompressed model as loaded (artifact replay and call defaults included), once per
    worker process: Ray reuses trial workers, so later trials time against the same object."""
    key = (model, device, dtype)
    if key not in _REFERENCES:
        from compress.artifact import load_model

        _REFERENCES.clear()  # one model per worker: a new run's model replaces the old one
        _REFERENCES[key] = load_model(model, device=device, dtype=dtype)
    return _REFERENCES[key]


def time_trial(
    candidate: DiffusionPipeline,
    parent: DiffusionPipeline | None,
    *,
    model: str,
    dtype: str | None,
    settings: EvalSettings,
    baseline_settings: EvalSettings,
    rounds: int,
    place: Placement,
    log: logging.Logger,
) -> PairedTiming:
    """Candidate vs baseline (and parent) in alternating rounds, on the trial's own cores."""
    from compress.evaluate.run import place as place_on
    from compress.search.isolation import timing_phase

    base = place_on(reference_pipe(model, settings.device, dtype), baseline_settings)
    refs: dict[str, tuple[Any, EvalSettings]] = {BASELINE: (base, baseline_settings)}
    if parent is not None:
        refs[PARENT] = (place_on(parent, settings), settings)
    place_on(candidate, settings)
    with timing_phase(place):
        timing = paired_latency(candidate, refs, settings, rounds=rounds)
    for name, ratio in timing.speedup.items():
        log.info(
            "paired vs %s over %d rounds: %.3fx [%.3f, %.3f] (%.2f ms vs %.2f ms), %s",
            name,
            rounds,
            ratio.median,
            ratio.low,
            ratio.high,
            timing.median_ms(),
            timing.median_ms(name),
            place.describe(),
        )
    return timing
