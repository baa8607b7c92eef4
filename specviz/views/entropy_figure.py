"""Entropy over the generation: the drafter's at every drafted position (Node.q_entropy) and the
target's at every emitted position (Token.p_entropy). Where the drafter is unsure, drafts get
rejected; where the target is unsure, even a good drafter cannot guess.

Stop-threshold hook: a stopping rule that cuts drafts when the drafter's entropy exceeds a
threshold records it in the run settings as "stop_threshold" (nats); the figure draws it.
"""
from __future__ import annotations

import plotly.graph_objects as go

from ..events import Event
from .labels import esc_plot, visible
from .palette import MARKER, SHORT
from .steps import run_started, split_steps

HEIGHT = 330
GL_ABOVE = 4000  # points beyond which WebGL traces keep the browser responsive
MAX_DRAFT_POINTS = 4000  # drafter points drawn; beyond, every k-th drafted node (the figure stays small)


def stop_threshold(events: list[Event]) -> float | None:
    start = run_started(events)
    value = start.settings.get("stop_threshold") if start is not None and isinstance(start.settings, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def entropy_figure(events: list[Event], threshold: float | None = None) -> go.Figure:
    steps = split_steps(events)
    threshold = threshold if threshold is not None else stop_threshold(events)
    tx, ty, thover = [], [], []
    drafts: dict[str, tuple[list, list, list]] = {}
    n_drafted = sum(len(step.nodes) for step in steps)
    every = -(-n_drafted // MAX_DRAFT_POINTS)  # 1 unless the trace is huge
    seen = 0
    for step in steps:
        for i, tok in enumerate(step.tokens):
            tx.append(step.position + i)
            ty.append(tok.p_entropy)
            thover.append(f"token {step.position + i}: {esc_plot(visible(tok.text, 30))}<br>"
                          f"target entropy {tok.p_entropy:.2f} nats<br>{esc_plot(SHORT.get(tok.kind, tok.kind))}")
        for node in step.nodes:
            seen += 1
            if every > 1 and seen % every:
                continue
            xs, ys, hs = drafts.setdefault(node.status or "unvisited", ([], [], []))
            xs.append(step.position + node.depth - 1)
            ys.append(node.q_entropy)
            hs.append(f"draft {esc_plot(visible(node.text, 30))} (step {step.index}, depth {node.depth})<br>"
                      f"drafter entropy {node.q_entropy:.2f} nats<br>"
                      f"{esc_plot(SHORT.get(node.status, str(node.status)))}")
    kind = "scattergl" if len(tx) + sum(len(v[0]) for v in drafts.values()) > GL_ABOVE else "scatter"
    traces = [dict(type=kind, x=tx, y=ty, mode="lines+markers", name="target entropy (emitted tokens)",
                   line=dict(color="#1e293b", width=1.5), marker=dict(size=4, color="#1e293b"),
                   hovertext=thover, hoverinfo="text")]
    for status in ("accepted", "rejected", "unvisited"):
        if status in drafts:
            xs, ys, hs = drafts[status]
            traces.append(dict(type=kind, x=xs, y=ys, mode="markers", name=f"drafter entropy: {SHORT[status]}",
                               marker=dict(size=8, color=MARKER[status],
                                           symbol="circle-open" if status == "unvisited" else "circle",
                                           line=dict(width=1.5, color=MARKER[status])),
                               hovertext=hs, hoverinfo="text"))
    layout = dict(
        height=HEIGHT, margin=dict(l=50, r=10, t=36, b=10), plot_bgcolor="white", paper_bgcolor="white",
        title=dict(text=("Entropy: where the models are unsure (nats, temperature 1)"
                         + (f" · drafter: 1 in {every} of {n_drafted} nodes drawn" if every > 1 else "")) if steps else
                   "entropy curves appear here", font=dict(size=14)),
        legend=dict(orientation="h", yanchor="top", y=-0.2, x=0, font=dict(size=11)),
        xaxis=dict(title=dict(text="generated token position"), gridcolor="#e2e8f0", rangemode="tozero"),
        yaxis=dict(title=dict(text="entropy (nats)"), gridcolor="#e2e8f0", rangemode="tozero"),
        hoverlabel=dict(align="left"),
    )
    if threshold is not None:
        layout["shapes"] = [dict(type="line", xref="paper", x0=0, x1=1, y0=threshold, y1=threshold,
                                 line=dict(color="#7c3aed", dash="dash"))]
        layout["annotations"] = [dict(text=f"draft stop threshold {threshold:.2f}", xref="paper", x=0, y=threshold,
                                      xanchor="left", yanchor="bottom", showarrow=False,
                                      font=dict(color="#7c3aed", size=11))]
    return go.Figure(dict(data=traces, layout=layout))
