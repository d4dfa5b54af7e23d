"""The Optuna side: the samplers of the two-level search's studies, constraints included."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from compress.errors import CompressError

if TYPE_CHECKING:
    import optuna

DIRECTIONS = ["minimize", "maximize"]  # relative latency, quality
MEMORY_DIRECTION = "minimize"  # peak memory, where a space makes it an objective
CONSTRAINTS = "constraints"  # user attribute: violations of LIMITS, in order (<= 0: met)
LIMITS = ("max_latency", "min_quality", "max_memory")  # compress.search.tuning.Limits


def directions(memory: bool) -> list[str]:
    """The studies' directions: relative latency, quality[, peak memory]."""
    return [*DIRECTIONS, MEMORY_DIRECTION] if memory else list(DIRECTIONS)


def constraint_values(violations: dict[str, float]) -> list[float]:
    """`Limits.violations` as the fixed-length list Optuna's constraints_func returns."""
    return [violations.get(name, 0.0) for name in LIMITS]


def _constraints(trial: Any) -> list[float]:
    return list(trial.user_attrs.get(CONSTRAINTS, [0.0] * len(LIMITS)))


def make_sampler(name: str, trials: int, seed: int) -> optuna.samplers.BaseSampler:
    """NSGA-II with a population sized to the budget, or multi-objective TPE; both prefer
    candidates within --max-latency / --min-quality / --max-memory (the trials' recorded
    violations)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():  # `group` and `constraints_func` are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "nsga2":
            # The default population (50) would spend a small budget on random first generations.
            return optuna.samplers.NSGAIISampler(
                population_size=max(4, min(50, trials // 4)),
                seed=seed,
                constraints_func=_constraints,
            )
        if name == "tpe":
            return optuna.samplers.TPESampler(
                n_startup_trials=max(3, min(10, trials // 5)),
                multivariate=True,
                group=True,
                seed=seed,
                constraints_func=_constraints,
            )
    raise CompressError(f"unknown sampler {name!r}; choose nsga2 or tpe")
