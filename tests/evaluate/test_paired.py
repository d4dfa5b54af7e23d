"""Paired timing: alternating rounds in one process, median ratio with its 95% interval."""

from __future__ import annotations

import pytest

from compress.errors import CompressError
from compress.evaluate.paired import CANDIDATE, median_interval, paired_latency
from compress.evaluate.settings import EvalSettings


def test_interval_is_the_order_statistics_that_bracket_the_median() -> None:
    values = [0.9, 1.0, 1.1, 1.05, 0.95, 1.2, 0.85, 1.0, 1.02, 0.98]
    r = median_interval(values)
    assert r.median == pytest.approx(1.0)
    assert (r.low, r.high) == (0.9, 1.1)  # x(2) and x(9) of 10: 97.9% by the binomial
    assert r.low < 1.0 < r.high and not r.above_one
    assert median_interval([2.0, 2.1, 1.9, 2.05, 1.95, 2.0]).above_one  # [min, max] of 6
    with pytest.raises(CompressError, match="no rounds"):
        median_interval([])


def test_interval_covers_the_median_at_least_as_often_as_it_says() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    for n in (6, 10, 16):
        draws = rng.lognormal(0.0, 0.05, size=(2000, n))  # true median 1
        hits = [r.low <= 1.0 <= r.high for r in map(median_interval, draws.tolist())]
        assert np.mean(hits) >= 0.95


def test_rounds_alternate_their_order(monkeypatch, tiny_pipe) -> None:
    from compress.evaluate import latency

    order: list[int] = []
    monkeypatch.setattr(
        latency.Runner, "run", lambda self: (order.append(id(self.pipe)) or 1.0, {"denoiser": 1.0})
    )
    import copy

    ref = copy.deepcopy(tiny_pipe)
    s = EvalSettings(warmup=0, resolution=16, steps=1, threads=1)
    out = paired_latency(tiny_pipe, {"base": (ref, s)}, s, rounds=4)
    a, b = id(ref), id(tiny_pipe)
    assert order == [a, b, b, a, a, b, b, a]  # A B, B A, A B, B A: neither always goes first
    assert out.speedup["base"].median == pytest.approx(1.0) and len(out.runs_ms[CANDIDATE]) == 4


def test_a_candidate_with_fewer_steps_is_faster_with_an_interval_above_one(tiny_pipe) -> None:
    import copy

    ref = copy.deepcopy(tiny_pipe)
    cand = EvalSettings(warmup=1, resolution=16, steps=1, guidance_scale=1.0, threads=1)
    base = cand.model_copy(update={"steps": 12, "guidance_scale": 7.5})
    out = paired_latency(tiny_pipe, {"baseline": (ref, base)}, cand, rounds=6)
    ratio = out.speedup["baseline"]
    assert ratio.above_one and ratio.median > 3
    assert out.calls_per_run[CANDIDATE]["denoiser"] == 1
    assert out.calls_per_run["baseline"]["denoiser"] == 12
    assert out.settings["baseline"]["steps"] == 12 and out.settings[CANDIDATE]["steps"] == 1
    assert out.component_ratio["baseline"]["denoiser"].high < 1  # its denoiser time, paired
    with pytest.raises(CompressError, match="at least 2 rounds"):
        paired_latency(tiny_pipe, {"baseline": (ref, base)}, cand, rounds=1)
