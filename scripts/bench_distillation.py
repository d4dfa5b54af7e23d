"""Distillation figures on the miniature: the teacher at 20 steps with guidance and at 4/2/1
steps, a guidance-distilled student (one denoiser call per step), latent consistency students
(full fine-tune and LoRA; LCMScheduler) and trajectory students (DDIM, one per step count) at
4/2/1 steps. Quality is the miniature's own judge (adherence, realism Frechet distance, combined;
not a human-preference score); latency is the median CPU time per image. One consistency student
serves every step count (Luo et al. 2023); a trajectory student is trained for its own count, and
its margin over the teacher at that count gets a bootstrap interval on unseen seeds.

    python scripts/bench_distillation.py              # the full table (about 10 min on 2 idle CPUs)
    python scripts/bench_distillation.py --quick      # smoke run: 2 training steps, 4 prompts"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

GUIDANCE = 4.0  # the miniature's usual call: 20 steps, guidance 4


def denoiser_calls(pipe: Any, kwargs: dict[str, Any]) -> int:
    """Denoiser evaluations for one image (a classifier-free guided step counts twice)."""
    from compress.generate import generate

    seen: list[int] = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        generate(pipe, ["a red digit seven"], 0, output_type="latent", **kwargs)
    finally:
        handle.remove()
    return sum(seen)


def row(name: str, pipe: Any, settings: Any, train_s: float | None) -> dict[str, Any]:
    from compress.evaluate.latency import call_kwargs
    from compress.evaluate.run import evaluate

    kwargs = call_kwargs(pipe, settings)
    kwargs = {k: kwargs[k] for k in ("num_inference_steps", "guidance_scale")}
    score = evaluate(pipe, settings)
    out = {
        "setting": name,
        "calls": denoiser_calls(pipe, kwargs),
        "adherence": score.quality_parts["adherence"],
        "realism_fd": score.quality_parts["realism_fd"],
        "combined": score.quality,
        "latency_ms": score.latency_ms,
        "train_s": train_s,
        **kwargs,
    }
    print(f"  {name}: {json.dumps({k: v for k, v in out.items() if k != 'setting'})}", flush=True)
    return out


def margin(
    student: Any,
    teacher: Any,
    steps: int,
    seeds: int,
    against: str = "the teacher",
    rounds: int = 2000,
    **student_kw: Any,
) -> dict:
    """Student minus teacher (both at `steps`) in the combined score on every evaluation prompt
    with `seeds` new seeds each, and its 95% interval from a paired bootstrap over images."""
    import numpy as np

    from compress.generate import generate
    from compress.models.miniature.judge import FD_WEIGHT, MiniatureJudge
    from compress.models.miniature.prompts import EVAL_PROMPTS, EVAL_SEEDS

    judge = MiniatureJudge.load()
    prompts = [p for p in EVAL_PROMPTS for _ in range(seeds)]
    seeds_ = [s + 10_000 * (j + 1) for s in EVAL_SEEDS for j in range(seeds)]  # unseen in the table
    parts = []
    for pipe, kw in ((student, student_kw), (teacher, {"guidance_scale": GUIDANCE})):
        images = generate(pipe, prompts, seeds_, num_inference_steps=steps, **kw)
        parts.append(judge.per_image(images, prompts))

    def combined(idx: Any) -> float:
        (a_s, f_s), (a_t, f_t) = parts
        fd_s, fd_t = judge.realism_fd(f_s[idx]), judge.realism_fd(f_t[idx])
        adh = np.nanmean(a_s[idx]) - np.nanmean(a_t[idx])
        return float(adh - FD_WEIGHT * (fd_s - fd_t))

    rng = np.random.default_rng(0)
    boot = [combined(rng.integers(0, len(prompts), len(prompts))) for _ in range(rounds)]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    out = {"images": len(prompts), "diff": combined(np.arange(len(prompts))), "ci95": [lo, hi]}
    print(f"  margin over {against} at {steps} steps: {json.dumps(out)}", flush=True)
    return out


def fine_tuned_copy(base: Any, updates: int, seed: int = 1) -> Any:
    """Another checkpoint of the same base: `base` trained further on the denoising loss."""
    import torch.nn.functional as F

    from compress.train import TrainSettings
    from compress.train import train as fit
    from compress.train.data import build_dataset
    from compress.train.diffusion import noisy, predict, training_scheduler

    other = copy.deepcopy(base)
    data, _ = build_dataset(other, "miniature-digits", n=1437, seed=seed)
    sched = training_scheduler(other)

    def loss(unet: Any, _: Any, batch: dict[str, Any]) -> Any:
        x_t, t, target = noisy(sched, batch.pop("latents"))
        return F.mse_loss(predict(unet, x_t, t, batch), target)

    settings = TrainSettings(steps=updates, lr=1e-4, seed=seed, description="fine-tune")
    fit(other.unet, loss, data.loader(16, seed), settings)
    other.unet.eval()
    return other


def portability(base: Any, ctx: Any, steps: int, args: Any, settings: Any) -> list[dict]:
    """The LoRA learned on `base` loaded onto a further fine-tuned copy, against that copy
    sampled at the same step count with guidance (LCM-LoRA's portability, Luo et al. 2023)."""
    import tempfile

    from compress.transforms.distill._trajectory import student_scheduler
    from compress.transforms.distill.steps import save_lora

    other = fine_tuned_copy(base, args.portability)
    rows = [
        row(f"fine-tuned copy {k} steps", other, settings(k, GUIDANCE), None) for k in (20, steps)
    ]
    fast = copy.deepcopy(other)
    with tempfile.TemporaryDirectory() as tmp:
        fast.load_lora_weights(save_lora(fast, ctx.cache["distill_steps.lora"], Path(tmp) / "a"))
    fast.fuse_lora()
    fast.unload_lora_weights()
    fast.scheduler = student_scheduler(other.scheduler.config)
    fast_settings = settings(steps, 1.0)
    rows.append(row(f"copy + adapter from the miniature, {steps} steps", fast, fast_settings, None))
    seeds = args.margin_seeds
    rows[-1]["margin"] = margin(fast, other, steps, seeds, "the copy", guidance_scale=1.0)
    return rows


def train(base: Any, transform: Any, name: str) -> tuple[Any, float, Any]:
    """A student distilled from `base` (left untouched) on the shared training loop, the
    seconds it took, and its RunContext."""
    from compress.apply import apply_recipe
    from compress.context import RunContext
    from compress.recipe import Recipe

    pipe = copy.deepcopy(base)
    ctx = RunContext(teacher=base)
    t0 = time.perf_counter()
    apply_recipe(pipe, Recipe(name=name, transforms=[transform]), ctx)
    seconds = time.perf_counter() - t0
    loop = ctx.cache[transform.kind]
    print(
        f"trained {name} in {seconds:.1f} s ({loop.seconds / loop.steps:.2f} s per update; "
        f"loss {loop.mean_loss(first=True):.4g} -> {loop.mean_loss(first=False):.4g})",
        flush=True,
    )
    return pipe, seconds, ctx


def table(rows: list[dict[str, Any]]) -> str:
    cols = [
        ("setting", "setting"),
        ("calls", "denoiser calls/image"),
        ("adherence", "judge adherence"),
        ("realism_fd", "realism FD"),
        ("combined", "combined"),
        ("latency_ms", "CPU latency (ms/image)"),
        ("train_s", "training (s)"),
        ("margin", "vs teacher at same steps (95% CI)"),
    ]

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, dict):  # a margin with its bootstrap interval
            lo, hi = v["ci95"]
            return f"{v['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k, _ in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="miniature")
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: 2 training steps, 4 prompts, 1 timed run"
    )
    ap.add_argument("--prompts", type=int, default=32, help="evaluation prompts (judge)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per latency")
    ap.add_argument("--guidance-steps", type=int, default=None, help="guidance student updates")
    ap.add_argument("--lcm-steps", type=int, default=None, help="updates per consistency student")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--solver-steps", type=int, default=25, help="teacher DDIM grid for LCM")
    ap.add_argument("--substeps", type=int, default=5, help="teacher steps per trajectory step")
    ap.add_argument("--traj-steps", type=int, default=None, help="updates per trajectory student")
    ap.add_argument(
        "--margin-seeds", type=int, default=4, help="new seeds per prompt for the margin (0: off)"
    )
    ap.add_argument(
        "--portability",
        type=int,
        default=0,
        help="fine-tune a copy this many updates and load each trajectory LoRA onto it (0: off)",
    )
    ap.add_argument("--traj-counts", default="4,2,1", help="step counts of trajectory students")
    ap.add_argument("--lr-guidance", type=float, default=3e-4)
    ap.add_argument("--lr-full", type=float, default=2e-4)
    ap.add_argument("--lr-lora", type=float, default=1e-3)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    ap.add_argument(
        "--only",
        default="guidance,lcm-full,lcm-lora,traj-lora",
        help="students to train (comma list of guidance, lcm-full, lcm-lora, traj-full, traj-lora)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.prompts, args.runs, args.margin_seeds = 4, 1, 1
    default = 2 if args.quick else 150
    args.guidance_steps = args.guidance_steps or default
    args.lcm_steps = args.lcm_steps or default
    args.traj_steps = args.traj_steps or (2 if args.quick else 300)

    from compress._quiet import import_heavy

    import_heavy()
    from compress.evaluate.settings import EvalSettings
    from compress.models.loading import load_pipeline
    from compress.transforms.distill.guidance import DistillGuidanceConfig
    from compress.transforms.distill.steps import DistillStepsConfig

    def settings(steps: int, guidance: float | None) -> EvalSettings:
        return EvalSettings(
            metric="miniature",
            num_prompts=args.prompts,
            timed_runs=args.runs,
            warmup=1,
            steps=steps,
            guidance_scale=guidance,  # None: the student's own call default
        )

    base = load_pipeline(args.model)
    data = {"data": "miniature-digits", "samples": 1437, "batch_size": args.batch_size}
    rows = [row(f"teacher {k} steps", base, settings(k, GUIDANCE), None) for k in (20, 4, 2, 1)]

    only = set(args.only.split(","))
    if "guidance" in only:
        cfg = DistillGuidanceConfig(steps=args.guidance_steps, lr=args.lr_guidance, **data)
        student, secs, _ = train(base, cfg, "guidance")
        rows.append(row("guidance student 20 steps", student, settings(20, GUIDANCE), secs))
        del student

    # one consistency student serves every step count; a trajectory student is trained per count
    lcm = {"method": "consistency", "solver_steps": args.solver_steps, "steps": args.lcm_steps}
    traj = {"method": "trajectory", "teacher_substeps": args.substeps, "steps": args.traj_steps}
    full, lora = {"lr": args.lr_full}, {"lr": args.lr_lora, "lora_rank": args.lora_rank}
    counts = [int(k) for k in args.traj_counts.split(",")]
    for key, name, extra, trained_for in [
        ("lcm-full", "LCM full", {**lcm, **full}, [None]),
        ("lcm-lora", f"LCM-LoRA r{args.lora_rank}", {**lcm, **lora}, [None]),
        ("traj-full", "trajectory full", {**traj, **full}, counts),
        ("traj-lora", f"trajectory LoRA r{args.lora_rank}", {**traj, **lora}, counts),
    ]:
        if key not in only:
            continue
        for count in trained_for:
            fields = {"guidance_scale": GUIDANCE, **data, **extra}
            if count is not None:
                fields["student_steps"] = count
            label = name if count is None else f"{name} {count}-step"
            student, secs, ctx = train(base, DistillStepsConfig(**fields), label)
            for k in [count] if count is not None else [4, 2, 1]:
                rows.append(row(f"{name} {k} steps", student, settings(k, None), secs))
                if count is not None and args.margin_seeds:
                    rows[-1]["margin"] = margin(student, base, k, args.margin_seeds)
            if args.portability and key.endswith("lora") and count is not None:
                rows += portability(base, ctx, count, args, settings)
            del student

    print(f"\n## Distillation on {args.model} (guidance {GUIDANCE}; judge: miniature)\n")
    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
