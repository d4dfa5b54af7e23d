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
    unipc, blocks, student = space.spec.search.start
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


def test_the_search_runs_the_start_points_then_their_unions_then_the_sampler(tmp_path, monkeypatch):
    from compress.search import runner

    speed = {0: 4.4, 1: 1.7, 2: 7.3}
    calls: list[tuple[int, list]] = []

    def tune(cfg, space, run, records, remaining, *rest):
        points = [params for params, _ in rest[-2]]  # (knob values, origin)
        calls.append((remaining, points))
        for i in range(remaining):  # each trial takes the next point, as Optuna enqueues them
            n = len(records) + i
            params = points[i] if i < len(points) else {}
            write_record(run, _record(n, params, speed.get(n, 2.0), training=n in (1, 2)))

    _offline(monkeypatch, tune)
    cfg, space = resolve_config("miniature", out=str(tmp_path / "run"), trials=12)
    runner.run_search(cfg, space)
    start = space.spec.search.start
    assert calls[0] == (len(start), start)  # the start points alone first
    remaining, unions = calls[1]
    assert remaining == 12 - len(start)
    ran = [_record(n, p, speed[n], training=n in (1, 2)) for n, p in enumerate(start)]
    assert unions == compositions(space, ran)
    assert {**start[1], "scheduler": "unipc", "steps": 4, "guidance_scale": 3.0} in unions
    assert json.loads((cfg.run / "timings.json").read_text())[-1]["trials"] == 12


def test_an_interrupted_start_phase_does_not_go_on_to_compose(tmp_path, monkeypatch):
    from compress.search import runner

    calls: list[int] = []

    def tune(cfg, space, run, records, remaining, *rest):
        calls.append(remaining)
        write_record(run, _record(0, rest[-2][0][0], 4.4))  # one trial finished, then Ctrl-C

    _offline(monkeypatch, tune)
    cfg, space = resolve_config("miniature", out=str(tmp_path / "run"), trials=12)
    runner.run_search(cfg, space)
    assert calls == [len(space.spec.search.start)]
