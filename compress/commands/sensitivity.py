"""`compress sensitivity`: load a model, quantize one block at a time, print and write the table
(compress.transforms.quantize.sensitivity does the analysis)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.errors import CompressError


def run_sensitivity(
    console: Any,
    *,
    model: str,
    metric: str,
    formats: list[str],
    out: Path,
    weights: str | None = None,
    prompts: str | None = None,
    **fields: Any,
) -> Path:
    """The work behind `compress sensitivity`: load, analyse, print and write the table."""
    from rich.table import Table

    from compress.commands.evaluate import load_for, make_settings
    from compress.evaluate.quality import get_metric
    from compress.transforms.quantize.sensitivity import sensitivity, write_table

    if out.suffix not in (".csv", ".json"):
        raise CompressError(f"--out {out}: the table is written as .csv or .json")
    settings = make_settings(metric=metric, timed_runs=1, warmup=0, **fields)
    scorer = get_metric(metric, device=settings.device, weights=weights, prompts=prompts)
    pipe = load_for(model, None, settings)
    with console.status("quantizing one block at a time") as status:
        rows = sensitivity(pipe, formats, settings, metric=scorer, progress=status.update)
    table = Table("block", "format", "layers", f"{scorer.name}", "drop")
    for r in rows:
        table.add_row(r.block, r.format, str(r.layers), f"{r.quality:.4f}", f"{r.drop:+.4f}")
    console.print(table)
    console.print(f"[green]wrote[/green] {write_table(rows, out)}")
    return out
