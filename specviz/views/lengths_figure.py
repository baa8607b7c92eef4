"""Draft length against accepted length, step by step: how many tokens the drafter proposed in each
round (a tree counts every node) and how many of them the target accepted. Under an adaptive
stopping rule the grey bars move with the text; the green ones show whether that paid.
"""
from __future__ import annotations

import plotly.graph_objects as go

from ..events import Event
from .steps import split_steps

HEIGHT = 220
CAPTION = ("**Draft vs accepted length:** grey, how many tokens the drafter proposed in each step; green, how many "
           "of them the target accepted. The closer green comes to grey, the less drafting was wasted.")


def lengths(events: list[Event]) -> list[tuple[int, int, int]]:
    """(step, drafted, accepted) for every verified step."""
    return [(s.index, len(s.nodes), sum(n.status == "accepted" for n in s.nodes))
            for s in split_steps(events) if s.verified is not None]


def lengths_figure(events: list[Event]) -> go.Figure:
    rows = lengths(events)
    steps = [r[0] for r in rows]
    data = [
        go.Bar(x=steps, y=[r[1] for r in rows], name="drafted", marker_color="#cbd5e1",
               hovertemplate="step %{x}: %{y} drafted<extra></extra>"),
        go.Bar(x=steps, y=[r[2] for r in rows], name="accepted", marker_color="#16a34a", width=0.45,
               hovertemplate="step %{x}: %{y} accepted<extra></extra>"),
    ]
    mean = (lambda i: sum(r[i] for r in rows) / len(rows)) if rows else (lambda i: 0.0)
    title = (f"Drafted vs accepted per step (mean {mean(1):.1f} drafted, {mean(2):.1f} accepted)" if rows
             else "draft and accepted lengths appear here")
    layout = dict(
        height=HEIGHT, barmode="overlay", bargap=0.2, margin=dict(l=40, r=10, t=36, b=10),
        plot_bgcolor="white", paper_bgcolor="white", title=dict(text=title, font=dict(size=14)),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1, xanchor="right", font=dict(size=11)),
        xaxis=dict(title=dict(text="step (one target forward)"), gridcolor="#e2e8f0"),
        yaxis=dict(title=dict(text="tokens"), gridcolor="#e2e8f0", rangemode="tozero", dtick=1 if rows and
                   max(r[1] for r in rows) <= 8 else None),
    )
    return go.Figure(data=data, layout=layout)
