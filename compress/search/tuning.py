"""Ray Tune pieces of the search: the time budget, the staged-evaluation scheduler, and the
callbacks that keep the ledger and show progress (all run in the driver; the searcher itself is
compress.search.twolevel)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

from compress.search.ledger import TrialRecord, TrialResult, read_json, trial_dir, write_record
from compress.search.pareto import Point, clearly_dominated, pareto_front


@dataclass(frozen=True)
class Limits:
    """Constraints: a candidate over any is infeasible (kept, but never on the front)."""

    max_latency: float | None = None  # ms
    min_quality: float | None = None
    max_memory: float | None = None  # MiB, peak of sampling at the evaluation batch

    def violations(
        self, latency: float | None, quality: float | None, memory: float | None = None
    ) -> dict[str, float]:
        """Constraint -> signed amount (<= 0 satisfied), Optuna's convention; a measure that
        is None (not measured) is not judged."""
        out = {}
        if self.max_latency is not None and latency is not None:
            out["max_latency"] = latency - self.max_latency
        if self.min_quality is not None and quality is not None:
            out["min_quality"] = self.min_quality - quality
        if self.max_memory is not None and memory is not None:
            out["max_memory"] = memory - self.max_memory
        return out


class BudgetLimiter(ConcurrencyLimiter):
    """Ray's concurrency limit plus a wall-clock budget: once it is spent no trial starts, while
    the running ones finish and are recorded (Tune's own `time_budget_s` would stop them)."""

    def __init__(self, searcher: Searcher, max_concurrent: int, deadline: float | None) -> None:
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.deadline = deadline  # time.time() after which nothing new starts

    def suggest(self, trial_id: str) -> dict | None:
        if self.deadline is not None and time.time() >= self.deadline:
            return Searcher.FINISHED
        return super().suggest(trial_id)


class RungScheduler(FIFOScheduler):
    """Successive halving over the objectives (peak memory too where the space makes it one):
    a candidate is stopped at a rung when the front of the points scored at that rung clearly
    dominates it, when it breaks --max-latency or --max-memory (its peak memory does not change
    with its training or prompts), or when its paired speed-up interval does not lie above 1 (it
    can never be on the front).

    A rung is a training fraction (1.0 for candidates that train nothing, or whose training is
    cached), always scored on the same stage prompts, so a candidate meets only points with the
    same training budget and prompts. Ray Tune's ASHAScheduler ranks trials by one metric; the
    front has two or three dimensions, so the promotion rule is written here on Tune's API.
    """

    def __init__(
        self,
        points: dict[float, list[Point]],
        limits: Limits,
        *,
        quality_margin: float,
        latency_tolerance: float,
        deadline: float | None = None,
        memory: bool = False,
    ) -> None:
        super().__init__()
        self._deadline = deadline  # time.time() of the time budget's end
        self._memory = memory  # peak memory is a third objective of the space
        self._points = {k: list(v) for k, v in points.items()}
        self._limits = limits
        self._margin = quality_margin
        self._tolerance = latency_tolerance

    def front(self, rung: float) -> list[Point]:
        pts = self._points.get(rung, [])
        return [pts[i] for i in pareto_front(pts)]

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        r = TrialResult.of(result)
        if r.stage != 1 or r.duplicate_of is not None:
            return TrialScheduler.CONTINUE
        if self._deadline is not None and time.time() >= self._deadline and rung_of(r) < 1:
            # the budget is spent: a training candidate ends at the rung it reached (its score
            # there is kept) instead of training on past the budget
            return TrialScheduler.STOP
        broken = self._limits.violations(r.latency_ms, None, r.peak_memory_mb)
        if any(v > 0 for v in broken.values()):  # --max-latency or --max-memory
            return TrialScheduler.STOP
        if r.speedup_low is None or r.speedup_low <= 1.0:
            return TrialScheduler.STOP
        rung = rung_of(r)
        point = _rung_point(r.model_dump(), self._memory)
        if point is None:  # memory is an objective but was not measured: not compared
            return TrialScheduler.CONTINUE
        if clearly_dominated(
            point, self.front(rung), quality_margin=self._margin, latency_tolerance=self._tolerance
        ):
            return TrialScheduler.STOP
        self._points.setdefault(rung, []).append(point)
        return TrialScheduler.CONTINUE


def rung_of(point: TrialResult | dict) -> float:
    """The rung a scored point belongs to: its training fraction, 1.0 when it trains nothing."""
    fraction = (
        point.get("training_fraction") if isinstance(point, dict) else point.training_fraction
    )
    return 1.0 if fraction is None else float(fraction)


def rung_points(records: list[TrialRecord], memory: bool = False) -> dict[float, list[Point]]:
    """The points earlier trials scored at each rung (a resumed run's scheduler starts here)."""
    out: dict[float, list[Point]] = {}
    for r in records:
        if not r.feasible or not r.faster:
            continue
        for p in r.rungs:
            point = _rung_point(p, memory)
            if point is not None:
                out.setdefault(rung_of(p), []).append(point)
    return out


def _rung_point(p: dict[str, Any], memory: bool) -> Point | None:
    """(relative latency, quality[, peak memory]) of one rung's score."""
    if not memory:
        return (p["relative_latency"], p["quality"])
    peak = p.get("peak_memory_mb")
    return None if peak is None else (p["relative_latency"], p["quality"], peak)


class LedgerCallback(Callback):
    """Writes each finished trial's trial.json (the ledger entry) as soon as it finishes."""

    def __init__(self, run: Path, limits: Limits, on_record: Any = None) -> None:
        self._run = run
        self._limits = limits
        self._started: dict[str, float] = {}
        self._on_record = on_record

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_on_record": None}  # the progress display stays in the driver

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._started[trial.trial_id] = time.perf_counter()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        r = TrialResult.of(trial.last_result)
        self._write(trial, "complete" if r.stage == 2 else "stopped", r, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        r = TrialResult.of(trial.last_result)
        self._write(trial, "failed", r, _error_text(self._run, trial))

    def _write(self, trial: Any, state: str, r: TrialResult, error: str | None) -> None:
        from compress.search.trial import RESERVED

        number = int(trial.config["number"])
        wall = time.perf_counter() - self._started.get(trial.trial_id, time.perf_counter())
        record = TrialRecord(
            **r.model_dump(exclude={"number", "times"}),
            number=number,
            state=state,
            params={k: v for k, v in trial.config.items() if k not in RESERVED},
            recipe=_recipe_name(self._run, number),
            transforms=_transforms(self._run, number),
            stopped_at=(
                {"prompts": r.prompts, "training_fraction": r.training_fraction}
                if r.scored
                else None
            ),
            constraints=self._limits.violations(r.latency_ms, r.quality, r.peak_memory_mb)
            if state != "failed"
            else {},
            error=error,
            ray_trial_id=trial.trial_id,
            times={**r.times, "wall": wall},
            origin=trial.config.get("origin"),
            why=trial.config.get("why"),
            parent=trial.config.get("parent"),
        )
        write_record(self._run, record)
        if self._on_record is not None:
            self._on_record(record)


def _recipe_name(run: Path, number: int) -> str | None:
    t = _recipe_data(run, number)
    return t.get("name") if t else None


def _transforms(run: Path, number: int) -> list[dict[str, Any]]:
    t = _recipe_data(run, number)
    return list(t.get("transforms", [])) if t else []


def _recipe_data(run: Path, number: int) -> dict[str, Any] | None:
    import yaml

    path = trial_dir(run, number) / "recipe.yaml"
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return None


def _error_text(run: Path, trial: Any) -> str:
    """The worker's own one-line error if it wrote one; else what Ray saw (a killed worker)."""
    own = trial_dir(run, int(trial.config["number"])) / "error.txt"
    if own.is_file():
        return own.read_text().strip()
    try:
        text = Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:
        text = ""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "the trial's worker died (out of memory?)"


def read_params(run: Path, number: int) -> dict[str, Any]:
    path = trial_dir(run, number) / "config.json"
    return read_json(path).get("params", {}) if path.is_file() else {}


__all__ = [
    "BudgetLimiter",
    "LedgerCallback",
    "Limits",
    "RungScheduler",
    "TrialRecord",
]
