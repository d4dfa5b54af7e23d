"""Plotly figures of a search: the latency-quality scatter and per-component latency."""

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


def _trace(go: Any, records: list[TrialRecord], name: str, **style: Any) -> Any:
    return go.Scatter(
        x=[r.latency_ms for r in records],
        y=[r.quality for r in records],
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
    """Every scored trial; the front joined by a staircase; the uncompressed baseline starred."""
    import plotly.graph_objects as go

    on_front = {r.number for r in front}
    scored = [r for r in records if r.point is not None and r.duplicate_of is None]
    full = [r for r in scored if r.state == "complete" and r.feasible and r.number not in on_front]
    stopped = [r for r in scored if r.state == "stopped"]
    infeasible = [r for r in scored if r.state == "complete" and not r.feasible]
    fig = go.Figure()
    fig.add_trace(_trace(go, full, "fully evaluated", marker={"color": "#4c78a8", "size": 8}))
    fig.add_trace(
        _trace(
            go,
            stopped,
            "stopped at stage 1 (prompt subset)",
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
        go.Scatter(
            x=[r.latency_ms for r in front],
            y=[r.quality for r in front],
            mode="lines+markers",
            line={"shape": "hv", "color": "#e45756"},
            name=f"Pareto front ({len(front)})",
            marker={"size": 12, "symbol": "diamond"},
            customdata=[r.number for r in front],
            hovertext=[_hover(r) for r in front],
            hoverinfo="text+x+y",
        )
    )
    if baseline:
        fig.add_trace(
            go.Scatter(
                x=[baseline["latency_ms"]],
                y=[baseline["quality"]],
                mode="markers",
                name="uncompressed baseline",
                marker={"color": "black", "size": 16, "symbol": "star"},
                hoverinfo="name+x+y",
            )
        )
    if limits.get("max_latency") is not None:
        fig.add_vline(x=limits["max_latency"], line_dash="dot", annotation_text="max latency")
    if limits.get("min_quality") is not None:
        fig.add_hline(y=limits["min_quality"], line_dash="dot", annotation_text="min quality")
    fig.update_layout(
        xaxis_title="latency (ms, median of timed runs)",
        yaxis_title=f"quality ({metric})",
        height=520,
        margin={"l": 60, "r": 20, "t": 30, "b": 50},
        legend={"orientation": "h", "y": -0.18},
        template="plotly_white",
    )
    return fig


def components(front: list[TrialRecord], baseline: dict[str, Any]) -> go.Figure | None:
    """Stacked per-component latency (text encoder, denoiser, VAE decode, other)."""
    import plotly.graph_objects as go

    rows = [("baseline", baseline.get("components_ms") or {})] if baseline else []
    rows += [(r.recipe or f"trial {r.number}", r.components_ms) for r in front]
    rows = [(name, c) for name, c in rows if c]
    if not rows:
        return None
    parts = list(dict.fromkeys(k for _, c in rows for k in c))
    fig = go.Figure(
        [
            go.Bar(
                name=p,
                y=[name for name, _ in rows],
                x=[c.get(p, 0.0) for _, c in rows],
                orientation="h",
            )
            for p in parts
        ]
    )
    fig.update_layout(
        barmode="stack",
        xaxis_title="latency (ms)",
        template="plotly_white",
        height=120 + 40 * len(rows),
        margin={"l": 160, "r": 20, "t": 20, "b": 40},
    )
    return fig
