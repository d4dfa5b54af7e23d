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
        "recipe", "speed-up [95% CI]", "quality", "transforms", title="Pareto front (paired)"
    )
    for p in s["front"]:
        low, high = p["speedup_ci"]
        table.add_row(
            p["recipe"],
            f"{p['speedup']:.2f}x [{low:.2f}, {high:.2f}]",
            f"{p['quality']:.4f}",
            " + ".join(p["transforms"]),
        )
    table.add_row("[dim]uncompressed baseline[/dim]", "1.00x", f"{base['quality']:.4f}", "")
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
