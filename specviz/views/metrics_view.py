"""The numbers that explain why a run was fast or not: a table and three small charts.

Everything comes from the latest Metrics snapshot in the events (see specviz/metrics.py for the
definitions); the measured speedup needs a reference: the Metrics of an autoregressive run of the
same prompt and settings.
"""
from __future__ import annotations

import plotly.graph_objects as go

from ..events import Event
from ..metrics import MIN_SAMPLES, CostCurve, Metrics, expected_speedup
from .labels import esc
from .steps import decode_metrics, ended_early, first_step_metrics, latest_metrics, run_finished, run_started, split_steps

HEIGHT = 260


def speedup(metrics: Metrics | None, reference: Metrics | None) -> float | None:
    if metrics is None or reference is None or reference.tokens_per_s <= 0:
        return None
    return metrics.tokens_per_s / reference.tokens_per_s


def is_chain(events: list[Event]) -> bool:
    """Every drafted step of the run was a chain (one guess per position); True for a run without drafts."""
    return all(n.parent == n.id - 1 for step in split_steps(events) for n in step.nodes)


def metrics_markdown(events: list[Event], reference: Metrics | None = None, curve: CostCurve | None = None) -> str:
    """The run's figures, each defined once in specviz/metrics.py. `reference`: the decode metrics of an
    autoregressive run of the same prompt and settings; `curve`: this machine's forward-cost curve."""
    m = latest_metrics(events)
    if m is None:
        return "*Metrics appear here once a run starts.*"
    start, end = run_started(events), run_finished(events)
    state = (f"finished ({esc(end.stop_reason)})" if end is not None else
             "recorded run ended early (incomplete trace)" if ended_early(events) else "running…")
    first, decode = first_step_metrics(events), decode_metrics(events)
    d = decode or m  # decode-only figures once there is a second step
    total = m.draft_s + m.verify_s + m.overhead_s
    share = (lambda s: f"{100 * s / total:.0f}%") if total > 0 else (lambda s: "–")
    curve = curve or CostCurve()
    measured = speedup(decode, reference)
    if measured is not None:
        measured_text = f"**{measured:.2f}×** (AR reference: {reference.tokens_per_s:.1f} tok/s decoding)"
    elif start is not None and str(start.drafter).startswith("none"):
        measured_text = "1× (this run *is* the autoregressive reference)"
    else:
        measured_text = "tick *measure against AR* or run a race to measure it"
    chain = is_chain(events)
    beta = ", ".join(f"{b:.2f}" for b in m.beta_by_depth) or "–"
    prompt_tokens = f" ({start.prompt_tokens} prompt tokens)" if start is not None else ""
    rows = [
        ("run", state),
        ("decoding speed", f"**{decode.tokens_per_s:.1f} tok/s** ({decode.tokens} tokens in {decode.elapsed_s:.2f} s, "
                           "after the first step)" if decode is not None else "– (needs a second step)"),
        ("prompt read (prefill)", f"{first.elapsed_s:.2f} s: the first step{prompt_tokens}, "
                                  f"{first.tokens} token{'s' if first.tokens != 1 else ''}" if first else "–"),
        ("overall, prefill included", f"{m.tokens_per_s:.1f} tok/s ({m.tokens} tokens in {m.elapsed_s:.2f} s)"),
        ("τ: tokens per target forward", f"**{m.tau:.2f}** ({m.steps} forwards; AR: 1.00)"),
        ("acceptance per step", f"**{m.path_acceptance:.2f}** ({m.accepted} accepted of {m.checked_positions} "
                                "drafts the target checked on its path)"),
        ("acceptance per node", f"{m.acceptance_rate:.2f} ({m.accepted} of {m.drafted} drafted "
                                + ("tokens" if chain else "tree nodes, most never on the path") + ")"),
        ("β by draft depth", beta),
        ("α (mean β) · c (draft/verify cost)", f"{m.alpha:.2f} · {m.c:.3f}"),
        ("verification cost", verify_cost_text(d, curve)),
        ("predicted speedup", predicted_text(d, curve, chain)),
        ("measured speedup", measured_text),
        ("time split", f"draft {share(m.draft_s)} · verify {share(m.verify_s)} · overhead {share(m.overhead_s)}"),
    ]
    table = "| metric | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    return table + ("\n\n<small>Decoding time only: the page's own work is excluded, and the first step, which "
                    "reads the prompt, is reported apart. Predicted: τ × cost(1) / (draft time per step + "
                    "cost(verified positions)), forward costs from this machine's measured curve.</small>")


def verify_cost_text(m: Metrics, curve: CostCurve) -> str:
    """What a forward over this run's verified positions costs on this machine, in one-token forwards."""
    if not m.drafted:
        return "– (nothing drafted)"
    n = m.mean_verified_positions
    ratio = curve.ratio(n)
    if ratio is None:
        return (f"– ({n:.1f} positions per verifying forward; this machine's cost curve needs at least "
                f"{MIN_SAMPLES} timed forwards of one token and around {n:.0f} positions: run without a drafter "
                "once, or tick *measure against AR*; this run's own forwards count once it ends)")
    return (f"{ratio:.2f}× a one-token forward for {n:.1f} positions (this machine's medians: {curve.count(n)} "
            f"forwards near {n:.0f} positions, {curve.count(1)} of one token)")


def predicted_text(m: Metrics, curve: CostCurve, chain: bool) -> str:
    value = expected_speedup(m, curve)
    text = (f"**{value:.2f}×** from τ = {m.tau:.2f} and this machine's forward costs" if value is not None else
            "– (needs this machine's cost of a one-token forward and of the verified positions: see above)")
    if chain and m.drafted:
        text += (f"; chain formula (Leviathan et al., i.i.d. acceptance): {m.predicted_speedup:.2f}× "
                 f"(γ = {m.mean_draft_length:.1f})")
    return text


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
