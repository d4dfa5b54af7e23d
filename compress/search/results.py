"""Turn the ledger into outputs: front recipes, trials.csv, hypervolume and summary.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.recipe import load_recipe, save_recipe
from compress.search.baseline import load_baseline
from compress.search.ledger import TrialRecord, read_records, trial_dir, write_csv, write_json
from compress.search.pareto import Point, hypervolume, pareto_front

BASELINE_POINT = 1.0  # the uncompressed model's relative latency


def front_records(
    records: list[TrialRecord], baseline: dict[str, Any] | None = None
) -> list[TrialRecord]:
    """Feasible, fully evaluated trials on the Pareto front of (relative latency, quality),
    fastest first. A candidate whose paired speed-up interval reaches 1 is no compression and
    never on the front; nor is one the uncompressed baseline dominates."""
    full = [
        r
        for r in records
        if r.state == "complete" and r.feasible and r.faster and r.point is not None
    ]
    points = [r.point for r in full]
    if baseline:
        points.append((BASELINE_POINT, baseline["quality"]))
    return [full[i] for i in pareto_front(points) if i < len(full)]


def reference_point(records: list[TrialRecord], baseline: dict[str, Any]) -> Point:
    """Hypervolume corner: the baseline's relative latency (1) and the lowest quality scored."""
    qualities = [r.quality for r in records if r.point is not None] + [baseline["quality"]]
    return (BASELINE_POINT, float(min(qualities)))


def cache_use(records: list[TrialRecord]) -> dict[str, Any]:
    """Prefix-cache hits and misses over all trials, and the training they saved or cost."""
    hits = [h for r in records for h in r.cache.get("hits", [])]
    misses = [m for r in records for m in r.cache.get("misses", [])]
    return {
        "cache_hits": len(hits),
        "cache_misses": len(misses),
        "training_seconds_saved": sum(h["seconds"] for h in hits),
        "training_seconds_spent": sum(m["seconds"] for m in misses),
    }


def early_stopping(records: list[TrialRecord]) -> dict[str, Any]:
    """Trials stopped before their full evaluation, and the training their stop saved,
    estimated from each one's own measured seconds per training step."""
    stopped = [r for r in records if r.state == "stopped"]
    saved = 0.0
    for r in stopped:
        fraction = (r.stopped_at or {}).get("training_fraction")
        trained = [m for m in r.cache.get("misses", []) if m.get("trained_steps")]
        steps = _last_training_steps(r)
        if fraction is None or fraction >= 1 or not trained or not steps:
            continue
        rate = sum(m["seconds"] for m in trained) / sum(m["trained_steps"] for m in trained)
        saved += (steps - round(fraction * steps)) * rate
    return {
        "stopped": len(stopped),
        "stopped_while_training": sum(
            1 for r in stopped if (r.stopped_at or {}).get("training_fraction") not in (None, 1.0)
        ),
        "training_seconds_saved": saved,
    }


def _last_training_steps(r: TrialRecord) -> int | None:
    from compress.transforms.base import Stage, registry

    specs = registry()
    training = [
        t
        for t in r.transforms
        if t.get("kind") in specs and specs[t["kind"]].stage == Stage.training
    ]
    return training[-1].get("steps") if training else None


def ray_overhead(records: list[TrialRecord]) -> float | None:
    """Mean seconds per trial between Tune starting it and its ledger entry, minus its own work."""
    import statistics

    gaps = [
        r.times["wall"] - r.times["trial"]
        for r in records
        if r.state == "complete" and "wall" in r.times and "trial" in r.times
    ]
    return statistics.mean(gaps) if gaps else None


def export_command(run: Path, r: TrialRecord) -> str:
    """The command that writes this trial's candidate as scored, without training it again."""
    import shlex

    return f"compress export {shlex.quote(str(run))} {r.number} --out out/{r.recipe}"


def front_entry(run: Path, r: TrialRecord) -> dict[str, Any]:
    return {
        "number": r.number,
        "recipe": f"recipes/{r.recipe}.yaml",
        "export": export_command(run, r),
        "speedup": r.speedup,
        "speedup_ci": r.speedup_ci,
        "quality": r.quality,
        "latency_ms": r.latency_ms,  # the candidate's own median in its worker
        "reference_latency_ms": r.reference_latency_ms,  # the baseline's, in the same rounds
        "transforms": [t.get("kind") for t in r.transforms],
        "params": r.params,
        "flags": r.scores.get("flags", []),  # e.g. quantized-but-not-faster
    }


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
        "no_faster_than_baseline": sum(1 for r in records if r.point is not None and not r.faster),
        "baseline": baseline,
        "front": [front_entry(run, r) for r in front],
        "hypervolume": hypervolume([r.point for r in front], ref) if ref else None,
        "hypervolume_reference": list(ref) if ref else None,
        **cache_use(records),
        "early_stopping": early_stopping(records),
        "ray_overhead_s_per_trial": ray_overhead(records),
    }
    write_json(run / "summary.json", summary)
    return summary
