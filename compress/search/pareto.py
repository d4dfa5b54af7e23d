"""Pareto front and hypervolume for two objectives: latency (minimised), quality (maximised).

Optuna computes fronts and hypervolumes only through private modules (`optuna._hypervolume`),
so the two-objective cases are written here: each is one sort and one sweep.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Point = tuple[float, float]  # (latency_ms, quality)


def _finite(p: Point) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in p)


def dominates(a: Point, b: Point) -> bool:
    """a is no slower and no worse than b, and strictly better in one of them."""
    return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])


def pareto_front(points: Sequence[Point]) -> list[int]:
    """Indices of the non-dominated points, fastest first (ties on both keep the first)."""
    order = sorted(
        (i for i, p in enumerate(points) if _finite(p)),
        key=lambda i: (points[i][0], -points[i][1], i),
    )
    front: list[int] = []
    best_quality = -math.inf
    for i in order:
        if points[i][1] > best_quality:
            front.append(i)
            best_quality = points[i][1]
    return front


def hypervolume(points: Sequence[Point], reference: Point) -> float:
    """Area dominated by `points` and bounded by `reference` (a slow, low-quality corner)."""
    ref_latency, ref_quality = reference
    inside = [p for p in points if _finite(p) and p[0] < ref_latency and p[1] > ref_quality]
    area = 0.0
    best_quality = ref_quality
    # Sweep from the fastest point: each adds the strip of quality it lifts above the best so far.
    for latency, quality in sorted(inside, key=lambda p: (p[0], -p[1])):
        if quality > best_quality:
            area += (ref_latency - latency) * (quality - best_quality)
            best_quality = quality
    return area


def clearly_dominated(
    candidate: Point,
    front: Sequence[Point],
    *,
    quality_margin: float = 0.0,
    latency_tolerance: float = 0.05,
) -> bool:
    """True when a front point is at least `quality_margin` better in quality and at most
    `latency_tolerance` (a fraction) slower: the candidate is not worth a full evaluation."""
    lat, qual = candidate
    if not _finite(candidate):
        return False
    return any(
        p[0] <= lat * (1 + latency_tolerance)
        and p[1] >= qual + quality_margin
        and (p[0] < lat or p[1] > qual)
        for p in front
        if _finite(p)
    )
