"""Turn the ledger into outputs: front recipes, trials.csv, hypervolume and summary.json."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from compress.recipe import load_recipe, save_recipe
from compress.search.baseline import load_baseline
from compress.search.ledger import TrialRecord, read_records, trial_dir, write_csv, write_json
from compress.search.pareto import Point, hypervolume, pareto_front


def front_records(
    records: list[TrialRecord], baseline: dict[str, Any] | None = None
) -> list[TrialRecord]:
    """Feasible, fully evaluated trials on the Pareto front, fastest first; a candidate the
    uncompressed baseline dominates (slower and no better) is no compression and stays off."""
    full = [r for r in records if r.state == "complete" and r.feasible and r.point is not None]
    points = [r.point for r in full]
    if baseline:
        points.append((baseline["latency_ms"], baseline["quality"]))
    return [full[i] for i in pareto_front(points) if i < len(full)]


def reference_point(records: list[TrialRecord], baseline: dict[str, Any]) -> Point:
    """Hypervolume corner: the baseline's latency, and the lowest quality anyone scored."""
    qualities = [r.quality for r in records if r.point is not None] + [baseline["quality"]]
    return (float(baseline["latency_ms"]), float(min(qualities)))


def staged_savings(records: list[TrialRecord]) -> dict[str, Any]:
    """Full evaluations skipped by stopping at stage 1, and the time that saved, estimated from
    the survivors' measured stage-2 time. Survivors without training reuse their stage-1 latency
    and images; those with training redo stage 1's work, which is charged against the saving."""
    stopped = [r for r in records if r.state == "stopped"]
    survivors = [r for r in records if r.state == "complete" and "stage2" in r.times]
    stage2 = statistics.mean(r.times["stage2"] for r in survivors) if survivors else 0.0
    extra = sum(r.times.get("stage1", 0.0) for r in survivors if r.training)
    return {
        "evaluations_saved": len(stopped),
        "trials_evaluated": len([r for r in records if r.state in ("complete", "stopped")]),
        "mean_full_evaluation_s": stage2,
        "time_saved_s": len(stopped) * stage2,
        "stage1_cost_of_survivors_s": extra,
        "net_time_saved_s": len(stopped) * stage2 - extra,
    }


def ray_overhead(records: list[TrialRecord]) -> float | None:
    """Mean seconds per trial between Tune starting it and its ledger entry, minus its own work."""
    gaps = [
        r.times["wall"] - r.times["trial"]
        for r in records
        if r.state == "complete" and "wall" in r.times and "trial" in r.times
    ]
    return statistics.mean(gaps) if gaps else None


def finalize(run: Path, reference: Point | None = None) -> dict[str, Any]:
    """Write RUN/recipes/ (the front), trials.csv and summary.json; return the summary."""
    records = read_records(run)
    baseline = load_baseline(run)
    front = front_records(records, baseline)
    recipes = run / "recipes"
    recipes.mkdir(parents=True, exist_ok=True)
    written = set()
    for r in front:
        recipe = load_recipe(trial_dir(run, r.number) / "recipe.yaml")
        save_recipe(recipe, recipes / f"{recipe.name}.yaml")
        written.add(f"{recipe.name}.yaml")
    for stale in recipes.glob("*.yaml"):
        if stale.name not in written:
            stale.unlink()
    write_csv(run, records, {r.number for r in front})
    ref = reference or (reference_point(records, baseline) if baseline else None)
    summary = {
        "run": run.name,
        "trials": len(records),
        "states": {
            s: sum(r.state == s for r in records)
            for s in ("complete", "stopped", "failed", "interrupted")
        },
        "infeasible": sum(1 for r in records if r.point is not None and not r.feasible),
        "baseline": baseline,
        "front": [
            {
                "number": r.number,
                "recipe": f"recipes/{r.recipe}.yaml",
                "latency_ms": r.latency_ms,
                "quality": r.quality,
                "params": r.params,
                "flags": r.scores.get("flags", []),  # e.g. quantized-but-not-faster
            }
            for r in front
        ],
        "faster_than_baseline": sum(
            1 for r in front if baseline and r.latency_ms < baseline["latency_ms"]
        ),
        "hypervolume": hypervolume([r.point for r in front], ref) if ref else None,
        "hypervolume_reference": list(ref) if ref else None,
        "staged": staged_savings(records),
        "ray_overhead_s_per_trial": ray_overhead(records),
    }
    write_json(run / "summary.json", summary)
    return summary
