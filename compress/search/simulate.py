"""A search at cluster scale, simulated: the real driver (runner, two-level searcher, rung
scheduler, ledger, prefix cache) with trials that sleep for the cost the plan predicts and score
from a surrogate fitted to measured miniature trials, time-scaled so that hours run in minutes
(scripts/simulate_search.py).

The surrogate maps a candidate's knob values to its (relative latency, quality): extremely
randomised trees (scikit-learn) on the one-hot knob values of measured trials, plus noise of
the size the measurements show. A rung's quality is the final one less the mean shortfall the
measured trials showed at that fraction of their training.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ABSENT = "<absent>"


@dataclass
class Surrogate:
    """(log relative latency, quality) of knob values, from measured trials."""

    knobs: list[str]
    model: Any  # sklearn regressor with two outputs
    columns: list[str]
    noise: tuple[float, float]  # std of log latency and of quality
    rung_gap: dict[float, float]  # training fraction -> mean quality shortfall
    baseline_quality: float
    trials: int

    def encode(self, params: dict[str, Any]) -> list[float]:
        row = dict.fromkeys(self.columns, 0.0)
        for k in self.knobs:
            value = params.get(k, ABSENT)
            if isinstance(value, int | float) and not isinstance(value, bool):
                row[f"{k}#num"] = float(value)
                row[f"{k}={ABSENT}"] = 0.0
            key = f"{k}={value}"
            if key in row:
                row[key] = 1.0
        return [row[c] for c in self.columns]

    def predict(
        self, params: dict[str, Any], fraction: float | None, seed: int
    ) -> tuple[float, float]:
        rng = random.Random(seed)
        log_latency, quality = self.model.predict([self.encode(params)])[0]
        log_latency += rng.gauss(0.0, self.noise[0])
        quality += rng.gauss(0.0, self.noise[1])
        if fraction is not None and fraction < 1:
            quality -= self.rung_gap.get(fraction, max(self.rung_gap.values(), default=0.0))
        return min(1.5, math.exp(log_latency)), quality


def fit_surrogate(records: list[dict[str, Any]], baseline_quality: float) -> Surrogate:
    """Fit on ledger records (trial.json contents) that have a measured point."""
    from sklearn.ensemble import ExtraTreesRegressor

    scored = [r for r in records if r.get("speedup") and r.get("quality") is not None]
    if len(scored) < 5:
        raise ValueError(f"the surrogate needs at least 5 measured trials, got {len(scored)}")
    knobs = sorted({k for r in scored for k in r["params"]})
    columns = sorted(
        {f"{k}={r['params'].get(k, ABSENT)}" for r in scored for k in knobs}
        | {
            f"{k}#num"
            for r in scored
            for k in knobs
            if isinstance(r["params"].get(k), int | float)
            and not isinstance(r["params"].get(k), bool)
        }
    )
    surrogate = Surrogate(knobs, None, columns, (0.0, 0.0), {}, baseline_quality, len(scored))
    x = [surrogate.encode(r["params"]) for r in scored]
    y = [(math.log(1.0 / r["speedup"]), r["quality"]) for r in scored]
    surrogate.model = ExtraTreesRegressor(n_estimators=200, min_samples_leaf=2, random_state=0)
    surrogate.model.fit(x, y)
    # measurement noise: half the log width of the paired interval; quality: the spread of
    # trials with the same knob values (or 0.01, the judge's resolution, when none repeat)
    widths = [
        math.log(r["speedup_ci"][1] / r["speedup_ci"][0]) / 4 for r in scored if r.get("speedup_ci")
    ]
    surrogate.noise = (sum(widths) / len(widths) if widths else 0.05, 0.01)
    gaps: dict[float, list[float]] = {}
    for r in records:
        final = r.get("quality")
        if r.get("state") != "complete" or final is None:
            continue
        for p in r.get("rungs", []):
            f = p.get("training_fraction")
            if f is not None and f < 1:
                gaps.setdefault(f, []).append(final - p["quality"])
    surrogate.rung_gap = {f: sum(v) / len(v) for f, v in gaps.items()}
    return surrogate


def read_ledgers(runs: list[Path]) -> tuple[list[dict[str, Any]], float]:
    """Every trial of the given search runs, and their baseline's quality."""
    records, baselines = [], []
    for run in runs:
        baselines.append(json.loads((run / "baseline" / "scores.json").read_text())["quality"])
        for f in sorted((run / "trials").glob("*/trial.json")):
            records.append(json.loads(f.read_text()))
    return records, sum(baselines) / len(baselines)


@dataclass
class SimCosts:
    """Simulated seconds: training by transform kind, one evaluation, a trial's start."""

    training: dict[str, float]
    evaluation: float
    scale: float  # wall seconds per simulated second
    prefix_knobs: tuple[str, ...] = ()  # the space's prefix knobs (levels.split_levels)


def simulated_trial(
    config: dict[str, Any], job: Any, costs: SimCosts, surrogate: Surrogate
) -> None:
    """A Ray Tune trainable with the real trial's reports: rungs while it trains, the full
    evaluation last; its prefix is looked up in and stored to the real prefix cache."""
    from ray import tune

    from compress.search.cache import PrefixCache, prefix_key
    from compress.search.space import _matches
    from compress.search.trial import RESERVED

    # torch stays unimported: a simulated cluster runs dozens of these workers on a few cores
    number = int(config["number"])
    params = {k: v for k, v in config.items() if k not in RESERVED}
    spec = job.space
    kinds = {k for k, e in spec["transforms"].items() if _matches(e.get("when", {}), params)}
    kinds |= {
        spec["knobs"][k]["sets"].split(".")[0] for k in params if spec["knobs"][k].get("sets")
    }
    _write_recipe(job, params, number)  # as the real trial does: the front's recipes need it
    training = sorted(kinds & set(costs.training))
    trains = bool(training)
    prefix = {k: params[k] for k in costs.prefix_knobs if k in params}
    cache = PrefixCache(job.cache_dir)
    key = prefix_key(job.weights, [], {"simulated_prefix": prefix}, {})
    cached = trains and cache.lookup(key) is not None
    full_s = sum(costs.training[k] for k in training)
    train_s = 0.0 if cached else full_s
    fractions = [1.0] if cached or not trains else sorted({*job.rungs, 1.0})
    busy, done = 0.0, 0.0
    misses: list[dict[str, Any]] = []
    hits = [{"key": key, "seconds": full_s}]
    for fraction in fractions:
        step = train_s * (fraction - done)
        time.sleep(step * costs.scale)
        busy, done = busy + step, fraction
        if step:
            misses.append({"key": key, "seconds": step, "trained_steps": 1})
        if fraction == 1.0 and trains and not cached:
            _store(cache, key, train_s, number)
        rung = fraction if trains else None
        latency, quality = surrogate.predict(params, rung, number)
        used = hits if cached else []
        tune.report(_result(1, rung, latency, quality, busy, trains, used, misses))
    time.sleep(costs.evaluation * costs.scale)
    busy += costs.evaluation
    latency, quality = surrogate.predict(params, None, number)
    rung = 1.0 if trains else None
    used = hits if cached else []
    tune.report(_result(2, rung, latency, quality, busy, trains, used, misses))


def _write_recipe(job: Any, params: dict[str, Any], number: int) -> None:
    from optuna.trial import FixedTrial

    from compress.recipe import save_recipe
    from compress.search.ledger import trial_dir
    from compress.search.space import SearchSpace
    from compress.search.space_file import SpaceFile

    space = SearchSpace(SpaceFile.model_validate(job.space), job.space_source)
    save_recipe(
        space.suggest(FixedTrial(params, number)), trial_dir(Path(job.run), number) / "recipe.yaml"
    )


def _result(
    stage: int,
    fraction: float | None,
    latency: float,
    quality: float,
    busy: float,
    training: bool,
    hits: list[dict[str, Any]],
    misses: list[dict[str, Any]],
) -> dict[str, Any]:
    from compress.search.ledger import TrialResult

    speedup = 1.0 / latency
    return TrialResult(
        stage=stage,
        training_fraction=fraction,
        prompts=8 if stage == 1 else 32,
        relative_latency=latency,
        quality=quality,
        latency_ms=100.0 * latency,
        reference_latency_ms=100.0,
        speedup=speedup,
        speedup_ci=[speedup * 0.95, speedup * 1.05],
        rungs=[{"training_fraction": fraction, "relative_latency": latency, "quality": quality}],
        training=training,
        cache={"hits": hits, "misses": misses},
        times={"busy": busy},
    ).report()


def _store(cache: Any, key: str, seconds: float, trial: int) -> None:
    """A cache entry as the real one is written (atomic folder, digests), holding a marker."""
    from compress.fs import atomic_folder, file_digests

    with cache.lock(key):
        if cache.lookup(key) is not None:
            return
        with atomic_folder(cache.entry(key)) as tmp:
            (tmp / "artifact").mkdir()
            (tmp / "artifact" / "simulated.txt").write_text(key)
            meta = {"key": key, "training_s_total": seconds, "trial": trial}
            meta["files"] = file_digests(tmp / "artifact")
            (tmp / "entry.json").write_text(json.dumps(meta))
