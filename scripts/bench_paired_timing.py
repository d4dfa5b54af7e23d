"""How far the search's latency can be trusted, measured on the miniature in one run.

    python scripts/bench_paired_timing.py --json reports/paired-timing.json

1. One search run whose five trials all time the same recipe (DPM-Solver++ at 8 steps, guidance
   4), each in its own trial against the baseline: the spread of their speed-ups against their
   intervals.
2. One search run of five trials of the uncompressed configuration itself (DPM-Solver++, 20
   steps, guidance 4): each interval should contain 1.0, and the front should stay empty.
3. A guidance-distilled student at 20 steps against the guided teacher, paired in this process:
   its denoiser time (one call per step instead of a batch of two) as a ratio with its interval.

Each search gives its trials five identical recipes through a `repeat` switch, so that no trial
reuses another's scores. The machine's load is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

SAME = {"scheduler": "dpmsolver++", "steps": 8, "guidance_scale": 4.0}
IDENTITY = {"scheduler": "dpmsolver++", "steps": 20, "guidance_scale": 4.0}


def space(name: str, sampler: dict[str, Any], rounds: int) -> dict[str, Any]:
    return {
        "name": name,
        "search": {
            "model": "miniature",
            "metric": "miniature",
            "trials": 5,
            "max_concurrent": 1,
            "cpus_per_trial": 2,
        },
        "evaluation": {"num_prompts": 8, "timed_runs": rounds, "warmup": 1},
        "baseline": {"steps": 20, "guidance_scale": 4.0},
        "staged": {"enabled": False},
        "transforms": {"sampler": {"fixed": sampler}},
        "knobs": {"repeat": {"type": "categorical", "choices": [0, 1, 2, 3, 4]}},
    }


def search(name: str, sampler: dict[str, Any], rounds: int, out: Path) -> dict[str, Any]:
    import yaml

    from compress.search.config import resolve_config
    from compress.search.ledger import read_records
    from compress.search.runner import run_search

    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space(name, sampler, rounds)))
    cfg, sp = resolve_config(str(path), out=str(out / name))
    t0 = time.perf_counter()
    summary = run_search(cfg, sp, points=[{"repeat": i} for i in range(5)])
    rows = [
        {
            "trial": r.number,
            "speedup": r.speedup,
            "speedup_ci": r.speedup_ci,
            "latency_ms": r.latency_ms,
            "baseline_ms": r.reference_latency_ms,
        }
        for r in read_records(cfg.run)
    ]
    return {"rows": rows, "front": summary["front"], "seconds": time.perf_counter() - t0}


def guidance_student(steps: int, rounds: int) -> dict[str, Any]:
    from compress.apply import apply_recipe
    from compress.evaluate.paired import paired_latency
    from compress.evaluate.settings import EvalSettings
    from compress.models.loading import load_pipeline
    from compress.recipe import Recipe

    teacher, student = load_pipeline("miniature"), load_pipeline("miniature")
    recipe = Recipe(
        name="guided-student",
        transforms=[
            {"kind": "distill_guidance", "steps": steps, "batch_size": 16, "lr": 0.0003,
             "data": "miniature-digits", "samples": 1437},
            {"kind": "sampler", "scheduler": "dpmsolver++", "steps": 20, "guidance_scale": 4.0},
        ],
    )  # fmt: skip
    apply_recipe(student, recipe)
    s = EvalSettings(threads=1, warmup=1)
    pair = paired_latency(student, {"teacher": (teacher, s)}, s, rounds=rounds)
    denoiser = pair.component_ratio["teacher"]["denoiser"]
    total = pair.speedup["teacher"]
    return {
        "training_steps": steps,
        "denoiser_time_ratio": denoiser.median,
        "denoiser_time_ratio_ci": denoiser.ci,
        "speedup": total.median,
        "speedup_ci": total.ci,
        "calls_per_run": pair.calls_per_run,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=10, help="paired timing rounds per trial")
    p.add_argument("--student-steps", type=int, default=200)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    from compress._quiet import import_heavy

    import_heavy()
    load = {"before": os.getloadavg()}
    out = Path(tempfile.mkdtemp(prefix="paired-"))
    result = {
        "same_recipe": search("same-recipe", SAME, args.rounds, out),
        "identity": search("identity", IDENTITY, args.rounds, out),
        "guidance_student": guidance_student(args.student_steps, args.rounds),
    }
    load["after"] = os.getloadavg()
    result["loadavg"] = load
    for name in ("same_recipe", "identity"):
        print(f"{name}: front {len(result[name]['front'])} recipes")
        for r in result[name]["rows"]:
            lo, hi = r["speedup_ci"]
            print(
                f"  trial {r['trial']}: {r['speedup']:.3f}x [{lo:.3f}, {hi:.3f}] "
                f"({r['latency_ms']:.1f} ms vs {r['baseline_ms']:.1f} ms)"
            )
    g = result["guidance_student"]
    lo, hi = g["denoiser_time_ratio_ci"]
    print(
        f"guidance student, 20 steps: denoiser time {g['denoiser_time_ratio']:.3f}x "
        f"[{lo:.3f}, {hi:.3f}] of the teacher's, end to end {g['speedup']:.3f}x "
        f"{g['speedup_ci']}; calls {g['calls_per_run']}"
    )
    print(f"load average before {load['before']}, after {load['after']}")
    if args.json:
        from compress.fs import write_atomic

        write_atomic(args.json, json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
