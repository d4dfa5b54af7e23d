"""Driver-side pieces without a cluster: constraints, the staged scheduler, resuming a study."""

from __future__ import annotations

import math

import pytest
from ray.tune.schedulers import TrialScheduler

from compress.errors import CompressError
from compress.search.config import resolve_config
from compress.search.ledger import TrialRecord
from compress.search.runner import check_cluster, trial_resources
from compress.search.staging import TrialFailed, check_finite
from compress.search.tuning import Limits, RungScheduler, rung_points

SPACE = {
    "name": "t",
    "knobs": {
        "scheduler": {
            "sets": "sampler.scheduler",
            "type": "categorical",
            "choices": ["euler", "ddim"],
        },
        "steps": {"sets": "sampler.steps", "type": "int", "low": 1, "high": 8},
    },
}


def test_limits_follow_optunas_sign_convention():
    limits = Limits(max_latency=10.0, min_quality=0.5)
    assert limits.violations(12.0, 0.7) == pytest.approx({"max_latency": 2.0, "min_quality": -0.2})
    assert Limits().violations(12.0, 0.7) == {}


def rung(fraction, rel, quality, low=1.5, latency=10.0, stage=1):
    return {
        "stage": stage,
        "training_fraction": fraction,
        "relative_latency": rel,
        "quality": quality,
        "speedup_ci": [low, low + 1.0] if low is not None else None,
        "latency_ms": latency,
    }


def test_rung_scheduler_compares_only_points_of_the_same_rung():
    sched = RungScheduler(
        {0.25: [(0.2, 0.5)], 1.0: [(0.2, 0.8)]},
        Limits(max_latency=50.0),
        quality_margin=0.05,
        latency_tolerance=0.05,
    )
    decide = lambda r: sched.on_trial_result(None, None, r)  # noqa: E731
    stop, go = TrialScheduler.STOP, TrialScheduler.CONTINUE
    # At a quarter of its training, 0.4 is clearly dominated by the 0.5 scored at that rung...
    assert decide(rung(0.25, 0.21, 0.4)) == stop
    # ...but at half its training there is nothing to meet yet: it goes on, and joins the rung.
    assert decide(rung(0.5, 0.21, 0.4)) == go
    assert decide(rung(0.5, 0.22, 0.3)) == stop
    # A training-free candidate (fraction None) meets fully trained points (rung 1.0).
    assert decide(rung(None, 0.2, 0.7)) == stop
    assert decide(rung(None, 0.2, 0.78)) == go  # within the quality margin
    # Never on a front: no faster than the baseline (interval reaches 1), or too slow.
    assert decide(rung(None, 0.1, 0.99, low=0.98)) == stop
    assert decide(rung(None, 0.1, 0.99, latency=60.0)) == stop
    # The full evaluation and a repeated point are never stopped.
    assert decide(rung(1.0, 0.9, 0.0, stage=2)) == go
    assert decide({**rung(1.0, 0.9, 0.0), "duplicate_of": 2}) == go


def test_past_the_time_budget_a_training_candidate_ends_at_its_rung():
    import time

    sched = RungScheduler(
        {}, Limits(), quality_margin=0.0, latency_tolerance=0.0, deadline=time.time() - 1
    )
    decide = lambda r: sched.on_trial_result(None, None, r)  # noqa: E731
    assert decide(rung(0.5, 0.2, 0.7)) == TrialScheduler.STOP  # would have gone on in budget
    assert decide(rung(1.0, 0.2, 0.7)) == TrialScheduler.CONTINUE  # trained: it is evaluated
    assert decide(rung(None, 0.2, 0.7)) == TrialScheduler.CONTINUE  # trains nothing


def test_rung_points_resume_from_the_ledger():
    faster = TrialRecord(
        number=0,
        state="stopped",
        speedup=4.0,
        speedup_ci=[3.5, 4.5],
        quality=0.3,
        rungs=[{"training_fraction": 0.25, "relative_latency": 0.25, "quality": 0.3}],
    )
    slower = faster.model_copy(update={"number": 1, "speedup_ci": [0.9, 1.2]})
    assert rung_points([faster, slower]) == {0.25: [(0.25, 0.3)]}


def test_target_gpu_is_a_ray_accelerator_resource(monkeypatch, tiny_dir):
    cfg, _ = resolve_config(
        "miniature",
        model=str(tiny_dir),
        metric="fidelity",
        gpus_per_trial=1,
        target_gpu="H100",
        out="unused",
    )
    assert cfg.device == "cuda"
    res = trial_resources(cfg)
    assert res == {"cpu": 2.0, "gpu": 1.0, "accelerator_type:H100": 0.001}  # the space asks 2 CPUs
    import ray

    monkeypatch.setattr(
        ray, "cluster_resources", lambda: {"CPU": 8.0, "GPU": 2.0, "accelerator_type:A100": 1.0}
    )
    with pytest.raises(CompressError, match="accelerator_type:H100.*types in this cluster: A100"):
        check_cluster(res)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    with pytest.raises(CompressError, match="gpu=1 but the Ray cluster has 0"):
        check_cluster({"cpu": 1, "gpu": 1})


def test_nan_scores_fail_the_trial():
    class FakeScore:
        latency_ms, quality = 3.0, math.nan

    with pytest.raises(TrialFailed, match="NaN"):
        check_finite(FakeScore(), "stage 1")


def test_bad_options_are_clear_errors(tiny_dir):
    with pytest.raises(CompressError, match="sampler"):
        resolve_config("miniature", model=str(tiny_dir), sampler="random", out="x")
    with pytest.raises(CompressError, match="names no model"):
        resolve_config("sd15", out="x")


def test_extending_stage_one_equals_a_full_evaluation(tiny_pipe):
    import logging

    from compress.evaluate import EvalSettings, evaluate, reference_images
    from compress.search.staging import evaluate_stage, extend

    full = EvalSettings(
        metric="fidelity", num_prompts=3, timed_runs=1, warmup=0, resolution=16, steps=2, threads=1
    )
    refs = reference_images(tiny_pipe, full.model_copy(update={"steps": 4}))
    log = logging.getLogger("test")
    first = evaluate_stage(
        tiny_pipe, full.model_copy(update={"num_prompts": 1}), refs, log, "s1", {}
    )
    extended = extend(tiny_pipe, first, full, refs, log, {})
    direct = evaluate(tiny_pipe, full, reference_images=refs)
    assert extended.quality == pytest.approx(direct.quality, abs=1e-9)
    assert extended.prompts == direct.prompts and len(extended.images) == 3
    assert extended.settings["num_prompts"] == 3 and first.latency_ms is None  # scored untimed
