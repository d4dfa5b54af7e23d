"""Peak memory in the search without a cluster: --max-memory as a constraint, memory as a third
objective of the studies, the front and the hypervolume."""

from __future__ import annotations

import random

import pytest
from ray.tune.schedulers import TrialScheduler

from compress.search.ledger import TrialRecord
from compress.search.levels import split_levels
from compress.search.pareto import clearly_dominated, dominates, hypervolume, pareto_front
from compress.search.results import front_records, reference_point
from compress.search.space import parse_space
from compress.search.space_file import SpaceError
from compress.search.study import CONSTRAINTS, constraint_values, make_sampler
from compress.search.tuning import Limits, RungScheduler, rung_points
from compress.search.twolevel import TwoLevelSearch

SPACE = {
    "name": "m",
    "objectives": ["latency", "quality", "memory"],
    "knobs": {
        "scheduler": {"sets": "sampler.scheduler", "type": "categorical", "choices": ["euler"]},
        "steps": {"sets": "sampler.steps", "type": "int", "low": 1, "high": 8},
    },
}


def test_max_memory_is_a_constraint_next_to_latency_and_quality():
    limits = Limits(max_latency=10.0, min_quality=0.5, max_memory=100.0)
    assert limits.violations(12.0, 0.7, 130.0) == pytest.approx(
        {"max_latency": 2.0, "min_quality": -0.2, "max_memory": 30.0}
    )
    assert limits.violations(12.0, 0.7) == pytest.approx({"max_latency": 2.0, "min_quality": -0.2})
    assert Limits(max_memory=100.0).violations(None, None, 80.0) == {"max_memory": -20.0}
    # Optuna's constraints: one fixed-length vector, memory last
    assert constraint_values({"max_memory": 30.0}) == [0.0, 0.0, 30.0]
    assert constraint_values(limits.violations(12.0, 0.7, 90.0)) == pytest.approx(
        [2.0, -0.2, -10.0]
    )
    over = TrialRecord(number=0, state="complete", constraints={"max_memory": 30.0})
    assert not over.feasible


def rung(rel, quality, memory, fraction=None):
    return {
        "stage": 1,
        "training_fraction": fraction,
        "relative_latency": rel,
        "quality": quality,
        "speedup_ci": [1.5, 2.5],
        "latency_ms": 10.0,
        "peak_memory_mb": memory,
    }


def test_rungs_stop_what_breaks_max_memory_and_compare_memory_as_an_objective():
    stop, go = TrialScheduler.STOP, TrialScheduler.CONTINUE
    plain = RungScheduler({}, Limits(max_memory=100.0), quality_margin=0, latency_tolerance=0)
    assert plain.on_trial_result(None, None, rung(0.5, 0.9, 120.0)) == stop
    assert plain.on_trial_result(None, None, rung(0.5, 0.9, 80.0)) == go
    # Memory as an objective: a slower, worse candidate that needs less memory goes on.
    three = RungScheduler(
        {1.0: [(0.2, 0.8, 50.0)]}, Limits(), quality_margin=0, latency_tolerance=0, memory=True
    )
    assert three.on_trial_result(None, None, rung(0.3, 0.7, 40.0)) == go
    assert three.on_trial_result(None, None, rung(0.3, 0.7, 60.0)) == stop
    record = TrialRecord(
        number=0, state="stopped", speedup=4.0, speedup_ci=[3.5, 4.5], quality=0.3,
        rungs=[{"training_fraction": 0.25, "relative_latency": 0.25, "quality": 0.3,
                "peak_memory_mb": 12.0}],
    )  # fmt: skip
    assert rung_points([record], memory=True) == {0.25: [(0.25, 0.3, 12.0)]}
    assert rung_points([record]) == {0.25: [(0.25, 0.3)]}


def test_three_objective_front_and_hypervolume():
    assert dominates((1.0, 0.5, 2.0), (1.0, 0.5, 3.0)) and not dominates(
        (1.0, 0.5, 3.0), (2, 0.4, 2)
    )
    pts = [(1.0, 0.5, 4.0), (2.0, 0.4, 1.0), (2.0, 0.4, 5.0), (1.0, 0.5, 4.0)]
    assert pareto_front(pts) == [0, 1]  # the third is dominated, the fourth repeats the first
    assert pareto_front([p[:2] for p in pts]) == [0]  # without memory the second is dominated
    # slabs along memory: [2, 4) holds (1, 0.5) alone (9 x 0.5), [4, 10) both (6.9), by hand
    assert hypervolume([(1.0, 0.5, 2.0), (2.0, 0.8, 4.0)], (10.0, 0.0, 10.0)) == pytest.approx(
        4.5 * 2 + 6.9 * 6
    )
    assert hypervolume([(1.0, 0.5, 12.0)], (10.0, 0.0, 10.0)) == 0.0  # beyond the corner
    assert not clearly_dominated((0.3, 0.7, 40.0), [(0.2, 0.8, 50.0)])
    assert clearly_dominated((0.3, 0.7, 60.0), [(0.2, 0.8, 50.0)])


def test_three_objective_hypervolume_agrees_with_optuna():
    hv = pytest.importorskip("optuna._hypervolume")  # Optuna's own (private) implementation
    import numpy as np

    rng = random.Random(0)
    for _ in range(5):
        pts = [(rng.random(), rng.random(), rng.random() * 10) for _ in range(12)]
        ref = (1.0, 0.0, 10.0)
        minimised = np.array([[p[0], -p[1], p[2]] for p in pts])
        front = minimised[[i for i in pareto_front(pts)]]
        expected = hv.compute_hypervolume(front, np.array([ref[0], -ref[1], ref[2]]))
        assert hypervolume(pts, ref) == pytest.approx(expected)


def test_a_space_may_add_memory_as_the_third_objective():
    sp = parse_space(SPACE)
    assert sp.spec.objectives == ["latency", "quality", "memory"] and sp.spec.minimises_memory
    assert not parse_space({**SPACE, "objectives": ["latency", "quality"]}).spec.minimises_memory
    assert not parse_space(
        {k: v for k, v in SPACE.items() if k != "objectives"}
    ).spec.minimises_memory
    for bad in (["quality", "memory"], ["latency", "quality", "memory", "memory"], ["speed"]):
        with pytest.raises(SpaceError, match="objectives"):
            parse_space({**SPACE, "objectives": bad})


def result(latency, quality, memory):
    return {
        "stage": 2,
        "relative_latency": latency,
        "quality": quality,
        "speedup_ci": [1.5, 2.5],
        "latency_ms": 10 * latency,
        "peak_memory_mb": memory,
    }


def test_the_studies_minimise_memory_as_a_third_direction():
    space = parse_space(SPACE)
    s = TwoLevelSearch(
        space,
        split_levels(space),
        make_sampler=lambda i, prefix: make_sampler("tpe", 10, i),
        records=[],
        baseline_quality=0.5,
        limits=Limits(max_memory=100.0),
    )
    s.suggest("a")
    s.on_trial_complete("a", result(0.5, 0.6, 120.0))
    studies = list(s._studies.values())
    assert studies and all(len(st.directions) == 3 for st in studies)
    told = [t for st in studies for t in st.trials if t.state.name == "COMPLETE"]
    assert told and all(t.values == [0.5, 0.6, 120.0] for t in told)
    assert all(t.user_attrs[CONSTRAINTS] == [0.0, 0.0, 20.0] for t in told)  # over the limit
    assert s.outcomes[-1].point is None  # infeasible: adds nothing to the front
    s.suggest("b")
    s.on_trial_complete("b", result(0.5, 0.6, None))  # memory not measured: no values to tell
    assert len([t for st in studies for t in st.trials if t.state.name == "COMPLETE"]) == 2


def record(n, speedup, quality, memory):
    return TrialRecord(
        number=n, state="complete", speedup=speedup, speedup_ci=[speedup * 0.9, speedup * 1.1],
        quality=quality, peak_memory_mb=memory,
    )  # fmt: skip


def test_the_front_keeps_a_slower_candidate_that_needs_less_memory():
    fast, lean = record(0, 4.0, 0.8, 50.0), record(1, 2.0, 0.7, 20.0)
    baseline = {"quality": 0.9, "scores": {"peak_memory_mb": 60.0}}
    assert front_records([fast, lean], baseline) == [fast]
    assert front_records([fast, lean], baseline, memory=True) == [fast, lean]
    assert reference_point([fast, lean], baseline, memory=True) == (1.0, 0.7, 60.0)
    unmeasured = record(2, 3.0, 0.9, None)  # no peak: never on a front that trades memory
    assert unmeasured not in front_records([fast, unmeasured], baseline, memory=True)
