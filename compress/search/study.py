"""The Optuna side: samplers, the define-by-run function Ray calls, and resuming from the ledger."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from compress.errors import CompressError
from compress.search.space import SearchSpace, SpaceFile

if TYPE_CHECKING:
    import optuna

    from compress.search.ledger import TrialRecord
    from compress.search.tuning import Limits

STUDY = "compress"
DIRECTIONS = ["minimize", "maximize"]  # latency, quality


class DefineByRun:
    """Picklable define-by-run function for OptunaSearch (Tune checkpoints its searcher)."""

    def __init__(self, space: SearchSpace) -> None:
        self._spec = space.spec.model_dump(mode="json")
        self._source = space.source
        self._space: SearchSpace | None = space

    def __getstate__(self) -> dict[str, Any]:
        return {"_spec": self._spec, "_source": self._source, "_space": None}

    def __call__(self, trial: Any) -> dict[str, Any]:
        if self._space is None:
            self._space = SearchSpace(SpaceFile.model_validate(self._spec), self._source)
        try:
            self._space.suggest(trial)
        except CompressError as exc:  # e.g. a cross-field rule of a transform: fail this trial
            return {"number": trial.number, "invalid": str(exc)}
        return {"number": trial.number}


def define_by_run(space: SearchSpace) -> DefineByRun:
    return DefineByRun(space)


def make_sampler(name: str, trials: int, seed: int) -> optuna.samplers.BaseSampler:
    """NSGA-II with a population sized to the budget, or multi-objective TPE."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if name == "nsga2":
        # The default population (50) would spend a small budget on random first generations.
        return optuna.samplers.NSGAIISampler(
            population_size=max(4, min(50, trials // 4)), seed=seed
        )
    if name == "tpe":
        with warnings.catch_warnings():  # `group` (conditional knobs) is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                n_startup_trials=max(3, min(10, trials // 5)),
                multivariate=True,
                group=True,
                seed=seed,
            )
    raise CompressError(f"unknown sampler {name!r}; choose nsga2 or tpe")


def prepopulated_storage(
    space: SearchSpace,
    records: list[TrialRecord],
    sampler: optuna.samplers.BaseSampler,
    limits: Limits,
) -> tuple[optuna.storages.BaseStorage, str]:
    """An Optuna study holding every trial of the ledger, numbered as before, so a resumed
    search continues from what it learnt (OptunaSearch loads it with load_if_exists)."""
    import optuna
    from optuna.trial import FixedTrial, TrialState, create_trial

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(
        storage=storage, study_name=STUDY, directions=DIRECTIONS, sampler=sampler
    )
    by_number = {r.number: r for r in records}
    for number in range(max(by_number, default=-1) + 1):
        r = by_number.get(number)
        if r is None or r.state not in ("complete", "stopped") or r.point is None:
            study.add_trial(create_trial(state=TrialState.FAIL))
            continue
        fixed = FixedTrial(r.params, number)
        space.suggest(fixed)
        study.add_trial(
            create_trial(
                params=fixed.params,
                distributions=fixed.distributions,
                values=list(r.point),
                constraints=limits.violations(r.latency_ms, r.quality) or None,
            )
        )
    return storage, STUDY
