"""`compress report RUN`: one self-contained HTML page (plotly.js and images inline)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import yaml

from compress.errors import CompressError
from compress.fs import write_atomic
from compress.report.figures import CLICK_JS, components, memory_scatter, scatter
from compress.report.images import grid, numbered_pngs
from compress.search.baseline import baseline_dir, load_baseline
from compress.search.ledger import SEARCH_FILE, TrialRecord, read_json, read_records, trial_dir
from compress.search.results import (
    export_command,
    finalize,
    front_records,
    objectives_of,
    proposed_by,
)

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; } .dim { color: #777; } .warn { color: #b00; }
code, pre { background: #f5f5f5; }
pre { padding: 0.6em; overflow-x: auto; } table { border-collapse: collapse; }
td, th { padding: 0.25em 0.6em; border-bottom: 1px solid #e5e5e5; text-align: left; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.8em 1.2em; margin: 1.2em 0; }
.grid img { width: 96px; height: 96px; image-rendering: pixelated; }
.grid th { font-weight: normal; font-size: 0.8em; max-width: 100px; }
.grid th.label { font-weight: bold; }
"""


_AXES = {"latency": "relative latency", "quality": "quality", "memory": "peak memory MiB"}


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def write_report(run: str | Path, out: str | Path | None = None) -> Path:
    """Render RUN into one HTML file (default RUN/report.html); return its path."""
    run = Path(run)
    if not (run / SEARCH_FILE).is_file():
        raise CompressError(
            f"{run} is not a search run folder (no {SEARCH_FILE}); pass the "
            "--out folder of a `compress search`"
        )
    summary = (
        finalize(run, None)
        if not (run / "summary.json").is_file()
        else read_json(run / "summary.json")
    )
    cfg, records = read_json(run / SEARCH_FILE), read_records(run)
    baseline = load_baseline(run) or {}
    front = front_records(records, baseline, "memory" in objectives_of(run))
    out = Path(out) if out else run / "report.html"
    write_atomic(out, _page(run, cfg, summary, records, front, baseline))
    return out


def _plot(fig: Any, div_id: str, first: bool, click: bool = False) -> str:
    import plotly.io as pio

    return pio.to_html(
        fig,
        full_html=False,
        include_plotlyjs=first,
        div_id=div_id,
        post_script=CLICK_JS if click else None,
        config={"displaylogo": False, "responsive": True},
    )


def _page(
    run: Path,
    cfg: dict[str, Any],
    s: dict[str, Any],
    records: list[TrialRecord],
    front: list[TrialRecord],
    baseline: dict[str, Any],
) -> str:
    scores = baseline.get("scores", {})
    metric = (
        f"{scores.get('quality_metric', cfg['metric'])} {scores.get('quality_metric_version', '')}"
    )
    limits = {k: cfg.get(k) for k in ("max_latency", "min_quality", "max_memory")}
    parts = [f"<h1>Search {_esc(run.name)}</h1>", _overview(cfg, s, metric, scores)]
    parts.append(
        "<h2>Latency and quality</h2><p class='dim'>Click a front point to jump to its recipe.</p>"
    )
    parts.append(_plot(scatter(records, front, baseline, metric, limits), "scatter", True, True))
    comp = components(front)
    if comp is not None:
        parts.append("<h2>Where the time goes</h2>" + _plot(comp, "components", False))
    mem = memory_scatter(records, front, baseline, metric, limits)
    if mem is not None:
        parts.append(
            "<h2>Peak memory and quality</h2><p class='dim'>Peak memory of sampling at the "
            "evaluation batch: the candidate's tensors plus what sampling adds.</p>"
            + _plot(mem, "memory", False, True)
        )
    prompts = baseline.get("prompts", [])
    base_images = numbered_pngs(baseline_dir(run) / "images")
    parts.append(f"<h2>Pareto front: {len(front)} recipes</h2>")
    by_number = {x.number: x for x in records}
    for r in front:
        parts.append(_card(run, r, baseline, prompts, base_images, proposed_by(r, by_number)))
    parts.append(_trials_table(records, {r.number for r in front}))
    body = "\n".join(parts)
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>compress search "
        f"{_esc(run.name)}</title><style>{CSS}</style></head><body>{body}</body></html>"
    )


def _overview(cfg: dict[str, Any], s: dict[str, Any], metric: str, scores: dict) -> str:
    states, es = s["states"], s.get("early_stopping", {})
    settings = ", ".join(f"{k}={v}" for k, v in scores.get("settings", {}).items())
    overhead = s.get("ray_overhead_s_per_trial")
    rows = [
        ("model", cfg["model"]),
        ("search space", cfg["space"]),
        ("quality metric", metric),
        ("measured with", settings or "–"),
        (
            "latency",
            "paired: each candidate timed in alternating rounds with the uncompressed model in "
            "its own worker; speed-up = median per-round ratio, with its 95% interval",
        ),
        (
            "sampler",
            f"{cfg['sampler']} (Optuna, via Ray Tune), {cfg['trials']} trials, "
            f"{cfg['max_concurrent']} at a time",
        ),
        (
            "trials",
            f"{states['complete']} fully evaluated, {states['stopped']} stopped early, "
            f"{states['failed']} failed, {states.get('interrupted', 0)} interrupted; "
            f"{s['infeasible']} infeasible; {s.get('no_faster_than_baseline', 0)} no faster "
            "than the baseline",
        ),
        (
            "prefix cache",
            f"{s.get('cache_hits', 0)} hits, {s.get('cache_misses', 0)} misses; training "
            f"{s.get('training_seconds_spent', 0):.0f} s spent, "
            f"{s.get('training_seconds_saved', 0):.0f} s saved by reuse",
        ),
        (
            "early stopping",
            f"{es.get('stopped', 0)} stopped ({es.get('stopped_while_training', 0)} part-way "
            f"through their training), about {es.get('training_seconds_saved', 0):.0f} s of "
            "training saved",
        ),
        (
            "hypervolume",
            f"{_fmt(s['hypervolume'])} ({' x '.join(_AXES[o] for o in s.get('objectives', _AXES))}"
            "; reference: "
            f"{', '.join(_fmt(v) for v in s['hypervolume_reference'] or [])})",
        ),
        ("Ray overhead per trial", "–" if overhead is None else f"{overhead:.2f} s"),
        (
            "peak memory",
            "of sampling at the evaluation batch, MiB: the candidate's tensors on the device plus "
            "the high-water mark sampling adds (CUDA allocator peak; resident set on CPU)"
            + (f"; at most {cfg['max_memory']:g}" if cfg.get("max_memory") else "")
            + ("; an objective of the front" if "memory" in s.get("objectives", []) else ""),
        ),
    ]
    cells = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _speed(r: TrialRecord) -> str:
    if r.speedup is None:
        return "–"
    low, high = r.speedup_ci or [r.speedup, r.speedup]
    return f"{r.speedup:.2f}x [{low:.2f}, {high:.2f}]"


def _card(
    run: Path,
    r: TrialRecord,
    baseline: dict[str, Any],
    prompts: list[str],
    base_images: list[Path],
    proposed: str,
) -> str:
    warn = _not_faster(r)
    rows = "".join(
        f"<tr><td>{_esc(t.get('kind'))}</td><td>"
        f"{_esc(', '.join(f'{k}={v}' for k, v in t.items() if k != 'kind'))}</td></tr>"
        for t in r.transforms
    )
    path = trial_dir(run, r.number) / "recipe.yaml"
    text = path.read_text() if path.is_file() else ""
    data = yaml.safe_load(text) if text else {}
    images = grid(
        [
            ("baseline", base_images),
            (r.recipe or f"trial {r.number}", numbered_pngs(trial_dir(run, r.number) / "images")),
        ],
        prompts,
    )
    return (
        f"<div class='card' id='trial-{r.number:04d}'><h3>{_esc(r.recipe)} "
        f"<span class='dim'>trial {r.number}</span></h3>"
        f"<p class='dim'>proposed by {_esc(proposed)}</p>"
        f"<p>speed-up <b>{_speed(r)}</b> (95% interval; {r.latency_ms:.2f} ms against the "
        f"baseline's {r.reference_latency_ms:.2f} ms in the same rounds)"
        f"{f' <b class=warn>{warn}</b>' if warn else ''}, quality "
        f"<b>{r.quality:.4f}</b>, peak memory <b>{_fmt(r.peak_memory_mb)} MiB</b>; recipe file "
        f"<code>recipes/{_esc(data.get('name', r.recipe))}"
        f".yaml</code></p><p>this candidate, as scored: <code>{_esc(export_command(run, r))}"
        "</code> (its trained prefix from the run's cache, no training; <code>compress apply"
        "</code> of the recipe trains again, on another checkpoint too)</p>"
        f"<table><tr><th>transform</th><th>parameters</th></tr>{rows}</table>{images}"
        f"<details><summary>recipe YAML</summary><pre>{_esc(text)}</pre></details></div>"
    )


def _not_faster(r: TrialRecord) -> str:
    """The plain-words speed flag of a quantized candidate no faster than its parent."""
    from compress.transforms.quantize.ptq import NOT_FASTER

    if NOT_FASTER in r.scores.get("flags", []):
        ci = r.parent_speedup_ci or []
        interval = f" ({r.parent_speedup:.2f}x [{ci[0]:.2f}, {ci[1]:.2f}])" if ci else ""
        return f"quantized, but no faster than its unquantized parent{interval}"
    return ""


def _stopped(r: TrialRecord) -> str:
    if r.state != "stopped" or not r.stopped_at:
        return ""
    fraction = r.stopped_at.get("training_fraction")
    training = f", {fraction:g} of training" if fraction is not None else ""
    return f"{r.stopped_at.get('prompts')} prompts{training}"


def _trials_table(records: list[TrialRecord], front: set[int]) -> str:
    knobs = list(dict.fromkeys(k for r in records for k in r.params))
    head = "".join(
        f"<th>{_esc(h)}</th>"
        for h in [
            "#",
            "state",
            "front",
            "speed-up [95% CI]",
            "quality",
            "stopped at",
            "peak MiB",
            *knobs,
            "note",
        ]
    )
    rows = []
    for r in records:
        note = (
            r.error
            or ("no faster than the baseline" if r.point is not None and not r.faster else "")
            or _not_faster(r)
            or (
                f"same knobs as trial {r.duplicate_of}"
                if r.duplicate_of is not None
                else ""
                if r.feasible
                else "infeasible"
            )
        )
        cells = [
            r.number,
            r.state,
            "★" if r.number in front else "",
            _speed(r),
            _fmt(r.quality),
            _stopped(r),
            _fmt(r.peak_memory_mb),
            *[r.params.get(k, "") for k in knobs],
            note,
        ]
        rows.append("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in cells) + "</tr>")
    return (
        f"<h2>All trials</h2><details><summary>{len(records)} trials</summary>"
        f"<table><tr>{head}</tr>{''.join(rows)}</table></details>"
    )
