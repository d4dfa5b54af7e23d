"""The two-level search without a cluster: prefix and suffix knobs, the hypervolume-per-second
rule, and the Ray Tune searcher that follows it."""

from __future__ import annotations

import pytest

from compress.search.allocation import Outcome, choose, gains
from compress.search.ledger import TrialRecord
from compress.search.levels import split_levels
from compress.search.space import load_space, parse_space
from compress.search.space_file import SpaceError
from compress.search.study import CONSTRAINTS, make_sampler
from compress.search.tuning import BudgetLimiter, Limits
from compress.search.twolevel import TwoLevelSearch

SPACE = {
    "name": "two",
    "transforms": {
        "prune_blocks": {"fixed": {"preset": "small"}, "when": {"structure": "blocks"}},
        "distill": {"fixed": {"steps": 10}, "when": {"structure": "blocks"}},
        "cache": {"fixed": {"method": "deepcache"}, "when": {"caching": "on"}},
    },
    "knobs": {
        "structure": {"type": "categorical", "choices": ["none", "blocks"]},
        "distill_lr": {
            "sets": "distill.lr",
            "type": "categorical",
            "choices": [0.001, 0.0001],
            "when": {"structure": "blocks"},
        },
        "scheduler": {"sets": "sampler.scheduler", "type": "categorical", "choices": ["euler"]},
        "steps": {"sets": "sampler.steps", "type": "int", "low": 2, "high": 12, "step": 2},
        "caching": {"type": "categorical", "choices": ["off", "on"]},
        "interval": {
            "sets": "cache.interval",
            "type": "int",
            "low": 2,
            "high": 4,
            "when": {"caching": "on"},
        },
    },
}


def test_knobs_split_into_the_trained_prefix_and_its_cheap_suffix():
    levels = split_levels(parse_space(SPACE))
    assert levels.prefix == ("structure", "distill_lr")
    assert levels.suffix == ("scheduler", "steps", "caching", "interval")
    joint = split_levels(load_space("miniature"))
    assert {"structure", "block_preset", "student", "student_steps", "lora_rank"} <= set(
        joint.prefix
    )
    assert {"steps", "scheduler", "caching", "cache_interval", "quant_up"} <= set(joint.suffix)
    params = {"structure": "none", "steps": 4, "caching": "off"}
    assert levels.prefix_key(params) == levels.prefix_key({**params, "steps": 8})


def test_a_prefix_knob_may_not_depend_on_a_suffix_knob():
    knobs = dict(SPACE["knobs"])
    knobs["distill_lr"] = {**knobs["distill_lr"], "when": {"steps": 4}}
    order = ("structure", "scheduler", "steps", "distill_lr", "caching", "interval")
    bad = {**SPACE, "knobs": {k: knobs[k] for k in order}}
    with pytest.raises(SpaceError, match="distill_lr.*depends on \\['steps'\\]"):
        split_levels(parse_space(bad))


def out(n, prefix, point, seconds=10.0, training=0.0, ready=True):
    return Outcome(n, prefix, point, seconds, training, ready)


def test_gains_are_the_hypervolume_each_point_adds():
    # baseline (1, 0.5); the corner (1, 0.25): half the baseline's quality
    outcomes = [out(0, "a", (0.5, 0.6)), out(1, "a", (0.25, 0.3)), out(2, "b", (0.5, 0.55))]
    g = gains(outcomes, baseline_quality=0.5)
    assert g[0] == pytest.approx(0.5 * 0.35)  # the whole rectangle down to the corner
    assert g[1] == pytest.approx(0.25 * 0.05)  # faster, worse: the strip it adds
    assert g[2] == 0.0  # dominated by trial 0
    assert gains([out(0, "a", (0.2, 0.2))], 0.5) == [0.0]  # below the corner's quality
    assert gains([out(0, "a", None)], 0.5) == [0.0]


def test_cheap_suffixes_are_mined_before_new_training():
    outcomes = [
        out(0, "base", (0.5, 0.6), seconds=10),
        out(1, "student", (0.2, 0.6), seconds=200, training=190),
        out(2, "student", (0.18, 0.61), seconds=10),
    ]
    choice = choose(outcomes, 0.5, remaining_s=1000, training_prior_s=100)
    assert choice.level == "suffix"  # 10 s an evaluation against 190 s of training


def test_no_training_that_the_budget_would_cut_off():
    outcomes = [out(0, "base", (0.5, 0.6), seconds=10)]
    outcomes += [out(i, "base", (0.6, 0.55), seconds=10) for i in range(1, 41)]  # mined out
    choice = choose(outcomes, 0.5, remaining_s=1000, training_prior_s=100)
    assert choice.level == "prefix"  # optimism: a prefix can be worth what this one was
    late = choose(outcomes, 0.5, remaining_s=50, training_prior_s=100)
    assert late.level == "suffix" and late.prefix == "base"


def test_prefixes_whose_trials_gain_nothing_take_turns():
    outcomes = [out(0, "a", (0.5, 0.6), seconds=10), out(1, "b", (0.3, 0.6), seconds=10)]
    outcomes += [out(i, "a", (0.6, 0.55), seconds=10) for i in range(2, 12)]  # a: mined
    outcomes += [out(12, "b", (0.35, 0.55), seconds=10)]
    choice = choose(outcomes, 0.5, remaining_s=10, training_prior_s=100)
    assert choice.level == "suffix" and choice.prefix == "b"  # the less explored one


def test_a_mined_out_prefix_gives_way_to_a_new_one():
    outcomes = [out(0, "a", (0.5, 0.6), seconds=100, training=90)]
    outcomes += [out(i, "a", (0.6, 0.55), seconds=10) for i in range(1, 31)]  # dominated
    outcomes += [out(31, "b", (0.3, 0.6), seconds=100, training=90)]
    outcomes += [out(i, "b", (0.35, 0.55), seconds=10) for i in range(32, 62)]
    choice = choose(outcomes, 0.5, remaining_s=10_000, training_prior_s=100)
    assert choice.level == "prefix"
    assert choose([], 0.5, remaining_s=None, training_prior_s=100).level == "prefix"
    stopped = [out(0, "a", None, seconds=50, training=40, ready=False)]
    assert choose(stopped, 0.5, remaining_s=10, training_prior_s=100).level == "prefix"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def searcher(records=(), queue=None, clock=None, limits=None, deadline=None):
    space = parse_space(SPACE)
    return TwoLevelSearch(
        space,
        split_levels(space),
        make_sampler=lambda i, prefix: make_sampler("tpe", 20, i),
        records=list(records),
        baseline_quality=0.5,
        limits=limits or Limits(),
        queue=queue,
        deadline=deadline,
        training_prior_s=100.0,
        clock=clock or Clock(),
    )


def result(latency, quality, low=1.5, training=0.0, fraction=None, stage=2):
    return {
        "stage": stage,
        "relative_latency": latency,
        "quality": quality,
        "speedup_ci": [low, low + 1.0] if low is not None else None,
        "latency_ms": 10 * latency,
        "training_fraction": fraction,
        "cache": {"misses": [{"seconds": training}] if training else []},
    }


def test_start_points_first_then_suffixes_on_the_trained_prefix():
    clock = Clock()
    start = {"structure": "blocks", "distill_lr": 0.001, "scheduler": "euler", "steps": 12}
    s = searcher(queue=[({**start, "caching": "off"}, "start")], clock=clock)
    first = s.suggest("a")
    assert first["origin"] == "start" and first["number"] == 0
    clock.now = 200.0  # it trained
    s.on_trial_complete("a", result(0.4, 0.6, training=190.0, fraction=1.0))
    clock.now = 300.0  # plenty of time: the trained prefix's suffixes are cheap and it gained
    second = s.suggest("b")
    assert second["origin"] in ("suffix", "prefix")
    if second["origin"] == "suffix":
        assert second["structure"] == "blocks" and second["distill_lr"] == 0.001
    assert second != first


def test_suffix_trials_stay_on_their_prefix_and_tell_both_studies():
    clock = Clock()
    prefix = {"structure": "blocks", "distill_lr": 0.0001}
    records = [
        TrialRecord(
            number=4,
            state="complete",
            params={**prefix, "scheduler": "euler", "steps": 4, "caching": "off"},
            speedup=3.0,
            speedup_ci=[2.5, 3.5],
            latency_ms=5.0,
            quality=0.6,
            cache={"misses": [{"seconds": 300.0}]},
            times={"wall": 320.0},
        ),
        TrialRecord(
            number=5,
            state="complete",
            params={"structure": "none", "scheduler": "euler", "steps": 2, "caching": "off"},
            speedup=4.0,
            speedup_ci=[3.5, 4.5],
            latency_ms=4.0,
            quality=0.55,
            times={"wall": 12.0},
        ),
    ]
    s = searcher(records, clock=clock, deadline=200.0)  # too little time left to train
    configs = []
    for i in range(6):
        c = s.suggest(f"t{i}")
        configs.append(c)
        s.on_trial_complete(f"t{i}", result(0.3, 0.58))
    assert [c["number"] for c in configs] == list(range(6, 12))  # numbering continues
    assert all(c["origin"] == "suffix" for c in configs)
    for c in configs:  # each on one of the two trained prefixes
        assert {k: c.get(k) for k in ("structure", "distill_lr")} in (
            prefix,
            {"structure": "none", "distill_lr": None},
        )
    prefix_study = s._studies["prefix"]
    assert len([t for t in prefix_study.trials if t.state.name == "COMPLETE"]) == 8


def test_invalid_combinations_and_failures_are_marked_and_constraints_told():
    space = {**SPACE, "knobs": {**SPACE["knobs"]}}
    s = searcher(limits=Limits(max_latency=2.0))
    c = s.suggest("a")
    s.on_trial_complete("a", result(0.5, 0.6))  # latency_ms 5 > 2: infeasible
    told = [t for st in s._studies.values() for t in st.trials if t.state.name == "COMPLETE"]
    assert told and all(t.user_attrs[CONSTRAINTS] == [3.0, 0.0, 0.0] for t in told)
    s.suggest("b")
    s.on_trial_complete("b", error=True)
    assert s.outcomes[-1].point is None and not s.outcomes[-1].ready
    assert "invalid" not in c
    limited = BudgetLimiter(searcher(), max_concurrent=2, deadline=0.0)  # the budget is spent
    assert limited.suggest("z") == BudgetLimiter.FINISHED
    del space


FINISHED = {
    **SPACE,
    "transforms": {**SPACE["transforms"], "compile": {"when": {"compiled": True}}},
    "knobs": {
        **SPACE["knobs"],
        "compiled": {"type": "categorical", "choices": [False, True]},
        "mode": {
            "sets": "compile.mode",
            "type": "categorical",
            "choices": ["default", "max-autotune-no-cudagraphs"],
            "when": {"compiled": True},
        },
    },
}


def test_compile_is_tried_only_on_candidates_it_could_bring_onto_the_front():
    space = parse_space(FINISHED)
    levels = split_levels(space)
    assert levels.finish == ("compiled", "mode") and dict(levels.off) == {"compiled": False}
    assert "compiled" not in levels.suffix and "compiled" not in levels.prefix
    s = TwoLevelSearch(
        space,
        levels,
        make_sampler=lambda i, prefix: make_sampler("tpe", 20, i),
        records=[],
        baseline_quality=0.5,
        limits=Limits(),
        deadline=1000.0,
        clock=Clock(),
    )
    proposed = [s.suggest(f"t{i}") for i in range(3)]
    assert all(c["compiled"] is False and "mode" not in c for c in proposed)  # samplers: off
    s.on_trial_complete("t0", result(0.3, 0.6))  # on the front: its compiled variant queued
    finish = s.suggest("f0")
    assert finish["origin"] == "finish" and finish["compiled"] is True and "mode" in finish
    assert {
        k: v
        for k, v in finish.items()
        if k not in ("number", "origin", "why", "parent", "compiled", "mode")
    } == {k: v for k, v in proposed[0].items() if k not in ("number", "origin", "why", "compiled")}
    assert finish["parent"] == proposed[0]["number"] == 0  # whose candidate it finishes
    assert "trial 0's candidate" in finish["why"]
    s._clock.now = 100.0  # the compile took 100 s
    s.on_trial_complete("f0", result(0.25, 0.6))  # recorded as a finishing trial
    assert s._records[-1].origin == "finish" and s.outcomes[-1].point == (0.25, 0.6)
    # t1 dominated even at half its latency (0.8 * 0.5 = 0.4 > 0.3, 0.55 < 0.6): not compiled
    s.on_trial_complete("t1", result(0.8, 0.55))
    assert s.suggest("n")["origin"] != "finish"
    s.on_trial_complete("t2", result(0.5, 0.7))  # better quality: could join the front
    s.on_trial_complete("n", result(0.9, 0.4))
    s._clock.now = 950.0  # too late for a compile like the one that ran

    assert s.suggest("late")["origin"] != "finish"


def test_a_repeated_suffix_is_asked_again_before_a_neighbour_is_drawn():
    start = {"structure": "none", "scheduler": "euler", "steps": 4, "caching": "off"}
    done = TrialRecord(
        number=0,
        state="complete",
        params=start,
        speedup=3.0,
        speedup_ci=[2.5, 3.5],
        latency_ms=3.0,
        quality=0.6,
        origin="start",
        times={"wall": 10.0},
    )
    s = searcher([done], deadline=100.0)  # no time to train: a suffix on the known prefix
    study = s._study(s._levels.prefix_key(start))
    study.enqueue_trial({"scheduler": "euler", "steps": 4, "caching": "off"})  # a repeat
    study.enqueue_trial({"scheduler": "euler", "steps": 8, "caching": "off"})
    c = s.suggest("a")
    assert c["origin"] == "suffix" and c["steps"] == 8 and c["caching"] == "off"
    assert c["why"].endswith("proposed by its sampler")
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert [t.params["steps"] for t in failed] == [4]  # the repeat, told failed


def test_a_finished_candidate_is_credited_to_whoever_proposed_its_parent():
    from compress.search.results import proposed_by

    suffix = TrialRecord(
        number=3,
        state="complete",
        origin="suffix",
        why="suffix at 0.1 HV/s; proposed by its sampler",
    )
    finish = TrialRecord(number=7, state="complete", origin="finish", parent=3)
    start = TrialRecord(number=0, state="complete", origin="start")
    records = {r.number: r for r in (suffix, finish, start)}
    assert proposed_by(finish, records) == "suffix: its sampler; finished (trial 3)"
    assert proposed_by(start, records) == "a start point"
