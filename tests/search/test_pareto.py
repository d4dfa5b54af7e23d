"""Pareto front, hypervolume and the staged-evaluation dominance test."""

from __future__ import annotations

import math

import pytest

from compress.search.pareto import clearly_dominated, dominates, hypervolume, pareto_front


def test_front_keeps_non_dominated_points_fastest_first():
    pts = [(10.0, 0.5), (5.0, 0.4), (20.0, 0.9), (12.0, 0.45), (5.0, 0.3), (float("nan"), 1.0)]
    assert pareto_front(pts) == [1, 0, 2]
    assert dominates((5.0, 0.4), (5.0, 0.3)) and not dominates((5.0, 0.4), (5.0, 0.4))
    assert pareto_front([]) == []


def test_hypervolume_matches_the_area_by_hand():
    # Union of [1,10]x[0,0.5] and [2,10]x[0,0.8]: 9*0.5 + 8*0.3
    assert hypervolume([(1.0, 0.5), (2.0, 0.8)], (10.0, 0.0)) == pytest.approx(6.9)
    # Dominated and out-of-reference points add nothing.
    assert hypervolume(
        [(1.0, 0.5), (2.0, 0.8), (3.0, 0.7), (11.0, 1.0), (2.0, -1.0)], (10.0, 0.0)
    ) == pytest.approx(6.9)
    assert hypervolume([], (10.0, 0.0)) == 0.0
    assert not math.isnan(hypervolume([(float("nan"), 1.0)], (10.0, 0.0)))


def test_clearly_dominated_needs_the_margin():
    front = [(10.0, 0.8)]
    assert clearly_dominated((10.0, 0.7), front, quality_margin=0.05)
    assert not clearly_dominated((10.0, 0.78), front, quality_margin=0.05)  # within the margin
    assert clearly_dominated((9.8, 0.7), front, quality_margin=0.05, latency_tolerance=0.05)
    assert not clearly_dominated((8.0, 0.7), front, quality_margin=0.05)  # much faster
    assert not clearly_dominated((10.0, 0.9), front)
    assert not clearly_dominated((float("nan"), 0.1), front)
