"""Evaluation: latency measured on the target device and named, versioned quality metrics."""

from __future__ import annotations

from compress.evaluate.latency import measure_latency
from compress.evaluate.run import evaluate, generate_images, place, reference_images
from compress.evaluate.settings import METRICS, EvalSettings, LatencyResult, Score

__all__ = [
    "METRICS",
    "EvalSettings",
    "LatencyResult",
    "Score",
    "evaluate",
    "generate_images",
    "measure_latency",
    "place",
    "reference_images",
]
