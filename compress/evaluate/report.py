"""Tables for the terminal and JSON files for `compress bench` and `compress eval`."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.fs import write_atomic

if TYPE_CHECKING:
    from rich.table import Table

    from compress.evaluate.settings import LatencyResult, Score


def latency_table(result: LatencyResult, title: str) -> Table:
    """Median per component, its share of the total, and calls per run."""
    from rich.table import Table

    s = result.settings
    table = Table(title=title, caption=_caption(result))
    table.add_column("component")
    table.add_column("median ms", justify="right")
    table.add_column("share", justify="right")
    table.add_column("calls/run", justify="right")
    for name, ms in result.components_ms.items():
        share = ms / result.median_ms if result.median_ms else 0.0
        table.add_row(name, f"{ms:.2f}", f"{share:.0%}", str(result.calls_per_run.get(name, "")))
    table.add_row(
        "[bold]total[/bold]",
        f"[bold]{result.median_ms:.2f}[/bold] ± {result.spread_ms:.2f}",
        "100%",
        f"{s['timed_runs']} runs",
    )
    return table


def _caption(result: LatencyResult) -> str:
    s = result.settings
    parts = [
        f"{result.device_name} ({result.device}, CPU threads: {result.threads})",
        f"{s['dtype']}, {s['resolution']} px, batch {s['batch_size']}, {s['steps']} steps, "
        f"guidance {s['guidance_scale']}",
        f"median of {len(result.runs_ms)} runs after {len(result.warmup_ms)} warm-up; ± is the IQR",
    ]
    if result.compile_ms is not None:
        parts.append(f"compile: {result.compile_ms / 1e3:.1f} s (first run minus median)")
    if result.peak_memory_mb is not None:
        parts.append(f"peak memory {result.peak_memory_mb:.0f} MiB")
    return "\n".join(parts)


def score_table(score: Score, title: str) -> Table:
    from rich.table import Table

    direction = "higher" if score.higher_is_better else "lower"
    table = Table(
        title=title,
        caption=f"{score.quality_metric} {score.quality_metric_version}; "
        f"{len(score.prompts)} prompts; {direction} is better",
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row(f"[bold]{score.quality_metric}[/bold]", f"[bold]{score.quality:.4f}[/bold]")
    for name, value in score.quality_parts.items():
        table.add_row(f"  {name}", f"{value:.4f}")
    table.add_row("latency ms", f"{score.latency_ms:.2f} ± {score.latency_spread_ms:.2f}")
    for name, ms in score.components_ms.items():
        table.add_row(f"  {name}", f"{ms:.2f}")
    if score.peak_memory_mb is not None:
        table.add_row("peak memory MiB (sampling)", f"{score.peak_memory_mb:.1f}")
    return table


def default_json_path(kind: str, label: str, device: str) -> Path:
    """reports/<kind>/<label>_<device>_<time>.json, with the label reduced to safe characters."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(label.rstrip("/")).name or label).strip("-")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("reports") / kind / f"{safe}_{device.replace(':', '')}_{stamp}.json"


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write `data` as indented JSON, atomically."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
    return Path(path)


def bench_payload(result: LatencyResult, source: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "bench", "source": source, **result.model_dump(mode="json")}


def eval_payload(score: Score, source: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "eval", "source": source, **score.model_dump(mode="json")}
