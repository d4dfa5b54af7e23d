"""Search reports: one self-contained HTML page per run (plotly, images embedded)."""

from __future__ import annotations

from typing import Any

__all__ = ["write_report"]


def write_report(run: Any, out: Any = None) -> Any:
    """Render a search run folder into one HTML file; see compress.report.html."""
    from compress.report.html import write_report as _write

    return _write(run, out)
