"""Turn the ledger into outputs: front recipes, trials.csv, hypervolume and summary.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.recipe import load_recipe, save_recipe
from compress.search.baseline import load_baseline
from compress.search.ledger import TrialRecord, read_records, trial_dir, write_csv, write_json
from compress.search.pareto import Point, hypervolume, pareto_front

BASELINE_POINT = 1.0  # the uncompressed model's relative latency


def objectives_of(run: Path) -> list[str]:
    """The objectives of the run's space (its space.yaml): latency, quality[, memory]."""
    import yaml

    path = run / "space.yaml"
    spec = yaml.safe_load(path.read_text()) if path.is_file() else None
    return list((spec or {}).get("objectives") or ["latency", "quality"])


def front_records(
    records: list[TrialRecord], baseline: dict[str, Any] | None = None, memory: bool = False
) -> list[TrialRecord]:
    """Feasible, fully evaluated trials on the Pareto front of (relative latency, quality[, peak
    memory where it is an objective]), fastest first. A candidate whose paired speed-up interval
    reaches 1 is no compression and never on the front; nor is one the uncompressed baseline
    dominates."""
    full = [
        r
        for r in records
        if r.state == "complete" and r.feasible and r.faster and r.objectives(memory) is not None
    ]
    points = [r.objectives(memory) for r in full]
    base = baseline_point(baseline, memory) if baseline else None
    if base is not None:
        points.append(base)
    return [full[i] for i in pareto_front(points) if i < len(full)]


def baseline_point(baseline: dict[str, Any], memory: bool = False) -> Point | None:
    """The uncompressed model's point; None where memory is an objective it was not measured in."""
    if not memory:
        return (BASELINE_POINT, baseline["quality"])
    peak = (baseline.get("scores") or {}).get("peak_memory_mb")
    return None if peak is None else (BASELINE_POINT, baseline["quality"], peak)


def reference_point(
    records: list[TrialRecord], baseline: dict[str, Any], memory: bool = False
) -> Point:
    """Hypervolume corner: the baseline's relative latency (1), the lowest quality scored and,
    where memory is an objective, the largest peak memory measured (the baseline's included)."""
    qualities = [r.quality for r in records if r.point is not None] + [baseline["quality"]]
    if not memory:
        return (BASELINE_POINT, float(min(qualities)))
    base = baseline_point(baseline, memory)
    peaks = [p[2] for p in [*(r.objectives(memory) for r in records), base] if p is not None]
    return (BASELINE_POINT, float(min(qualities)), float(max(peaks, default=0.0)))


def trial_entry(r: TrialRecord) -> dict[str, Any]:
    """One trial in summary.json: its state, scores, peak memory and constraint violations."""
    return {
        "number": r.number,
        "state": r.state,
        "feasible": r.feasible,
        "constraints": r.constraints,  # name -> signed violation (> 0: broken)
        "speedup": r.speedup,
        "quality": r.quality,
        "peak_memory_mb": r.peak_memory_mb,
    }


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


def proposed_by(r: TrialRecord, by_number: dict[int, TrialRecord]) -> str:
    """Who chose this candidate's knob values (a finishing variant: who chose its parent's)."""
    if r.origin == "finish" and r.parent in by_number and r.parent != r.number:
        return f"{proposed_by(by_number[r.parent], by_number)}; finished (trial {r.parent})"
    if r.origin in ("start", "composition"):
        return {"start": "a start point", "composition": "a composition of start points"}[r.origin]
    level = {"prefix": "new prefix", "suffix": "suffix"}.get(r.origin or "", "trial")
    _, _, how = (r.why or "").partition("proposed by ")
    return f"{level}: {how or 'the sampler'}"


def front_entry(run: Path, r: TrialRecord, by_number: dict[int, TrialRecord]) -> dict[str, Any]:
    return {
        "number": r.number,
        "proposed_by": proposed_by(r, by_number),
        "recipe": f"recipes/{r.recipe}.yaml",
        "export": export_command(run, r),
        "speedup": r.speedup,
        "speedup_ci": r.speedup_ci,
        "quality": r.quality,
        "latency_ms": r.latency_ms,  # the candidate's own median in its worker
        "reference_latency_ms": r.reference_latency_ms,  # the baseline's, in the same rounds
        "peak_memory_mb": r.peak_memory_mb,  # sampling at the evaluation batch, MiB
        "transforms": [t.get("kind") for t in r.transforms],
        "params": r.params,
        "flags": r.scores.get("flags", []),  # e.g. quantized-but-not-faster
    }


def finalize(run: Path, reference: Point | None = None) -> dict[str, Any]:
    """Write RUN/recipes/ (the front), trials.csv and summary.json; return the summary."""
    records = read_records(run)
    baseline = load_baseline(run)
    objectives = objectives_of(run)
    memory = "memory" in objectives
    front = front_records(records, baseline, memory)
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
    ref = reference or (reference_point(records, baseline, memory) if baseline else None)
    summary = {
        "run": run.name,
        "objectives": objectives,
        "trials": len(records),
        "states": {
            s: sum(r.state == s for r in records)
            for s in ("complete", "stopped", "failed", "interrupted")
        },
        "infeasible": sum(1 for r in records if r.point is not None and not r.feasible),
        "no_faster_than_baseline": sum(1 for r in records if r.point is not None and not r.faster),
        "baseline": baseline,
        "front": [front_entry(run, r, {x.number: x for x in records}) for r in front],
        "hypervolume": hypervolume([r.objectives(memory) for r in front], ref) if ref else None,
        "hypervolume_reference": list(ref) if ref else None,
        "per_trial": [trial_entry(r) for r in records],
        **cache_use(records),
        "early_stopping": early_stopping(records),
        "ray_overhead_s_per_trial": ray_overhead(records),
    }
    write_json(run / "summary.json", summary)
    return summary
