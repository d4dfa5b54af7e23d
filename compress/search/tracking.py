"""Experiment tracking (`--track`): Ray Tune's own logger callbacks for MLflow, TensorBoard and
Weights & Biases, handed what a trial is: its knob values as parameters, its scores as numbers
at each report, and (MLflow) its folder of recipe, images and log as artifacts.

Each class narrows one Ray callback where Ray's default would record the searcher's bookkeeping
(trial number, origin, reason) as knobs, or lists and nested dicts that trackers cannot plot.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

from ray.air.constants import TRAINING_ITERATION
from ray.tune import Callback
from ray.tune.logger import TBXLoggerCallback

from compress.errors import CompressError, MissingExtra
from compress.search.ledger import TrialResult, trial_dir
from compress.search.trial import RESERVED

# Result fields that are dicts of numbers, logged one number per key ("times/build").
_NUMBER_DICTS = ("times", "components_ms", "reference_components_ms")


def knobs(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's knob values: its Ray config less the searcher's bookkeeping keys."""
    return {k: v for k, v in config.items() if k not in RESERVED}


def metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numbers a trial reported: its scores (speed-up with its interval as `_low`/`_high`,
    latency, quality, stage, rung...), the recipe scores' quality parts and peak memory, and
    its times; plus Ray's iteration, the step trackers plot against."""
    r = TrialResult.of(result)
    data = r.model_dump(exclude={"number", "duplicate_of"})  # trial numbers, not scores
    out: dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out[key] = float(value)
        elif key.endswith("_ci") and value:
            out[f"{key[:-3]}_low"], out[f"{key[:-3]}_high"] = map(float, value)
        elif key in _NUMBER_DICTS:
            out |= {f"{key}/{k}": float(v) for k, v in value.items()}
    scores = r.scores
    for key in ("peak_memory_mb", "latency_spread_ms"):
        if isinstance(scores.get(key), int | float) and key not in out:
            out[key] = float(scores[key])
    out |= {f"quality_parts/{k}": float(v) for k, v in (scores.get("quality_parts") or {}).items()}
    out = {k: v for k, v in out.items() if math.isfinite(v)}
    if TRAINING_ITERATION in result:
        out[TRAINING_ITERATION] = result[TRAINING_ITERATION]
    return out


def _trial_number(trial: Any) -> int:
    return int(trial.config["number"])


def _require(module: str, package: str, extra: str | None) -> None:
    if importlib.util.find_spec(module) is None:
        raise MissingExtra(package, extra)


def tracking_callbacks(
    names: list[str], run: Path, mlflow_uri: str | None = None
) -> list[Callback]:
    """One Ray Tune callback per tracker name, each writing under the run folder by default.

    MLflow: `mlflow_uri`, else MLFLOW_TRACKING_URI, else a SQLite store in RUN/mlflow (MLflow's
    plain-folder store is in maintenance mode and refuses to open by default); the experiment is
    the run's name. TensorBoard: RUN/tensorboard/NNNN per trial. W&B: the project is
    WANDB_PROJECT or the run's name; WANDB_MODE=offline keeps its files in RUN/wandb.
    """
    out: list[Callback] = []
    for name in names:
        if name == "mlflow":
            _require("mlflow", "mlflow-skinny", "track")
            uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
            local = uri is None
            folder = run / "mlflow"
            if local:
                folder.mkdir(parents=True, exist_ok=True)
                uri = f"sqlite:///{folder / 'mlflow.db'}"
            _check_mlflow(uri)
            out.append(_mlflow_callback(run, uri, folder / "artifacts" if local else None))
        elif name == "tensorboard":
            _require("tensorboardX", "tensorboardX", "track")
            out.append(TensorBoardCallback(run / "tensorboard"))
        elif name == "wandb":
            _require("wandb", "wandb", None)
            out.append(_wandb_callback(run))
        else:  # SearchConfig admits only the names above
            raise ValueError(f"unknown tracker {name!r}")
    return out


def _check_mlflow(uri: str) -> None:
    """Open the store now: a wrong URI fails before the baseline, not inside Ray's callbacks."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except (MlflowException, OSError) as exc:
        raise CompressError(
            f"the MLflow tracking URI {uri} cannot be used: {exc}; pass another with --track-uri "
            "or MLFLOW_TRACKING_URI, or neither for a store in the run folder"
        ) from None


def describe(callbacks: list[Callback]) -> list[str]:
    """Where each tracker writes, for one console line."""
    return [c.where for c in callbacks if hasattr(c, "where")]


def _mlflow_callback(run: Path, uri: str, artifacts: Path | None) -> Callback:
    # Defined here: Ray's MLflow module imports mlflow (seconds) when it is imported.
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class MLflowCallback(MLflowLoggerCallback):
        """Ray's MLflowLoggerCallback: one MLflow run per trial, named by its number, with the
        knob values as params, the scores as metrics and the trial folder as artifacts."""

        def setup(self, *args: Any, **kwargs: Any) -> None:
            # Ray's setup creates a missing experiment without an artifact location (MLflow
            # would then put artifacts under the working folder): create it here with one.
            self.mlflow_util.setup_mlflow(
                tracking_uri=self.tracking_uri,
                experiment_name=self.experiment_name,
                artifact_location=str(artifacts) if artifacts else None,
            )
            super().setup(*args, **kwargs)

        def log_trial_start(self, trial: Any) -> None:
            # Ray logs the whole trial config as params: knobs only here, bookkeeping as tags.
            if trial not in self._trial_runs:
                number = _trial_number(trial)
                tags = {**self.tags, "trial_name": str(trial), "trial": f"{number:04d}"}
                if trial.config.get("origin"):
                    tags["origin"] = str(trial.config["origin"])
                started = self.mlflow_util.start_run(tags=tags, run_name=f"trial-{number:04d}")
                self._trial_runs[trial] = started.info.run_id
            run_id = self._trial_runs[trial]
            self.mlflow_util.log_params(run_id=run_id, params_to_log=knobs(trial.config))

        def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
            super().log_trial_result(iteration, trial, metrics(result))

        def log_trial_end(self, trial: Any, failed: bool = False) -> None:
            # The trial's own folder (recipe.yaml, images/, log.txt, trial.json), not Ray's.
            folder = trial_dir(run, _trial_number(trial))
            run_id = self._trial_runs.get(trial)
            if run_id is not None and folder.is_dir():
                self.mlflow_util.save_artifacts(run_id=run_id, dir=str(folder))
            super().log_trial_end(trial, failed)

    callback = MLflowCallback(uri, experiment_name=run.name, tags={"compress.run": str(run)})
    callback.where = f"mlflow {uri} (experiment {run.name})"
    return callback


class TensorBoardCallback(TBXLoggerCallback):
    """Ray's TBXLoggerCallback: each trial's scores as scalars (`ray/tune/<name>`) and, at its
    end, its knob values as hparams, in LOGDIR/NNNN (Ray's own logger writes one event folder
    per Ray trial name inside RUN/ray, with every key it can plot)."""

    def __init__(self, logdir: Path) -> None:
        super().__init__()
        self._logdir = logdir
        self.where = f"tensorboard --logdir {logdir}"

    def log_trial_start(self, trial: Any) -> None:
        if trial in self._trial_writer:
            self._trial_writer[trial].close()
        folder = self._logdir / f"{_trial_number(trial):04d}"
        self._trial_writer[trial] = self._summary_writer_cls(str(folder), flush_secs=30)
        self._trial_result[trial] = {}

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        super().log_trial_result(iteration, trial, metrics(result))

    def _try_log_hparams(self, trial: Any, result: dict) -> None:
        # Ray's hparams are the searcher's evaluated params: its bookkeeping keys included.
        from tensorboardX.summary import hparams

        plain = (str, bool, int, float)  # what an hparam may be (None and lists are not)
        params = {k: v for k, v in knobs(trial.config).items() if isinstance(v, plain)}
        writer = self._trial_writer[trial].file_writer
        for summary in hparams(hparam_dict=params, metric_dict=result):
            writer.add_summary(summary)


def _wandb_callback(run: Path) -> Callback:
    from ray.air.integrations.wandb import WandbLoggerCallback

    class WandbCallback(WandbLoggerCallback):
        """Ray's WandbLoggerCallback: knob values as the run config, scores as numbers (the
        callback uploads Ray checkpoints only; a trial's folder is not one)."""

        def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
            super().log_trial_result(iteration, trial, metrics(result))

    mode = os.environ.get("WANDB_MODE")  # the logging actors may not share the driver's env
    project = os.environ.get("WANDB_PROJECT") or run.name
    callback = WandbCallback(
        project=project,
        excludes=list(RESERVED),
        dir=str(run),
        **({"mode": mode} if mode else {}),
    )
    callback.where = f"wandb project {project}" + (f" ({mode})" if mode else "")
    return callback
