"""Plotly figures of a search: the latency-quality scatter, quality against peak memory, and
per-component latency."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from compress.search.ledger import TrialRecord

if TYPE_CHECKING:
    import plotly.graph_objects as go

# Clicking a point scrolls to its recipe card (cards carry id="trial-NNNN").
CLICK_JS = """
var el = document.getElementById('{plot_id}');
el.on('plotly_click', function(d) {
  var n = d.points[0].customdata;
  if (n !== undefined && n !== null) {
    var card = document.getElementById('trial-' + String(n).padStart(4, '0'));
    if (card) { card.scrollIntoView({behavior: 'smooth'}); }
  }
});
"""


def _hover(r: TrialRecord) -> str:
    knobs = "<br>".join(f"{k} = {v}" for k, v in r.params.items())
    return f"trial {r.number} ({r.state})<br>{knobs}"


def _errors(records: list[TrialRecord]) -> dict[str, Any]:
    """Horizontal error bars: each speed-up's 95% interval."""
    ci = [r.speedup_ci or [r.speedup, r.speedup] for r in records]
    return {
        "type": "data",
        "symmetric": False,
        "array": [hi - r.speedup for r, (_, hi) in zip(records, ci, strict=True)],
        "arrayminus": [r.speedup - lo for r, (lo, _) in zip(records, ci, strict=True)],
        "thickness": 1,
        "width": 2,
    }


def _trace(go: Any, records: list[TrialRecord], name: str, **style: Any) -> Any:
    return go.Scatter(
        x=[r.speedup for r in records],
        y=[r.quality for r in records],
        error_x=_errors(records),
        mode="markers",
        name=f"{name} ({len(records)})",
        customdata=[r.number for r in records],
        hovertext=[_hover(r) for r in records],
        hoverinfo="text+x+y",
        **style,
    )


def scatter(
    records: list[TrialRecord],
    front: list[TrialRecord],
    baseline: dict[str, Any],
    metric: str,
    limits: dict[str, float | None],
) -> go.Figure:
    """Every scored trial (paired speed-up with its interval, quality); the front joined by a
    staircase; the uncompressed baseline starred at 1x."""
    import plotly.graph_objects as go

    on_front = {r.number for r in front}
    scored = [r for r in records if r.point is not None and r.duplicate_of is None]
    full = [
        r
        for r in scored
        if r.state == "complete" and r.feasible and r.faster and r.number not in on_front
    ]
    stopped = [r for r in scored if r.state == "stopped" and r.faster]
    infeasible = [r for r in scored if r.state == "complete" and not r.feasible]
    slower = [r for r in scored if not r.faster]
    fig = go.Figure()
    fig.add_trace(_trace(go, full, "fully evaluated", marker={"color": "#4c78a8", "size": 8}))
    fig.add_trace(
        _trace(
            go,
            stopped,
            "stopped early (a rung or the prompt subset)",
            marker={"color": "#9d9d9d", "size": 7, "symbol": "circle-open"},
        )
    )
    fig.add_trace(
        _trace(
            go,
            infeasible,
            "infeasible (breaks a constraint)",
            marker={"color": "#f58518", "size": 8, "symbol": "x"},
        )
    )
    fig.add_trace(
        _trace(
            go,
            slower,
            "no faster than the baseline (interval reaches 1)",
            marker={"color": "#b279a2", "size": 7, "symbol": "triangle-down-open"},
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[r.speedup for r in front],
            y=[r.quality for r in front],
            mode="lines+markers",
            error_x=_errors(front),
            line={"shape": "vh", "color": "#e45756"},
            name=f"Pareto front ({len(front)})",
            marker={"size": 12, "symbol": "diamond"},
            customdata=[r.number for r in front],
            hovertext=[_hover(r) for r in front],
            hoverinfo="text+x+y",
        )
    )
    if baseline:
        fig.add_trace(_baseline_star(1.0, baseline["quality"]))
    if limits.get("min_quality") is not None:
        fig.add_hline(y=limits["min_quality"], line_dash="dot", annotation_text="min quality")
    fig.update_layout(
        xaxis_title="speed-up over the uncompressed model (paired, 95% interval)",
        xaxis_type="log",
        yaxis_title=f"quality ({metric})",
        height=520,
        margin={"l": 60, "r": 20, "t": 30, "b": 50},
        legend={"orientation": "h", "y": -0.18},
        template="plotly_white",
    )
    return fig


def components(front: list[TrialRecord]) -> go.Figure | None:
    """Stacked per-component latency of each front recipe as a share of the uncompressed
    model's time in the same paired rounds (1.0 = the baseline's whole run)."""
    import plotly.graph_objects as go

    rows = []
    for r in front:
        total = sum(r.reference_components_ms.values())
        if r.components_ms and total > 0:
            rows.append((r.recipe or f"trial {r.number}", r.components_ms, total))
    if not rows:
        return None
    first = front[0].reference_components_ms
    rows.insert(0, ("baseline", first, sum(first.values())))
    parts = list(dict.fromkeys(k for _, c, _ in rows for k in c))
    fig = go.Figure(
        [
            go.Bar(
                name=p,
                y=[name for name, _, _ in rows],
                x=[c.get(p, 0.0) / total for _, c, total in rows],
                orientation="h",
            )
            for p in parts
        ]
    )
    fig.update_layout(
        barmode="stack",
        xaxis_title="share of the uncompressed model's time (paired rounds)",
        template="plotly_white",
        height=120 + 40 * len(rows),
        margin={"l": 160, "r": 20, "t": 20, "b": 40},
    )
    return fig


def memory_scatter(
    records: list[TrialRecord],
    front: list[TrialRecord],
    baseline: dict[str, Any],
    metric: str,
    limits: dict[str, float | None],
) -> go.Figure | None:
    """Quality against the peak memory of sampling at the evaluation batch: every scored trial
    (infeasible ones crossed), the front, the baseline starred, --max-memory as a line; None
    when no trial has a peak memory (a device without a counter)."""
    import plotly.graph_objects as go

    scored = [
        r
        for r in records
        if r.point is not None and r.peak_memory_mb is not None and r.duplicate_of is None
    ]
    if not scored:
        return None
    on_front = {r.number for r in front}
    groups = [
        ("Pareto front", [r for r in scored if r.number in on_front], "#e45756", "diamond", 12),
        (
            "other trials",
            [r for r in scored if r.number not in on_front and r.feasible],
            "#4c78a8",
            "circle",
            8,
        ),
        (
            "infeasible (breaks a constraint)",
            [r for r in scored if not r.feasible],
            "#f58518",
            "x",
            8,
        ),
    ]
    fig = go.Figure()
    for name, group, colour, symbol, size in groups:
        fig.add_trace(
            go.Scatter(
                x=[r.peak_memory_mb for r in group],
                y=[r.quality for r in group],
                mode="markers",
                name=f"{name} ({len(group)})",
                marker={"color": colour, "size": size, "symbol": symbol},
                customdata=[r.number for r in group],
                hovertext=[f"{_hover(r)}<br>speed-up {r.speedup:.2f}x" for r in group],
                hoverinfo="text+x+y",
            )
        )
    peak = (baseline.get("scores") or {}).get("peak_memory_mb") if baseline else None
    if peak is not None:
        fig.add_trace(_baseline_star(peak, baseline["quality"]))
    if limits.get("max_memory") is not None:
        fig.add_vline(x=limits["max_memory"], line_dash="dot", annotation_text="max memory")
    fig.update_layout(
        xaxis_title="peak memory of sampling at the evaluation batch (MiB)",
        yaxis_title=f"quality ({metric})",
        height=460,
        margin={"l": 60, "r": 20, "t": 30, "b": 50},
        legend={"orientation": "h", "y": -0.2},
        template="plotly_white",
    )
    return fig


def _baseline_star(x: float, quality: float) -> go.Scatter:
    import plotly.graph_objects as go

    return go.Scatter(
        x=[x],
        y=[quality],
        mode="markers",
        name="uncompressed baseline",
        marker={"color": "black", "size": 16, "symbol": "star"},
        hoverinfo="name+x+y",
    )
