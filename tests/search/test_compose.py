"""Compositions: the unions of faster start points, run between the start points and TPE."""

from __future__ import annotations

import contextlib
import json

from optuna.trial import FixedTrial

from compress.search.compose import compositions
from compress.search.config import resolve_config
from compress.search.ledger import TrialRecord, write_record
from compress.search.space import load_space


def _record(number, params, speedup, low=None, training=False, state="complete"):
    ci = [low if low is not None else speedup * 0.9, speedup * 1.1]
    return TrialRecord(number=number, state=state, params=params, speedup=speedup,
                       speedup_ci=ci, training=training)  # fmt: skip


def test_compositions_merge_faster_candidates_cheapest_first():
    space = load_space("miniature")
    unipc, student = space.spec.search.start
    student = {**student, "student_steps": 4}
    blocks = {"structure": "blocks", "block_preset": "small", "student": "none",
              "precision": "full", "scheduler": "dpmsolver++", "steps": 20,
              "guidance_scale": 4.0, "caching": "none", "compiled": False}  # fmt: skip
    cached = {**unipc, "scheduler": "dpmsolver++", "steps": 20, "guidance_scale": 4.0,
              "caching": "deepcache", "cache_interval": 3, "cache_branch": 1,
              "cache_schedule": "uniform"}  # fmt: skip
    records = [
        _record(0, unipc, 4.4),
        _record(1, cached, 1.8),
        _record(2, blocks, 1.7, training=True, state="stopped"),
        _record(3, student, 7.3, training=True),
        _record(4, {**unipc, "steps": 20}, 0.99, low=0.9),  # not faster: no ingredient
    ]
    out = compositions(space, records)
    kinds = [{t.kind for t in space.suggest(FixedTrial(p, number=0)).transforms} for p in out]
    # the pruned UNet (cached) under the 4-step sampler: structure + training + sampler
    both = {**blocks, "scheduler": "unipc", "steps": 4, "guidance_scale": 3.0}
    assert both in out and kinds[out.index(both)] == {"prune_blocks", "distill", "sampler"}
    # the student with DeepCache: the switch the cached candidate turned on wins
    assert {**student, "caching": "deepcache", "cache_interval": 3, "cache_branch": 1,
            "cache_schedule": "uniform"} in out  # fmt: skip
    # both train -> last; a union equal to a trial already run (student + sampler) -> absent
    assert kinds[-1] == {"prune_blocks", "distill", "distill_steps"}
    assert student not in out and all(p != r.params for p in out for r in records)
    assert all(k != kinds[-1] for k in kinds[:-1])
    assert not any(p.get("steps") == 20 and p.get("scheduler") == "unipc" for p in out)
    for p in out:  # every union is a valid point of the space
        space._check_start(0, p)


def _offline(monkeypatch, tune) -> None:
    """The runner without Ray, baseline or report: `tune` stands in for the Tuner."""
    from compress.search import baseline, results, runner

    monkeypatch.setattr(runner, "_tune", tune)
    monkeypatch.setattr(runner, "ray_session", lambda *a: contextlib.nullcontext())
    monkeypatch.setattr(runner, "check_cluster", lambda res: None)
    monkeypatch.setattr(baseline, "ensure_baseline", lambda *a: {"quality": 0.7})
    monkeypatch.setattr(results, "finalize", lambda run: {"run": run.name})


def test_one_tuner_runs_the_whole_search_from_the_start_points(tmp_path, monkeypatch):
    from compress.search import runner

    calls: list[tuple[int, list]] = []

    def tune(cfg, space, session, **options):
        calls.append((session.remaining, session.queue))
        write_record(session.run, _record(0, session.queue[0][0], 4.4))  # one finished, Ctrl-C

    _offline(monkeypatch, tune)
    cfg, space = resolve_config("miniature", out=str(tmp_path / "run"), trials=12)
    runner.run_search(cfg, space)
    start = space.spec.search.start
    assert calls == [(12, [(p, "start") for p in start])]
    assert json.loads((cfg.run / "timings.json").read_text())[-1]["trials"] == 1
    calls.clear()
    runner.run_search(cfg, space, resume=True)  # the finished start point is not run again
    assert calls == [(11, [(p, "start") for p in start[1:]])]


def _result(speedup, training=False):
    return {
        "stage": 2,
        "relative_latency": 1 / speedup,
        "quality": 0.6,
        "speedup": speedup,
        "speedup_ci": [speedup * 0.9, speedup * 1.1],
        "training": training,
        "training_fraction": 1.0 if training else None,
    }


def test_the_searcher_composes_once_every_start_point_has_finished():
    from compress.search.levels import split_levels
    from compress.search.study import make_sampler
    from compress.search.tuning import Limits
    from compress.search.twolevel import TwoLevelSearch

    space = load_space("miniature")
    unipc, student = space.spec.search.start
    blocks = {**unipc, "structure": "blocks", "block_preset": "small", "scheduler": "dpmsolver++",
              "steps": 20, "guidance_scale": 4.0}  # fmt: skip
    start = [unipc, blocks, student]
    search = TwoLevelSearch(
        space,
        split_levels(space),
        make_sampler=lambda i, prefix: make_sampler("tpe", 40, i),
        records=[],
        baseline_quality=0.7,
        limits=Limits(),
        queue=[(p, "start") for p in start],
        compose=lambda records: compositions(space, records),
    )
    first = [search.suggest(f"s{i}") for i in range(len(start))]
    assert [c["origin"] for c in first] == ["start"] * len(start)
    spare = search.suggest("spare")  # a free worker while start points run: the sampler
    assert spare["origin"] in ("prefix", "suffix")
    search.on_trial_complete("spare", error=True)
    speed = [4.4, 1.7, 7.3]
    for i, _ in enumerate(first):
        search.on_trial_complete(f"s{i}", _result(speed[i], training=i > 0))
    ran = [
        _record(c["number"], p, speed[i], training=i > 0)
        for i, (c, p) in enumerate(zip(first, start, strict=True))
    ]
    unions = compositions(space, ran)
    assert {**start[1], "scheduler": "unipc", "steps": 4, "guidance_scale": 3.0} in unions
    nxt = [search.suggest(f"c{i}") for i in range(len(unions))]
    strip = ("number", "origin")
    assert [{k: v for k, v in c.items() if k not in strip} for c in nxt] == unions
    assert {c["origin"] for c in nxt} == {"composition"}
    # then the finishing trials (compile on the start points that could join the front)
    assert search.suggest("after")["origin"] in ("finish", "prefix", "suffix")
