"""Ray Tune pieces of the search: constrained OptunaSearch, the staged-evaluation scheduler,
and the callbacks that keep the ledger and show progress (all run in the driver)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from compress.search.ledger import TrialRecord, read_json, trial_dir, write_record
from compress.search.pareto import Point, clearly_dominated, pareto_front

METRICS = ["latency_ms", "quality"]
MODES = ["min", "max"]


@dataclass(frozen=True)
class Limits:
    """Constraints: a candidate over either is infeasible (kept, but never on the front)."""

    max_latency: float | None = None
    min_quality: float | None = None

    def violations(self, latency: float | None, quality: float | None) -> dict[str, float]:
        """Constraint -> signed amount (<= 0 satisfied), Optuna's convention."""
        out = {}
        if self.max_latency is not None and latency is not None:
            out["max_latency"] = latency - self.max_latency
        if self.min_quality is not None and quality is not None:
            out["min_quality"] = self.min_quality - quality
        return out


class ConstrainedOptunaSearch(OptunaSearch):
    """OptunaSearch that also tells the study each trial's constraint values (for NSGA-II/TPE)."""

    def __init__(self, *args: Any, limits: Limits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if result and ot_trial is not None and not error:
            for key, value in self._limits.violations(
                result.get("latency_ms"), result.get("quality")
            ).items():
                ot_trial.set_constraint(key, value)
        super().on_trial_complete(trial_id, result, error)


class StagedScheduler(FIFOScheduler):
    """Stops a trial after stage 1 when fully evaluated trials clearly dominate it, or when its
    latency (reliable from stage 1) already breaks --max-latency.

    Stage-1 scores are compared with the stage-1 scores of the fully evaluated trials (same
    prompts and seeds): a metric such as a Frechet distance shifts with the number of images.
    """

    def __init__(
        self, front: list[Point], limits: Limits, *, quality_margin: float, latency_tolerance: float
    ) -> None:
        super().__init__()
        self._points = list(front)  # stage-1 points of feasible, fully evaluated trials
        self._limits = limits
        self._margin = quality_margin
        self._tolerance = latency_tolerance

    def front(self) -> list[Point]:
        return [self._points[i] for i in pareto_front(self._points)]

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        point = (result.get("latency_ms"), result.get("quality"))
        if result.get("stage") == 2:
            quick = (result.get("stage1_latency_ms"), result.get("stage1_quality"))
            feasible = not any(v > 0 for v in self._limits.violations(*point).values())
            if feasible and None not in quick:
                self._points.append(quick)
            return TrialScheduler.CONTINUE
        if self._limits.violations(point[0], None).get("max_latency", 0) > 0:
            return TrialScheduler.STOP
        if clearly_dominated(
            point, self.front(), quality_margin=self._margin, latency_tolerance=self._tolerance
        ):
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


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
        r = trial.last_result or {}
        state = "complete" if r.get("stage") == 2 else "stopped"
        self._write(trial, state, r, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write(trial, "failed", trial.last_result or {}, _error_text(self._run, trial))

    def _write(self, trial: Any, state: str, r: dict, error: str | None) -> None:
        number = int(trial.config["number"])
        params = {k: v for k, v in trial.config.items() if k not in ("number", "invalid")}
        wall = time.perf_counter() - self._started.get(trial.trial_id, time.perf_counter())
        times = {
            k.removesuffix("_s"): float(v)
            for k, v in r.items()
            if k in ("setup_s", "stage1_s", "stage2_s", "trial_s")
        }
        times["wall"] = wall
        latency, quality = r.get("latency_ms"), r.get("quality")
        scores = r.get("scores") or {}
        record = TrialRecord(
            number=number,
            state=state,
            stage=int(r.get("stage") or 0),
            params=params,
            recipe=_recipe_name(self._run, number),
            transforms=_transforms(self._run, number),
            latency_ms=latency,
            quality=quality,
            scores=scores,
            constraints=self._limits.violations(latency, quality) if state != "failed" else {},
            error=error,
            node=r.get("node"),
            ray_trial_id=trial.trial_id,
            times=times,
            duplicate_of=r.get("duplicate_of"),
            components_ms=r.get("components_ms") or {},
            stage1_point=_stage1_point(r),
            training=bool(r.get("training")),
        )
        write_record(self._run, record)
        if self._on_record is not None:
            self._on_record(record)


def _stage1_point(r: dict) -> tuple[float, float] | None:
    if r.get("stage") != 2 or "stage1_quality" not in r:
        return None
    return (r["stage1_latency_ms"], r["stage1_quality"])


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


__all__ = ["ConstrainedOptunaSearch", "LedgerCallback", "Limits", "StagedScheduler", "TrialRecord"]
