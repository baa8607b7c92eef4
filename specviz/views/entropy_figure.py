"""Entropy over the generation: the drafter's at every drafted position (Node.q_entropy) and the
target's at every emitted position (Token.p_entropy). Where the drafter is unsure, drafts get
rejected; where the target is unsure, even a good drafter cannot guess.

Where each drafting round stopped is marked in a row above the curves (the Drafted events' stop
notes): a grey tick where a round ended without an early stop (it reached the rule's length, or
the drafter ran out of guesses), a purple triangle where the stopping rule ended it early; hovering
a mark shows why, the rule and its numbers. The title names the stopping rule of the run config
recorded in RunStarted (absent in older traces).

Runs with the AdaEDL stopping rule get a second panel below, on a probability scale: at every drafted
position the rule's lower bound on acceptance, 1 − sqrt(γ·H) from the drafter's entropy H there,
beside the β = Σ min(p, q) the target measured at the same position once verified (so one sees how
tight, or loose, the bound is), and the threshold λ the bound was compared with, round by round
(the stop notes' `lambda`: it adapts as acceptance runs above or below the rule's target).
"""
from __future__ import annotations

import plotly.graph_objects as go

from ..events import Drafted, Event
from ..stop_rules.adaedl import acceptance_bound
from . import stop_note
from .labels import esc_plot, visible
from .palette import MARKER, SHORT
from .steps import run_started, split_steps

HEIGHT = 330
HEIGHT_BOUND = 540  # with the AdaEDL panel
DEFAULT_GAMMA = 0.2  # AdaEDL's γ when a trace records none
CAPTION = ("**Entropy:** how unsure each model was at each position (higher = less sure; dots are the drafter's "
           "guesses, the line is the target); marks on top show where and why each drafting round stopped.")
CAPTION_BOUND = (" Below, for AdaEDL: the bound it predicts for acceptance (blue) against the acceptance β the "
                 "target then measured (green); a round stops once the bound would fall under λ (dashed).")
GL_ABOVE = 4000  # points beyond which WebGL traces keep the browser responsive
MAX_DRAFT_POINTS = 4000  # drafter points drawn; beyond, every k-th drafted node (the figure stays small)
STOPS = {  # why a round ended (stop_note.kind) -> legend name, marker
    stop_note.RULE: ("drafting stopped early by the stopping rule",
                     dict(symbol="triangle-down", size=11, color="#7c3aed")),
    stop_note.LIMIT: ("drafting round ended (length limit, or the drafter ran out)",
                      dict(symbol="line-ns-open", size=10, color="#94a3b8", line=dict(width=1.5))),
}


def stopping_rule(events: list[Event]) -> str | None:
    """The stopping rule the run was configured with (RunStarted.config; None in older traces)."""
    start = run_started(events)
    config = start.config if start is not None and isinstance(start.config, dict) else {}
    name = config.get("stop")
    return name if isinstance(name, str) else None


def stop_hover(step_index: int, note: dict) -> str:
    lines = [f"step {step_index}: drafting stopped at depth {note['depth']}",
             f"why: {stop_note.why(note)}", f"stopping rule: {stop_note.label(note)}"]
    lines += [f"{k} = {v}" for k, v in stop_note.numbers(note)]
    return "<br>".join(esc_plot(line) for line in lines)


def caption(events: list[Event]) -> str:
    """The figure's one-line caption (longer when the run has the AdaEDL panel)."""
    return CAPTION + (CAPTION_BOUND if uses_bound(events) else "")


def uses_bound(events: list[Event]) -> bool:
    """The run stopped its rounds with AdaEDL (by its run config, or by its stop notes)."""
    if stopping_rule(events) == "adaedl":
        return True
    return any(isinstance(ev, Drafted) and stop_note.is_note(ev.stop) and ev.stop.get("rule") == "adaedl"
               for ev in events)


def gamma_of(events: list[Event], note) -> float:
    """γ of a round: its stop note's, else the run config's, else AdaEDL's default."""
    if stop_note.is_note(note) and stop_note.is_number(note.get("gamma")):
        return float(note["gamma"])
    start = run_started(events)
    config = start.config if start is not None and isinstance(start.config, dict) else {}
    params = config.get("stop_params") if isinstance(config.get("stop_params"), dict) else {}
    value = params.get("gamma")
    return float(value) if stop_note.is_number(value) else DEFAULT_GAMMA


def bound_traces(events: list[Event], steps) -> list[dict]:
    """The AdaEDL panel (yaxis y2): bound and measured β at each drafted position, λ per round."""
    bx, by, bh, mx, my, mh, lx, ly, lh = [], [], [], [], [], [], [], [], []
    for step in steps:
        note = step.drafted.stop if step.drafted is not None else None
        gamma = gamma_of(events, note)
        for node in step.nodes:
            x = step.position + node.depth - 1
            bound = acceptance_bound(max(0.0, node.q_entropy), gamma)
            bx.append(x)
            by.append(bound)
            bh.append(esc_plot(f"step {step.index}, depth {node.depth}: draft {visible(node.text, 30)}") + "<br>"
                      + esc_plot(f"bound 1 − √(γ·H) = 1 − √({gamma:g} × {node.q_entropy:.2f}) = {bound:.2f}")
                      + (f"<br>measured β = {node.beta:.2f}" if node.beta is not None else ""))
            if node.beta is not None:
                mx.append(x)
                my.append(node.beta)
                mh.append(esc_plot(f"step {step.index}, depth {node.depth}: measured β = Σ min(p, q) = "
                                   f"{node.beta:.2f}") + "<br>" + esc_plot(f"the bound predicted {bound:.2f}"))
        if stop_note.is_note(note) and stop_note.is_number(note.get("lambda")):
            lx.append(step.position - 0.5)
            ly.append(note["lambda"])
            lh.append(esc_plot(f"step {step.index}: threshold λ = {note['lambda']:.3f}") + "<br>"
                      + "a round stops before a draft whose bound is below λ")
    if lx:  # hold the last round's λ to its last drafted position
        lx.append(max([lx[-1] + 1, *bx]) + 0.5)
        ly.append(ly[-1])
        lh.append(lh[-1])
    common = dict(type="scatter", xaxis="x", yaxis="y2", hoverinfo="text")
    return [
        dict(common, x=bx, y=by, hovertext=bh, mode="markers", name="AdaEDL bound 1 − √(γ·H) (predicted acceptance)",
             marker=dict(size=7, color="#2563eb", symbol="diamond")),
        dict(common, x=mx, y=my, hovertext=mh, mode="markers", name="measured β = Σ min(p, q)",
             marker=dict(size=7, color="#16a34a", symbol="circle-open", line=dict(width=1.5, color="#16a34a"))),
        dict(common, x=lx, y=ly, hovertext=lh, mode="lines", name="threshold λ (adapts each round)",
             line=dict(color="#7c3aed", width=1.5, dash="dash", shape="hv")),
    ]


def entropy_figure(events: list[Event]) -> go.Figure:
    steps = split_steps(events)
    tx, ty, thover = [], [], []
    stops: dict[str, tuple[list, list]] = {}
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
        note = step.drafted.stop if step.drafted is not None else None
        if stop_note.is_note(note):
            kind = stop_note.RULE if stop_note.kind(note) == stop_note.RULE else stop_note.LIMIT
            xs, hs = stops.setdefault(kind, ([], []))
            xs.append(step.position + note["depth"] - 0.5)  # just after the round's last drafted position
            hs.append(stop_hover(step.index, note))
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
    plot = "scattergl" if len(tx) + sum(len(v[0]) for v in drafts.values()) > GL_ABOVE else "scatter"
    traces = [dict(type=plot, x=tx, y=ty, mode="lines+markers", name="target entropy (emitted tokens)",
                   line=dict(color="#1e293b", width=1.5), marker=dict(size=4, color="#1e293b"),
                   hovertext=thover, hoverinfo="text")]
    for status in ("accepted", "rejected", "unvisited"):
        if status in drafts:
            xs, ys, hs = drafts[status]
            traces.append(dict(type=plot, x=xs, y=ys, mode="markers", name=f"drafter entropy: {SHORT[status]}",
                               marker=dict(size=8, color=MARKER[status],
                                           symbol="circle-open" if status == "unvisited" else "circle",
                                           line=dict(width=1.5, color=MARKER[status])),
                               hovertext=hs, hoverinfo="text"))
    # stop marks in a row above the curves: at most one per step (trace.MAX_STEPS), so plain scatter
    top = 1.08 * max([1.0, *ty, *(y for _, ys, _ in drafts.values() for y in ys)])
    for kind in (stop_note.LIMIT, stop_note.RULE):
        if kind in stops:
            xs, hs = stops[kind]
            name, marker = STOPS[kind]
            traces.append(dict(type="scatter", x=xs, y=[top] * len(xs), mode="markers", name=name, marker=marker,
                               hovertext=hs, hoverinfo="text", cliponaxis=False))
    rule = stopping_rule(events)
    title = "Entropy: where the models are unsure (nats, temperature 1)"
    if rule is not None and rule != "static":
        title += f" · stopping rule: {esc_plot(visible(rule, 40))}"
    if every > 1:
        title += f" · drafter: 1 in {every} of {n_drafted} nodes drawn"
    bound = bool(steps) and uses_bound(events)
    if bound:
        traces += bound_traces(events, steps)
    layout = dict(
        height=HEIGHT, margin=dict(l=50, r=10, t=36, b=10), plot_bgcolor="white", paper_bgcolor="white",
        title=dict(text=title if steps else "entropy curves appear here", font=dict(size=14)),
        legend=dict(orientation="h", yanchor="top", y=-0.2, x=0, font=dict(size=11)),
        xaxis=dict(title=dict(text="generated token position"), gridcolor="#e2e8f0", rangemode="tozero"),
        yaxis=dict(title=dict(text="entropy (nats)"), gridcolor="#e2e8f0", rangemode="tozero"),
        hoverlabel=dict(align="left"),
    )
    if bound:  # entropy on top, the AdaEDL panel below on a shared position axis
        layout.update(height=HEIGHT_BOUND, legend=dict(layout["legend"], y=-0.12))
        layout["xaxis"].update(anchor="y2")
        layout["yaxis"].update(domain=[0.5, 1.0])
        layout["yaxis2"] = dict(domain=[0.0, 0.36], anchor="x", range=[-0.02, 1.05], gridcolor="#e2e8f0",
                                title=dict(text="probability"))
        layout["annotations"] = [dict(text="AdaEDL: predicted acceptance (bound) vs measured β, and threshold λ",
                                      x=0, y=0.38, xref="paper", yref="paper", xanchor="left", yanchor="bottom",
                                      showarrow=False, font=dict(size=12))]
    return go.Figure(dict(data=traces, layout=layout))
