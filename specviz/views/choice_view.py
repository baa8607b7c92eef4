"""Drafter choices of an `auto` run, as a function of its events (live or replayed alike).

    choices(events)              -> Choices | None   (None: not an auto run)
    choice_markdown(events, curve) the panel: the arm chosen and why, each arm's probability and
                                   expected speedup (text bars), which arm drafted how many steps,
                                   every switch, and the run's speedup (measured against an AR run of
                                   the prompt where there is one) against the expectation
    choice_figure(events)        plotly: probabilities and expected speedups per arm (bars), and a
                                   band of the drafting arm along the steps
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..events import Event, RunStarted, StepStarted
from ..metrics import CostCurve, Metrics, expected_speedup
from .metrics_view import speedup
from .steps import decode_metrics

BAR = 20  # characters of a full text bar


@dataclass
class Choices:
    policy: dict
    first: dict | None  # the policy's decision (probabilities, reason)
    arms: list[str] = field(default_factory=list)  # the drafting arm of each step
    switches: list[tuple[int, dict]] = field(default_factory=list)  # (step, the online decision)


def choices(events: list[Event]) -> Choices | None:
    start = next((ev for ev in events if isinstance(ev, RunStarted)), None)
    if start is None or not start.policy:
        return None
    out = Choices(start.policy, None)
    for ev in events:
        if isinstance(ev, StepStarted):
            out.arms.append(ev.arm or "none")
            if ev.choice and ev.choice.get("by") == "policy":
                out.first = ev.choice
            elif ev.choice:
                out.switches.append((ev.step, ev.choice))
    return out


def _bar(x: float, full: float) -> str:
    n = round(BAR * max(0.0, min(1.0, x / full))) if full > 0 else 0
    return "█" * n + "·" * (BAR - n)


def _esc(s: str) -> str:
    return str(s).replace("|", "\\|")


def choice_markdown(events: list[Event], curve: CostCurve | None = None, reference: Metrics | None = None) -> str:
    c = choices(events)
    if c is None:
        return ""
    out = [f"**Drafter choice** ({c.policy.get('method', '?')} policy"
           + (f", re-deciding every {c.policy.get('every')} steps" if c.policy.get("online") else "") + ")"]
    if c.first is None:
        out.append("*The policy decides after the first step, which reads the prompt.*")
    else:
        out.append(f"Chosen: **{_esc(c.first['arm'])}**: {_esc(c.first.get('reason', ''))}")
        probs, expected = c.first.get("probs", {}), c.first.get("expected_speedup", {})
        top = max(expected.values(), default=0.0)
        rows = [f"| arm | probability | | expected speedup ({c.first.get('expected_from', 'the logged mean')}) |",
                "|---|---|---|---|"]
        for arm, p in sorted(probs.items(), key=lambda kv: -kv[1]):
            e = expected.get(arm)
            rows.append(f"| {_esc(arm)} | `{_bar(p, 1.0)}` | {p:.0%} | "
                        + (f"`{_bar(e, top)}` {e:.2f}×" if e is not None else "") + " |")
        out.append("\n".join(rows))
    if c.arms:
        counts: dict[str, int] = {}
        for arm in c.arms[1:]:
            counts[arm] = counts.get(arm, 0) + 1
        out.append("Steps drafted by: " + ", ".join(f"{_esc(a)} {n}" for a, n in counts.items())
                   + " (step 0 reads the prompt)")
    for step, sw in c.switches:
        out.append(f"- step {step}: {_esc(sw.get('from', '?'))} → **{_esc(sw['arm'])}**: {_esc(sw.get('reason', ''))}")
    if c.first is not None and c.first.get("expected_speedup"):
        want = c.first["expected_speedup"].get(c.first["arm"])
        out.append(f"This run: {_realized(events, curve, reference)}"
                   + (f"; the policy expected {want:.2f}× for the chosen arm" if want is not None else ""))
    if c.policy.get("skipped"):
        out.append("*" + "; ".join(_esc(s) for s in c.policy["skipped"]) + "*")
    return "\n\n".join(out)


def _realized(events: list[Event], curve: CostCurve | None, reference: Metrics | None) -> str:
    """The run's speed against plain decoding: measured where an autoregressive run of the same prompt is
    known (`reference`), else estimated from τ and the forward times recorded here, and said to be one."""
    decode = decode_metrics(events)
    measured = speedup(decode, reference)
    if measured is not None:
        return f"**{measured:.2f}×** plain decoding, measured against an autoregressive run of this prompt"
    estimate = expected_speedup(decode, curve) if decode is not None and curve is not None else None
    if estimate is None:
        return "not measured (tick *measure against AR* to measure it)"
    return (f"about {estimate:.2f}× plain decoding, estimated from its τ and the forward times this page has "
            "recorded (tick *measure against AR* to measure it)")


def choice_figure(events: list[Event]):
    """Bars of each arm's probability and logged expected speedup, and the drafting arm per step."""
    from plotly.subplots import make_subplots

    c = choices(events)
    fig = make_subplots(rows=2, cols=1, row_heights=[0.7, 0.3], vertical_spacing=0.18,
                        subplot_titles=("each arm: probability and expected speedup", "drafting arm by step"))
    if c is None:
        return fig
    if c.first is not None:
        arms = list(c.first.get("probs", {}))
        fig.add_bar(x=arms, y=[c.first["probs"][a] for a in arms], name="probability", row=1, col=1)
        exp = c.first.get("expected_speedup", {})
        fig.add_bar(x=arms, y=[exp.get(a, 0.0) for a in arms], name="expected speedup", row=1, col=1)
    names = sorted(set(c.arms))
    fig.add_scatter(x=list(range(len(c.arms))), y=c.arms, mode="markers", marker=dict(symbol="square", size=10),
                    name="drafting arm", row=2, col=1)
    fig.update_yaxes(categoryorder="array", categoryarray=names, row=2, col=1)
    fig.update_layout(height=420, barmode="group", margin=dict(l=40, r=20, t=40, b=30))
    return fig
