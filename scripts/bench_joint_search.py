"""The joint front against each single-technique space: same model, same budget, one reference.

    python scripts/bench_joint_search.py --out /tmp/joint --json reports/joint-search.json

Runs `compress search` on the miniature with the same time budget for: the joint space
(`miniature`), each single-technique space (`miniature-sampler`, `-pruning`, `-quantize`,
`-distill`), and the joint space again with early stopping turned off (`--no-staged`). One after
the other, each with the machine to itself. Hypervolumes share one reference point: relative
latency 1 (the uncompressed model) and the lowest quality any run scored fully. Prints, per run:
hypervolume, the fastest front recipe at >= 95% and >= 97% of the baseline's quality, training
seconds spent, saved by the prefix cache and saved by early stopping, and wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

RUNS = [
    ("joint", "miniature", True),
    ("sampler", "miniature-sampler", True),
    ("pruning", "miniature-pruning", True),
    ("quantize", "miniature-quantize", True),
    ("distill", "miniature-distill", True),
    ("joint without early stopping", "miniature", False),  # no comma: --only splits on them
]


def one_run(space: str, staged: bool, budget: str, trials: int, out: Path) -> dict[str, Any]:
    from compress.search.config import resolve_config
    from compress.search.runner import run_search

    cfg, sp = resolve_config(
        space, out=str(out), time_budget=budget, trials=trials, staged=None if staged else False
    )
    load = os.getloadavg()
    t0 = time.perf_counter()
    summary = run_search(cfg, sp, resume=(out / "search.json").exists())
    return {"summary": summary, "wall_s": time.perf_counter() - t0, "loadavg_before": load}


def reused_run(folder: Path) -> dict[str, Any]:
    """A finished run's summary, and its wall time as RUN/timings.json gives it (Ray start,
    baseline and tuning of every session; not the interpreter's start-up)."""
    summary = json.loads((folder / "summary.json").read_text())
    sessions = json.loads((folder / "timings.json").read_text())
    keys = ("ray_init_s", "baseline_s", "tune_s")
    return {
        "summary": summary,
        "wall_s": sum(t.get(k, 0.0) for t in sessions for k in keys),
        "loadavg_before": None,
        "folder": str(folder),
    }


def best_at(front: list[dict[str, Any]], quality: float) -> dict[str, Any] | None:
    """The fastest front recipe with at least `quality`."""
    ok = [p for p in front if p["quality"] >= quality]
    return max(ok, key=lambda p: p["speedup"]) if ok else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--budget", default="11m", help="each run's time budget")
    p.add_argument("--trials", type=int, default=64, help="each run's trial cap")
    p.add_argument("--only", default="", help="comma-separated run labels (default: all)")
    p.add_argument("--out", type=Path, default=Path("runs") / f"joint-{int(time.time())}")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--reuse",
        action="append",
        default=[],
        metavar="LABEL=RUN",
        help="take a finished run's folder for LABEL instead of running it (e.g. the main job's "
        "`compress search` run for 'joint': the same space, budget and model)",
    )
    args = p.parse_args()
    from compress._quiet import import_heavy
    from compress.search.ledger import read_records
    from compress.search.pareto import hypervolume

    import_heavy()
    chosen = {s.strip() for s in args.only.split(",") if s.strip()}
    reused = dict(r.split("=", 1) for r in args.reuse)
    results: dict[str, Any] = {}
    for label, space, staged in RUNS:
        if label in reused:
            results[label] = reused_run(Path(reused[label]))
            continue
        if chosen and label not in chosen:
            continue
        folder = args.out / label.replace(" ", "-")
        print(f"== {label}: {space}, staged {staged}, budget {args.budget}", flush=True)
        results[label] = one_run(space, staged, args.budget, args.trials, folder)
        results[label]["folder"] = str(folder)
    qualities = [
        r.quality
        for res in results.values()
        for r in read_records(Path(res["folder"]))
        if r.state == "complete" and r.point is not None
    ]
    ref = (1.0, min(qualities))
    rows = []
    for label, res in results.items():
        s = res["summary"]
        base = s["baseline"]["quality"]
        front = s["front"]
        row = {
            "run": label,
            "hypervolume": hypervolume([(1 / f["speedup"], f["quality"]) for f in front], ref),
            "front": len(front),
            "trials": s["trials"],
            "states": s["states"],
            "baseline_quality": base,
            "best_at_95": best_at(front, 0.95 * base),
            "best_at_97": best_at(front, 0.97 * base),
            "training_seconds_spent": s["training_seconds_spent"],
            "training_seconds_saved_by_reuse": s["training_seconds_saved"],
            "training_seconds_saved_by_early_stopping": s["early_stopping"][
                "training_seconds_saved"
            ],
            "cache_hits": s["cache_hits"],
            "cache_misses": s["cache_misses"],
            "wall_s": res["wall_s"],
            "loadavg_before": res["loadavg_before"],
        }
        rows.append(row)

        def fmt(b: dict[str, Any] | None) -> str:
            if b is None:
                return "none"
            lo, hi = b["speedup_ci"]
            return (
                f"{b['speedup']:.2f}x [{lo:.2f}, {hi:.2f}] q {b['quality']:.3f} {b['transforms']}"
            )

        print(
            f"{label}: HV {row['hypervolume']:.4f}, front {row['front']}, trials {row['trials']} "
            f"{row['states']}, wall {row['wall_s']:.0f} s\n"
            f"  >=95%: {fmt(row['best_at_95'])}\n  >=97%: {fmt(row['best_at_97'])}\n"
            f"  training {row['training_seconds_spent']:.0f} s spent, "
            f"{row['training_seconds_saved_by_reuse']:.0f} s saved by reuse "
            f"({row['cache_hits']} hits, {row['cache_misses']} misses), "
            f"{row['training_seconds_saved_by_early_stopping']:.0f} s by early stopping",
            flush=True,
        )
    print(f"reference point {ref}; load average now {os.getloadavg()}")
    if args.json:
        from compress.fs import write_atomic

        payload = {"reference": ref, "budget": args.budget, "rows": rows}
        write_atomic(args.json, json.dumps(payload, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
