"""The numbers that explain why a run was fast or not: a table and three small charts.

Everything comes from the latest Metrics snapshot in the events (see specviz/metrics.py for the
definitions); the measured speedup needs a reference: the Metrics of an autoregressive run of the
same prompt and settings.
"""
from __future__ import annotations

import plotly.graph_objects as go

from ..events import Event
from ..metrics import Metrics
from .labels import esc
from .steps import ended_early, latest_metrics, run_finished, run_started

HEIGHT = 260


def speedup(metrics: Metrics | None, reference: Metrics | None) -> float | None:
    if metrics is None or reference is None or reference.tokens_per_s <= 0:
        return None
    return metrics.tokens_per_s / reference.tokens_per_s


def metrics_markdown(events: list[Event], reference: Metrics | None = None) -> str:
    m = latest_metrics(events)
    if m is None:
        return "*Metrics appear here once a run starts.*"
    start, end = run_started(events), run_finished(events)
    state = (f"finished ({esc(end.stop_reason)})" if end is not None else
             "recorded run ended early (incomplete trace)" if ended_early(events) else "running…")
    total = m.draft_s + m.verify_s + m.overhead_s
    share = (lambda s: f"{100 * s / total:.0f}%") if total > 0 else (lambda s: "–")
    measured = speedup(m, reference)
    if measured is not None:
        measured_text = f"**{measured:.2f}×** (AR reference: {reference.tokens_per_s:.1f} tok/s)"
    elif start is not None and str(start.drafter).startswith("none"):
        measured_text = "1× (this run *is* the autoregressive reference)"
    else:
        measured_text = "tick *measure against AR* or run a race to measure it"
    beta = ", ".join(f"{b:.2f}" for b in m.beta_by_depth) or "–"
    rows = [
        ("run", state),
        ("tokens / s", f"**{m.tokens_per_s:.1f}** ({m.tokens} tokens in {m.elapsed_s:.2f} s)"),
        ("τ: tokens per target forward", f"**{m.tau:.2f}** ({m.steps} forwards; AR: 1.00)"),
        ("acceptance rate", f"{m.acceptance_rate:.2f} ({m.accepted} of {m.drafted} drafts)"),
        ("β by draft depth", beta),
        ("α (mean β) · c (draft/verify cost)", f"{m.alpha:.2f} · {m.c:.3f}"),
        ("verification cost", verify_cost_text(m)),
        ("predicted speedup", f"{m.predicted_speedup:.2f}× (γ = {m.mean_draft_length:.1f} drafts per step)"),
        ("measured speedup", measured_text),
        ("time split", f"draft {share(m.draft_s)} · verify {share(m.verify_s)} · overhead {share(m.overhead_s)}"),
    ]
    table = "| metric | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    return table + ("\n\n<small>Decoding time only (the page's own work is excluded). Predicted: "
                    "(1 − α^(γ+1)) / ((1 − α)(γc + 1)), Leviathan et al.</small>")


def verify_cost_text(m: Metrics) -> str:
    """This run's measured cost of a forward that verified drafts, in one-token forwards."""
    if not m.verify_cost_ratio:
        return "– (needs steps with and without drafts)"
    return (f"{m.verify_cost_ratio:.2f}× a one-token forward for {m.mean_verified_positions:.1f} positions "
            f"({m.single_steps} one-token forwards in this run)")


def metrics_figure(events: list[Event]) -> go.Figure:
    """Three small panels side by side (plain axis domains: much cheaper than make_subplots)."""
    m = latest_metrics(events) or Metrics()
    depths = list(range(1, len(m.beta_by_depth) + 1))
    data = [
        go.Bar(x=depths, y=m.beta_by_depth, marker_color="#16a34a", name="β", xaxis="x", yaxis="y",
               hovertemplate="depth %{x}: β = %{y:.3f}<extra></extra>"),
        go.Bar(x=list(range(len(m.accepted_hist))), y=m.accepted_hist, marker_color="#0ea5e9", name="steps",
               xaxis="x2", yaxis="y2", hovertemplate="%{y} steps accepted %{x} drafts<extra></extra>"),
    ]
    for label, value, color in (("draft", m.draft_s, "#a855f7"), ("verify", m.verify_s, "#f97316"),
                                ("overhead", m.overhead_s, "#94a3b8")):
        data.append(go.Bar(x=["time"], y=[value], name=label, marker_color=color, xaxis="x3", yaxis="y3",
                           text=[label] if value > 0 else None, textposition="inside",
                           hovertemplate=f"{label}: %{{y:.3f}} s<extra></extra>"))
    grid = "#e2e8f0"
    titles = [("β by draft depth", 0.18), ("accepted drafts per step", 0.595), ("time (s)", 0.92)]
    layout = dict(
        barmode="stack", height=HEIGHT, showlegend=False, margin=dict(l=40, r=10, t=40, b=40),
        plot_bgcolor="white", paper_bgcolor="white", font=dict(size=11),
        xaxis=dict(domain=[0.0, 0.36], title="depth", dtick=1),
        yaxis=dict(range=[0, 1.05], gridcolor=grid),
        xaxis2=dict(domain=[0.43, 0.76], title="accepted in the step", dtick=1),
        yaxis2=dict(anchor="x2", gridcolor=grid),
        xaxis3=dict(domain=[0.84, 1.0]),
        yaxis3=dict(anchor="x3", gridcolor=grid),
        annotations=[dict(text=t, x=x, y=1.0, xref="paper", yref="paper", xanchor="center", yanchor="bottom",
                          showarrow=False, font=dict(size=12)) for t, x in titles],
    )
    return go.Figure(data=data, layout=layout)
