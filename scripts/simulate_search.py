"""An 8-hour search on 1, 8 and 32 GPUs, simulated in minutes with the real driver.

    python scripts/simulate_search.py --runs RUN [RUN ...] --gpus 1 8 32 --hours 8 \
        --minutes 6 --json reports/search-simulation.json

Each simulated search is `compress search` over the joint miniature space on a local Ray
cluster that declares N logical GPUs: the runner, the two-level searcher (Optuna studies and the
hypervolume-per-second rule), Ray Tune's scheduling with the rung scheduler, the ledger and the
prefix cache are the real ones. Only the trial is replaced: it sleeps for what
`compress search --plan --space sd15 --target-gpu H100` predicts (training by transform kind,
one evaluation), scaled so that `--hours` pass in `--minutes`, and reports the scores a surrogate
fitted to measured miniature trials (`--runs`: finished miniature searches) gives its knobs.
Prints and writes, per GPU count: GPU utilisation (simulated seconds the trials held a GPU over
GPUs x budget), trials by origin (start point, composition, new prefix, suffix) and state,
prefix-cache hits, and the hypervolume of the front against simulated time.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from pathlib import Path
from typing import Any


def plan_costs(hours_scale: float) -> dict[str, Any]:
    from compress.search.config import resolve_config
    from compress.search.plan import make_plan

    cfg, sp = resolve_config("sd15", model="sd15", out="<plan>", target_gpu="H100")
    plan = make_plan(cfg, sp)
    training = {}
    for r in plan.rows:
        if r.stage == "training":
            training[r.what.split(":")[0]] = r.seconds
    evaluation = next(r.seconds for r in plan.rows if r.stage == "evaluation")
    return {"training": training, "evaluation": evaluation, "plan": plan.to_json()}


def one(gpus: int, hours: float, minutes: float, out: Path, costs: Any, surrogate: Any) -> dict:
    import ray

    from compress.search.config import resolve_config
    from compress.search.ledger import read_records, trial_dir, write_json
    from compress.search.pareto import hypervolume, pareto_front
    from compress.search.runner import run_search
    from compress.search.simulate import simulated_trial

    scale = minutes * 60 / (hours * 3600)
    costs.scale = scale
    run = out / f"gpus-{gpus}"
    cfg, sp = resolve_config(
        "miniature",
        out=str(run),
        trials=100_000,
        gpus_per_trial=1,
        cpus_per_trial=0.1,
        max_concurrent=gpus,
        time_budget=f"{hours * 3600 * scale}s",
    )
    (run / "baseline").mkdir(parents=True, exist_ok=True)
    write_json(run / "baseline" / "scores.json", {"quality": surrogate.baseline_quality})
    ray.init(num_cpus=max(4, gpus), num_gpus=gpus, include_dashboard=False, log_to_driver=False)
    t0 = time.time()
    try:
        run_search(
            cfg, sp, trainable=functools.partial(simulated_trial, costs=costs, surrogate=surrogate)
        )
    finally:
        ray.shutdown()
    wall = time.time() - t0
    records = read_records(run)
    budget = hours * 3600
    busy = 0.0
    timeline = []
    for r in records:
        path = trial_dir(run, r.number) / "trial.json"
        done_h = (path.stat().st_mtime - t0) / scale / 3600
        busy += r.times.get("busy", 0.0)
        timeline.append((done_h, r))
    timeline.sort(key=lambda x: x[0])
    curve, points = [], []
    reference = (
        1.0,
        min([r.quality for r in records if r.quality is not None] + [surrogate.baseline_quality]),
    )
    for done_h, r in timeline:
        if r.state == "complete" and r.point and r.faster:
            points.append(r.point)
        front = [points[i] for i in pareto_front(points)]
        curve.append((round(done_h, 3), hypervolume(front, reference)))
    by_origin: dict[str, dict[str, int]] = {}
    for r in records:
        by_origin.setdefault(r.origin or "?", {}).setdefault(r.state, 0)
        by_origin[r.origin or "?"][r.state] += 1
    hits = sum(len(r.cache.get("hits", [])) for r in records)
    return {
        "gpus": gpus,
        "simulated_hours": hours,
        "wall_s": wall,
        "scale": scale,
        "trials": len(records),
        "by_origin": by_origin,
        "cache_hits": hits,
        "utilisation": busy / (gpus * budget),
        "hypervolume": curve[-1][1] if curve else 0.0,
        "hypervolume_curve": curve,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", type=Path, required=True)
    ap.add_argument("--gpus", nargs="+", type=int, default=[1, 8, 32])
    ap.add_argument("--hours", type=float, default=8.0)
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/simulate-search"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

    from compress.search.levels import split_levels
    from compress.search.simulate import SimCosts, fit_surrogate, read_ledgers
    from compress.search.space import load_space

    records, baseline = read_ledgers(args.runs)
    surrogate = fit_surrogate(records, baseline)
    planned = plan_costs(1.0)
    prefix = split_levels(load_space("miniature")).prefix
    costs = SimCosts(planned["training"], planned["evaluation"], 1.0, prefix)
    print(
        f"surrogate: {surrogate.trials} measured trials, noise {surrogate.noise}, "
        f"rung gaps {surrogate.rung_gap}"
    )
    print(f"costs (simulated s): training {costs.training}, evaluation {costs.evaluation:.1f}")
    results = []
    for gpus in args.gpus:
        res = one(gpus, args.hours, args.minutes, args.out, costs, surrogate)
        results.append(res)
        print(
            f"{gpus:>3} GPUs: {res['trials']} trials {res['by_origin']}, cache hits "
            f"{res['cache_hits']}, utilisation {100 * res['utilisation']:.0f}%, hypervolume "
            f"{res['hypervolume']:.4f} ({res['wall_s']:.0f} s wall)"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "load": os.getloadavg(),
                    "costs": planned,
                    "surrogate_trials": surrogate.trials,
                    "results": results,
                },
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
