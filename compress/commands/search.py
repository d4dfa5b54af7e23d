"""What `compress search` does beyond parsing options: resolve, run, summarise, write the report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from compress.errors import CompressError
from compress.search.config import resolve_config, resume_config
from compress.search.space import resolve_space


def search_command(
    console: Any, *, resume: Path | None, space: str | None, verbose: bool, **options: Any
) -> dict[str, Any]:
    """Start a search (or resume RUN), then print the front and write RUN/report.html."""
    from compress.evaluate.quality import metric_class
    from compress.report import write_report
    from compress.search.runner import run_search

    t0 = time.perf_counter()
    if resume is not None:
        if space is not None:
            options["space"] = str(resolve_space(space))
        cfg, sp = resume_config(resume, **options)
    else:
        cfg, sp = resolve_config(space, **options)
    if not getattr(metric_class(cfg.metric), "higher_is_better", True):
        raise CompressError(f"metric {cfg.metric} is lower-is-better; the search maximises quality")
    what = "resuming" if resume else "searching"
    console.print(
        f"{what} [bold]{cfg.model}[/bold] over {sp.source} ({sp.size_hint()}), "
        f"metric {cfg.metric}, {cfg.trials} trials, sampler {cfg.sampler} -> {cfg.out}"
    )
    summary = run_search(cfg, sp, resume=resume is not None, console=console, verbose=verbose)
    report = write_report(cfg.run)
    _print_summary(console, summary, cfg.run, report, time.perf_counter() - t0)
    states = summary["states"]
    finished = states["complete"] + states["stopped"] + states["failed"]
    if finished < cfg.trials and cfg.time_budget is None:
        console.print(
            f"[yellow]the search stopped early[/yellow]; continue it with: "
            f"compress search --resume {cfg.out}"
        )
    return summary


def _print_summary(
    console: Any, s: dict[str, Any], run: Path, report: Path, seconds: float
) -> None:
    from rich.table import Table

    base = s["baseline"]
    table = Table(
        "recipe",
        "speed-up [95% CI]",
        "quality",
        "transforms",
        "proposed by",
        "peak MiB",
        title="Pareto front (paired)",
    )
    for p in s["front"]:
        low, high = p["speedup_ci"]
        table.add_row(
            p["recipe"],
            f"{p['speedup']:.2f}x [{low:.2f}, {high:.2f}]",
            f"{p['quality']:.4f}",
            " + ".join(p["transforms"]),
            p["proposed_by"],
            _mib(p.get("peak_memory_mb")),
        )
    table.add_row(
        "[dim]uncompressed baseline[/dim]",
        "1.00x",
        f"{base['quality']:.4f}",
        "",
        "",
        _mib((base.get("scores") or {}).get("peak_memory_mb")),
    )
    console.print(table)
    states, es = s["states"], s["early_stopping"]
    console.print(
        f"{s['trials']} trials: {states['complete']} fully evaluated, {states['stopped']} "
        f"stopped early, {states['failed']} failed, {s['infeasible']} infeasible, "
        f"{s['no_faster_than_baseline']} no faster than the baseline; hypervolume "
        f"{s['hypervolume']:.4g}"
    )
    console.print(
        f"prefix cache: {s['cache_hits']} hits, {s['cache_misses']} misses; training "
        f"{s['training_seconds_spent']:.0f} s spent, {s['training_seconds_saved']:.0f} s saved "
        f"by reuse, about {es['training_seconds_saved']:.0f} s by early stopping"
    )
    console.print(f"recipes in {run / 'recipes'}, trials in {run / 'trials.csv'}")
    if s["front"]:
        console.print(
            f"take a front candidate as scored (no training again): {s['front'][0]['export']}",
            highlight=False,
        )
    console.print(f"[green]report[/green] {report}  ({seconds:.0f} s)")


def _mib(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def list_spaces_command(console: Any) -> None:
    """One line per shipped search space: its name and description."""
    from compress import shipped
    from compress.search.space import load_space

    for name in shipped.space_names():
        sp = load_space(name)
        console.print(f"{name}  [dim]{sp.spec.description}[/dim]", highlight=False)


def dry_run_command(console: Any, space: str, samples: int = 3) -> None:
    """Validate a space against the transform registry without loading a model; print its size,
    the stages its transforms use and a few sample recipes."""
    import optuna

    from compress.search.space import load_space
    from compress.transforms.base import registry

    sp = load_space(space)  # validates every knob and transform against the registry
    specs = registry()
    kinds = list(
        dict.fromkeys(
            [*sp.spec.transforms, *(k.sets.split(".")[0] for k in sp.spec.knobs.values() if k.sets)]
        )
    )
    by_stage: dict[str, list[str]] = {}
    for kind in sorted(kinds, key=lambda k: specs[k].stage):
        by_stage.setdefault(specs[kind].stage.name, []).append(kind)
    console.print(f"[green]valid[/green] {sp.source}: {sp.spec.description}", highlight=False)
    console.print(f"candidates: {sp.size_hint()}; knobs: {', '.join(sp.spec.knobs)}")
    for stage, names in by_stage.items():
        console.print(f"  {stage}: {', '.join(names)}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(samples):
        recipe = sp.suggest(study.ask(), name=f"{sp.name}-sample{i}")
        parts = []
        for t in recipe.transforms:
            fields = t.model_dump(mode="json", exclude_defaults=True, exclude={"kind"})
            parts.append(f"{t.kind}({', '.join(f'{k}={v}' for k, v in fields.items())})")
        console.print(f"sample {i}: " + " -> ".join(parts), highlight=False, markup=False)


def plan_command(console: Any, space: str | None, **options: Any) -> dict[str, Any]:
    """Print what the space costs on its target device (no training, no weights read)."""
    from rich.table import Table

    from compress.search.plan import make_plan

    sp_name = space or "miniature"
    from compress.search.space import load_space

    sp = load_space(sp_name)
    model = options.pop("model", None) or sp.spec.search.model or sp.spec.search.arch
    if model is None:
        raise CompressError(f"search space {sp.source} names no model or arch; pass --model")
    metric = options.pop("metric", None) or sp.spec.search.metric or "miniature"
    cfg, sp = resolve_config(sp_name, model=model, metric=metric, out="<plan>", **options)
    plan = make_plan(cfg, sp)
    device = plan.device
    rates = ", ".join(f"{k} {v / 1e12:.3g}" for k, v in device.rates.items())
    console.print(
        f"plan of [bold]{sp.name}[/bold] for {plan.model} on {device.name} "
        f"({device.memory / 2**30:.0f} GiB; TFLOP/s {rates}; {device.source})",
        highlight=False,
    )
    c = plan.costs
    console.print(
        f"one denoiser call {c['denoiser_flops'] / 1e9:.4g} GFLOP ({c['denoiser_params'] / 1e6:.4g}"
        f" M parameters), text encoders {c['text_flops'] / 1e9:.3g}, VAE decode "
        f"{c['decode_flops'] / 1e9:.4g} GFLOP; latents {tuple(c['latent_shape'])}",
        highlight=False,
    )
    table = Table("stage", "what", "seconds", "memory GiB", "disk GiB", "note")
    for r in plan.rows:
        table.add_row(
            r.stage,
            r.what,
            ""
            if r.seconds is None
            else f"{r.seconds:,.0f}"
            if r.seconds >= 10
            else f"{r.seconds:.3g}",
            "" if r.memory_gib is None else f"{r.memory_gib:.3g}",
            "" if r.disk_gib is None else f"{r.disk_gib:.3g}",
            r.note,
        )
    console.print(table)
    b = plan.budget
    if b.get("time_budget_s"):
        console.print(
            f"time budget {b['time_budget_s'] / 3600:.3g} h x {b['concurrency']} trials at once: "
            f"at most {b.get('max_prefix_trials') or 0} trials that train a new prefix "
            f"({b['prefix_trial_s']:,.0f} s each), or {b.get('max_suffix_trials') or 0} that "
            f"evaluate a suffix on a trained one ({b['suffix_trial_s']:,.0f} s each); the "
            "two-level search spends on both by expected gain per second",
            highlight=False,
        )
    return plan.to_json()
