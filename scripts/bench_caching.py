"""Feature caching (DeepCache) on the miniature: paired speed-up over the uncached model at the
same step count and the judge's scores (adherence, realism Frechet distance, combined; the
miniature's own judge, not a human-preference score) for intervals 2, 3, 5 and every branch, at
20 and at 8 steps; then where caching stops paying: a 4-step trajectory student (distill_steps,
LoRA), cached and not. Prints the tables of reports/caching.md.

    flock /tmp/heavy.lock python scripts/bench_caching.py --json reports/caching.json
    python scripts/bench_caching.py --quick     # smoke run: 8 prompts, 3 rounds, no student
    # one recipe against the uncached model at 20 steps, with more timing rounds:
    flock /tmp/heavy.lock python scripts/bench_caching.py --rounds 30 --preset PRESET.yaml"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep on shared cores

GUIDANCE = 4.0  # the miniature's usual call


def load() -> str:
    return (
        Path("/proc/loadavg").read_text().split(" ")[0] if Path("/proc/loadavg").exists() else "?"
    )


def cached(base: Any, **knobs: Any) -> Any:
    from compress.apply import apply_recipe
    from compress.recipe import Recipe
    from compress.transforms.runtime.cache import CacheConfig

    pipe = copy.deepcopy(base)
    apply_recipe(pipe, Recipe(name="cache", transforms=[CacheConfig(**knobs)]))
    return pipe


def quality(pipe: Any, steps: int, prompts: int, guidance: float) -> dict[str, Any]:
    from compress.evaluate.quality import get_metric
    from compress.generate import generate
    from compress.transforms.runtime.cache import cache_stats

    metric = get_metric("miniature")
    texts, seeds = metric.prompts(prompts)
    images = generate(pipe, texts, seeds, num_inference_steps=steps, guidance_scale=guidance)
    value, parts = metric.score(images, texts)
    stats = cache_stats(pipe) or {"full_calls": steps}
    return {
        "combined": value,
        "adherence": parts["adherence"],
        "realism_fd": parts["realism_fd"],
        "full_calls": stats["full_calls"],
    }


def speedup(
    pipe: Any, ref: Any, steps: int, rounds: int, guidance: float, ref_steps: int | None = None
) -> dict[str, Any]:
    """Paired speed-up over `ref` sampled at `ref_steps` (default: the same steps)."""
    from compress.evaluate.paired import paired_latency
    from compress.evaluate.settings import EvalSettings

    s = EvalSettings(steps=steps, guidance_scale=guidance, warmup=1, threads=2)
    r = s.model_copy(update={"steps": ref_steps or steps})
    timing = paired_latency(pipe, {"uncached": (ref, r)}, s, rounds=rounds)
    r = timing.speedup["uncached"]
    return {"speedup": r.median, "ci": [r.low, r.high], "ms": timing.median_ms()}


def measure(
    name: str, pipe: Any, ref: Any, steps: int, args: Any, guidance: float, ref_steps: int = 0
) -> dict:
    """Judge scores, and the paired speed-up over `ref` at `ref_steps` (0: `steps`)."""
    row = {"setting": name, "steps": steps}
    row |= quality(pipe, steps, args.prompts, guidance)
    if pipe is not ref or ref_steps:
        row |= speedup(pipe, ref, steps, args.rounds, guidance, ref_steps)
    print(f"  {json.dumps(row)}", flush=True)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| setting | steps | full calls/image | paired speed-up (95% CI) | adherence | "
        "realism FD | combined |\n|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        sp = f"{r['speedup']:.2f}x [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]" if "speedup" in r else "1"
        lines.append(
            f"| {r['setting']} | {r['steps']} | {r['full_calls']} | {sp} | {r['adherence']:.3f} | "
            f"{r['realism_fd']:.1f} | {r['combined']:.3f} |"
        )
    return "\n".join(lines)


def preset(base: Any, path: Path, args: Any) -> list[dict[str, Any]]:
    """A recipe file applied to the miniature, and the uncached model at 8 and 6 steps, each
    timed against the uncached model at 20 steps."""
    from compress.apply import apply_recipe
    from compress.recipe import load_recipe

    pipe = copy.deepcopy(base)
    applied = apply_recipe(pipe, load_recipe(path))
    print(f"recorded: {json.dumps(applied.records[-1].metadata)}", flush=True)
    rows = [measure("uncached", base, base, 20, args, GUIDANCE)]
    rows.append(measure(f"{path.name}", pipe, base, 20, args, GUIDANCE))
    for steps in (8, 6):  # the other way to spend less: fewer steps, against 20 uncached
        rows.append(measure("uncached (vs 20 steps)", base, base, steps, args, GUIDANCE, 20))
    return rows


def student(base: Any, updates: int) -> Any:
    """A 4-step trajectory student (LoRA r16) distilled from `base`, as in distillation.md."""
    from compress.apply import apply_recipe
    from compress.context import RunContext
    from compress.recipe import Recipe
    from compress.transforms.distill.steps import DistillStepsConfig

    pipe = copy.deepcopy(base)
    cfg = DistillStepsConfig(
        method="trajectory",
        student_steps=4,
        teacher_substeps=5,
        guidance_scale=GUIDANCE,
        data="miniature-digits",
        samples=1437,
        steps=updates,
        batch_size=16,
        lr=1e-3,
        lora_rank=16,
    )
    t0 = time.perf_counter()
    apply_recipe(pipe, Recipe(name="student", transforms=[cfg]), RunContext(teacher=base))
    print(f"trained the 4-step student in {time.perf_counter() - t0:.0f} s", flush=True)
    return pipe


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 prompts, 3 rounds, 20 steps only")
    ap.add_argument("--prompts", type=int, default=48, help="evaluation prompts (judge)")
    ap.add_argument("--rounds", type=int, default=10, help="paired timing rounds per row")
    ap.add_argument("--student-updates", type=int, default=300, help="0: skip the student")
    ap.add_argument("--preset", type=Path, help="measure only this recipe, at 20 steps")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.quick:
        args.prompts, args.rounds, args.student_updates = 8, 3, 0

    import torch

    from compress._quiet import import_heavy
    from compress.models.loading import load_pipeline
    from compress.transforms.runtime._deepcache import skip_count

    import_heavy()
    torch.manual_seed(0)
    t0, load_before = time.perf_counter(), load()
    base = load_pipeline("miniature")
    branches = range(skip_count(base.unet) - 1)
    out: dict[str, Any] = {"load_before": load_before, "tables": {}}
    if args.preset:
        out["tables"][str(args.preset)] = rows = preset(base, args.preset, args)
        print(table(rows), flush=True)
    for steps in () if args.preset else (20,) if args.quick else (20, 8):
        print(f"-- {steps} steps, guidance {GUIDANCE}", flush=True)
        rows = [measure("uncached", base, base, steps, args, GUIDANCE)]
        for interval in (2, 3, 5):
            for b in branches:
                pipe = cached(base, interval=interval, branch=b)
                rows.append(
                    measure(f"interval {interval}, branch {b}", pipe, base, steps, args, GUIDANCE)
                )
        pipe = cached(base, interval=3, branch=0, schedule="nonuniform")
        rows.append(measure("interval 3, branch 0, non-uniform", pipe, base, steps, args, GUIDANCE))
        out["tables"][f"{steps} steps"] = rows
        print(table(rows), flush=True)
    if args.student_updates and not args.preset:
        print("-- 4-step trajectory student (guidance folded: guidance_scale 1)", flush=True)
        fast = student(base, args.student_updates)
        rows = [measure("student, uncached", fast, fast, 4, args, 1.0)]
        for interval, b in ((2, 0), (2, 2), (2, 4), (3, 0)):
            pipe = cached(fast, interval=interval, branch=b)
            rows.append(
                measure(f"student, interval {interval}, branch {b}", pipe, fast, 4, args, 1.0)
            )
        rows.append(measure("teacher, 4 steps, uncached", base, base, 4, args, GUIDANCE))
        pipe = cached(base, interval=2, branch=0)
        rows.append(
            measure("teacher, 4 steps, interval 2, branch 0", pipe, base, 4, args, GUIDANCE)
        )
        out["tables"]["4-step student"] = rows
        print(table(rows), flush=True)
    out |= {"load_after": load(), "seconds": time.perf_counter() - t0}
    print(
        f"load average {out['load_before']} before, {out['load_after']} after; "
        f"{out['seconds']:.0f} s",
        flush=True,
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
