"""Pareto front and hypervolume over the search's objectives: relative latency (minimised),
quality (maximised) and, where a space adds it, peak memory (minimised; every objective after
the second is).

Optuna computes fronts and hypervolumes only through private modules (`optuna._hypervolume`),
so they are written here: two objectives by one sort and one sweep; a third by slicing along it
(each slab adds the two-objective hypervolume of the points at or below it, times its depth).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Point = tuple[float, ...]  # (relative latency, quality[, peak memory MiB])


def _finite(p: Point) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in p)


def _no_worse(a: Point, b: Point) -> bool:
    """a is no slower, no worse in quality and, past the second, no larger than b."""
    return a[0] <= b[0] and a[1] >= b[1] and all(x <= y for x, y in zip(a[2:], b[2:], strict=True))


def dominates(a: Point, b: Point) -> bool:
    """a is no worse than b in every objective, and strictly better in one of them."""
    return _no_worse(a, b) and tuple(a) != tuple(b)


def pareto_front(points: Sequence[Point]) -> list[int]:
    """Indices of the non-dominated points, fastest first (equal points keep the first)."""
    # In this order a point can only be dominated (or equalled) by one before it.
    order = sorted(
        (i for i, p in enumerate(points) if _finite(p)),
        key=lambda i: (points[i][0], -points[i][1], *points[i][2:], i),
    )
    front: list[int] = []
    for i in order:
        if not any(_no_worse(points[j], points[i]) for j in front):
            front.append(i)
    return front


def hypervolume(points: Sequence[Point], reference: Point) -> float:
    """Volume dominated by `points` and bounded by `reference` (a slow, low-quality corner, and
    a large memory where memory is an objective)."""
    if len(reference) > 2:
        return _sliced(points, reference)
    ref_latency, ref_quality = reference
    inside = [p for p in points if _finite(p) and p[0] < ref_latency and p[1] > ref_quality]
    area = 0.0
    best_quality = ref_quality
    # Sweep from the fastest point: each adds the strip of quality it lifts above the best so far.
    for latency, quality, *_ in sorted(inside, key=lambda p: (p[0], -p[1])):
        if quality > best_quality:
            area += (ref_latency - latency) * (quality - best_quality)
            best_quality = quality
    return area


def _sliced(points: Sequence[Point], reference: Point) -> float:
    """Hypervolume along the last (minimised) objective: between two consecutive values of it,
    the points at or below the lower one dominate their lower-dimensional hypervolume."""
    ref = reference[-1]
    inside = [p for p in points if _finite(p) and len(p) == len(reference) and p[-1] < ref]
    levels = sorted({p[-1] for p in inside})
    volume = 0.0
    for k, level in enumerate(levels):
        top = levels[k + 1] if k + 1 < len(levels) else ref
        below = [p[:-1] for p in inside if p[-1] <= level]
        volume += hypervolume(below, reference[:-1]) * (top - level)
    return volume


def clearly_dominated(
    candidate: Point,
    front: Sequence[Point],
    *,
    quality_margin: float = 0.0,
    latency_tolerance: float = 0.05,
) -> bool:
    """True when a front point is at least `quality_margin` better in quality, at most
    `latency_tolerance` (a fraction) slower and no larger in any further objective (memory):
    the candidate is not worth a full evaluation."""
    lat, qual = candidate[0], candidate[1]
    if not _finite(candidate):
        return False
    return any(
        p[0] <= lat * (1 + latency_tolerance)
        and p[1] >= qual + quality_margin
        and all(x <= y for x, y in zip(p[2:], candidate[2:], strict=True))
        and (p[0] < lat or p[1] > qual)
        for p in front
        if _finite(p)
    )
