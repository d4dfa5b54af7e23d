"""The simulation's surrogate: fitted on measured trials, it reproduces them, keeps the
measurements' noise and the quality a rung lacks before the end of training."""

from __future__ import annotations

import pytest

from compress.search.simulate import fit_surrogate


def _trial(n, steps, student, speedup, quality, rungs=()):
    params = {"student": student, "steps": steps} if student == "none" else {"student": student}
    return {
        "number": n,
        "state": "complete",
        "params": params,
        "speedup": speedup,
        "speedup_ci": [speedup * 0.9, speedup * 1.1],
        "quality": quality,
        "rungs": [{"training_fraction": f, "quality": q} for f, q in rungs],
    }


def test_the_surrogate_reproduces_what_it_was_fitted_on():
    records = [
        _trial(i, s, "none", 20 / s, 0.7 - 0.01 * (20 / s)) for i, s in enumerate(range(2, 21, 2))
    ]
    records += [
        _trial(20 + i, None, "trajectory", 8.0, 0.72, rungs=[(0.25, 0.52), (0.5, 0.62)])
        for i in range(4)
    ]
    surrogate = fit_surrogate(records, baseline_quality=0.7)
    latency, quality = surrogate.predict({"student": "trajectory"}, None, seed=0)
    assert 1 / latency == pytest.approx(8.0, rel=0.25) and quality == pytest.approx(0.72, abs=0.05)
    slow, good = surrogate.predict({"student": "none", "steps": 20}, None, seed=0)
    assert slow > latency and good > quality - 0.05
    assert surrogate.rung_gap == pytest.approx({0.25: 0.2, 0.5: 0.1})
    _, early = surrogate.predict({"student": "trajectory"}, 0.25, seed=0)
    assert early == pytest.approx(quality - 0.2, abs=1e-9)  # same seed, same noise
    assert surrogate.noise[0] > 0
    with pytest.raises(ValueError, match="at least 5"):
        fit_surrogate(records[:3], 0.7)
