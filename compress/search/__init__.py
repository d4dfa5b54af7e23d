"""Architecture search: YAML spaces -> Optuna define-by-run, run by Ray Tune, Pareto front out."""

from __future__ import annotations

from compress.search.pareto import clearly_dominated, hypervolume, pareto_front
from compress.search.space import SearchSpace, SpaceError, load_space, parse_space

__all__ = [
    "SearchSpace",
    "SpaceError",
    "clearly_dominated",
    "hypervolume",
    "load_space",
    "parse_space",
    "pareto_front",
    "run_search",
]


def __getattr__(name: str):  # lazy: Ray and Optuna load only when a search runs
    if name == "run_search":
        from compress.search.runner import run_search

        return run_search
    raise AttributeError(f"module 'compress.search' has no attribute {name!r}")
