"""A run on the wall clock, as a Gantt chart: one bar per drafting phase and one per verification
(target forward) phase of every step, from StepFinished.draft_start_s / draft_s and verify_start_s /
verify_s. Under a parallel mode the phases overlap, and so do their bars. In a race the
autoregressive run gets its own row below the speculative one (its steps are verifications only).

Traces recorded before the start times existed (version 1: every start is 0) get their bars laid
end to end from the durations (draft, verify, overhead in turn), and the title says so.
"""
from __future__ import annotations

import plotly.graph_objects as go

from ..events import Event
from .labels import esc_plot, visible
from .steps import run_started, split_steps

HEIGHT = 230
PHASES = {"draft": "#a855f7", "verify": "#f97316"}  # the metrics figure's colors for the same phases
CAPTION = ("**Timeline:** each bar is one phase of a step on the wall clock — purple: the drafter proposing tokens, "
           "orange: the target checking them in one forward; gaps are the page's and the engine's own work.")


def phases(events: list[Event]) -> tuple[list[dict], bool]:
    """One dict per finished step: step, drafted, accepted, draft (start, duration), verify (start, duration).
    The bool says the start times were reconstructed (an older trace without them)."""
    rows = []
    for step in split_steps(events):
        fin = step.finished
        if fin is None:
            continue
        accepted = sum(n.status == "accepted" for n in step.nodes)
        rows.append(dict(step=step.index, drafted=len(step.nodes), accepted=accepted, tokens=len(step.tokens),
                         draft=[fin.draft_start_s, fin.draft_s], verify=[fin.verify_start_s, fin.verify_s],
                         overhead=fin.overhead_s))
    rebuilt = bool(rows) and all(r["draft"][0] == 0 and r["verify"][0] == 0 for r in rows)
    if rebuilt:
        clock = 0.0
        for r in rows:
            r["draft"][0] = clock
            r["verify"][0] = clock + r["draft"][1]
            clock += r["draft"][1] + r["verify"][1] + r["overhead"]
    return rows, rebuilt


def side_traces(events: list[Event], side: str, show_legend: bool) -> tuple[list[dict], bool]:
    rows, rebuilt = phases(events)
    start = run_started(events)
    ar = start is not None and str(start.drafter).startswith("none")
    traces = []
    for phase, color in PHASES.items() if rows else ():
        if phase == "draft" and (ar or not any(r["drafted"] or r["draft"][1] for r in rows)):
            continue  # autoregressive: nothing is ever drafted
        label = f"{side} · {phase}" if side else phase
        hover = []
        for r in rows:
            begin, took = r[phase]
            what = (f"drafted {r['drafted']} token{'s' * (r['drafted'] != 1)}" if phase == "draft" else
                    f"one target forward over {r['drafted'] + 1} position{'s' * (r['drafted'] != 0)}: "
                    f"{r['accepted']} draft{'s' * (r['accepted'] != 1)} accepted, {r['tokens']} token"
                    f"{'s' * (r['tokens'] != 1)} emitted")
            hover.append(esc_plot(f"step {r['step']} · {phase}: {1000 * took:.1f} ms, from {begin:.3f} s") + "<br>"
                         + esc_plot(what))
        traces.append(dict(type="bar", orientation="h", base=[r[phase][0] for r in rows],
                           x=[r[phase][1] for r in rows], y=[label] * len(rows), name=phase,
                           legendgroup=phase, showlegend=show_legend, marker=dict(color=color, line=dict(width=0)),
                           hovertext=hover, hoverinfo="text"))
    return traces, rebuilt


def timeline_figure(events: list[Event], ar: list[Event] | None = None) -> go.Figure:
    """The run's phases on the wall clock; with `ar` (a race's autoregressive side) a second row group."""
    traces, rebuilt = side_traces(events, "speculative" if ar is not None else "", True)
    if ar is not None:
        more, rebuilt_ar = side_traces(ar, "autoregressive", not traces)
        traces += more
        rebuilt = rebuilt or rebuilt_ar
    rows = list(dict.fromkeys(t["y"][0] for t in traces if t["y"]))
    title = "Timeline: drafting and verification on the wall clock"
    if rebuilt:
        title += " (older trace: bars laid end to end from the durations)"
    start = run_started(events)
    if start is not None and ar is None:
        title += f" · {esc_plot(visible(start.drafter, 40))}"
    layout = dict(
        height=max(HEIGHT, 110 + 50 * len(rows)), barmode="overlay", bargap=0.35,
        margin=dict(l=10, r=10, t=36, b=10), plot_bgcolor="white", paper_bgcolor="white",
        title=dict(text=title if traces and any(t["x"] for t in traces) else "the timeline appears here",
                   font=dict(size=14)),
        legend=dict(orientation="h", yanchor="top", y=-0.3, x=0, font=dict(size=11)),
        xaxis=dict(title=dict(text="seconds since the run started"), gridcolor="#e2e8f0", rangemode="tozero"),
        yaxis=dict(autorange="reversed", categoryorder="array", categoryarray=rows, automargin=True),
        hoverlabel=dict(align="left"),
    )
    return go.Figure(dict(data=traces, layout=layout))
