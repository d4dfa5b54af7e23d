"""How good is the search? Evaluate a space's grid exhaustively (the true front), then search it.

    python scripts/search_benchmark.py                    # the miniature-sampler space
    python scripts/search_benchmark.py --space S --model M --metric Q --out runs/bench

Prints, in one table: the grid's size and hypervolume, the search's evaluations (as a share of
the grid's) and the share of the grid's hypervolume it reached, both with its own measurements
and with the grid's measurements of the configurations it chose (free of run-to-run latency
noise), and Ray's overhead per trial (the search runs one trial at a time to measure it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from compress._quiet import import_heavy, silence
from compress.search.config import resolve_config
from compress.search.ledger import TrialRecord, read_records
from compress.search.pareto import hypervolume, pareto_front
from compress.search.runner import run_search
from compress.search.space import load_space


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


def _front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [points[i] for i in pareto_front(points)]


def _full(records: list[TrialRecord]) -> list[TrialRecord]:
    """Fully evaluated, feasible, and faster than the baseline (paired interval above 1)."""
    return [
        r
        for r in records
        if r.state == "complete" and r.feasible and r.faster and r.point is not None
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="miniature-sampler")
    parser.add_argument("--model", default=None)
    parser.add_argument("--metric", default=None)
    parser.add_argument("--metric-weights", default=None, help="The metric's weights file.")
    parser.add_argument(
        "--trials",
        type=int,
        default=None,
        help="Search trials (default: the space's, as `compress search` runs).",
    )
    parser.add_argument("--sampler", default=None, help="nsga2 or tpe (default: the space's).")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("runs") / f"bench-{int(time.time())}")
    args = parser.parse_args()
    silence()
    import_heavy()
    console = Console()
    space = load_space(args.space)
    grid = space.grid()
    common = {"model": args.model, "metric": args.metric, "metric_weights": args.metric_weights}

    t0 = time.perf_counter()
    cfg, sp = resolve_config(
        args.space, **common, out=str(args.out / "grid"), trials=len(grid), staged=False
    )
    console.print(f"grid: {len(grid)} configurations of {sp.source}")
    run_search(cfg, sp, console=console, points=grid, resume=(cfg.run / "search.json").exists())
    grid_s = time.perf_counter() - t0

    budget = args.trials or space.spec.search.trials
    t0 = time.perf_counter()
    cfg_s, sp = resolve_config(
        args.space,
        **common,
        out=str(args.out / "search"),
        trials=budget,
        max_concurrent=1,
        sampler=args.sampler,
        seed=args.seed,
    )
    console.print(f"search: {budget} trials, sampler {cfg_s.sampler}, one at a time")
    run_search(cfg_s, sp, console=console, resume=(cfg_s.run / "search.json").exists())
    search_s = time.perf_counter() - t0

    g_records, s_records = read_records(cfg.run), read_records(cfg_s.run)
    g_full = _full(g_records)
    ref = (1.0, min(r.quality for r in g_full))  # the baseline's relative latency
    hv_grid = hypervolume(_front([r.point for r in g_full]), ref)
    s_full = _full(s_records)
    hv_own = hypervolume(_front([r.point for r in s_full]), ref)
    by_key = {_key(r.params): r.point for r in g_full}
    chosen = [by_key[_key(r.params)] for r in s_full if _key(r.params) in by_key]
    hv_chosen = hypervolume(_front(chosen), ref)
    evaluations = [
        r for r in s_records if r.state in ("complete", "stopped") and r.duplicate_of is None
    ]
    stopped = sum(r.state == "stopped" for r in evaluations)
    timing = json.loads((cfg_s.run / "timings.json").read_text())[-1]
    work = sum(r.times.get("trial", 0.0) for r in s_records)
    overhead = (timing["tune_s"] - work) / max(1, len(s_records))
    result = {
        "grid_size": len(grid),
        "grid_evaluations": len(g_full),
        "grid_wall_s": grid_s,
        "hypervolume_reference": ref,
        "grid_hypervolume": hv_grid,
        "search_trials": len(s_records),
        "search_evaluations": len(evaluations),
        "search_stopped_early": stopped,
        "search_evaluation_share": len(evaluations) / len(grid),
        "search_hypervolume_own": hv_own,
        "search_hypervolume_share_own": hv_own / hv_grid,
        "search_hypervolume_grid_values": hv_chosen,
        "search_hypervolume_share_grid_values": hv_chosen / hv_grid,
        "search_wall_s": search_s,
        "ray_init_s": timing["ray_init_s"],
        "ray_overhead_s_per_trial": overhead,
        "driver_observed_overhead_s_per_trial": _mean(
            [
                r.times["wall"] - r.times["trial"]
                for r in s_records
                if "wall" in r.times and "trial" in r.times
            ]
        ),
    }
    (args.out / "benchmark.json").write_text(json.dumps(result, indent=2))
    for key, value in result.items():
        console.print(
            f"{key:40s} {value:.4g}" if isinstance(value, float) else f"{key:40s} {value}"
        )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


if __name__ == "__main__":
    main()
