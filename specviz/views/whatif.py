"""What if: the expected speedup of speculative decoding as a function of acceptance, draft length (or tree
shape), drafter cost and this machine's verification cost, with measured runs as points on the same axes.

No new formula lives here. A what-if point is turned into the Metrics that a run with those figures would
have recorded (`what_if_metrics`), and metrics.expected_speedup (the metrics table's and the bench's
"predicted speedup" on this machine's CostCurve) prices it. With a flat cost curve (verifying several
positions costs one forward) a chain point equals metrics.predicted_speedup, Leviathan et al.'s formula.

    tau     chain: (1 - a^(g+1)) / (1 - a)          tree: 1 + sum_d prod_{j<=d} (1 - (1 - a)^w_j)
    price   tau x cost(1) / (g c cost(1) + cost(1 + nodes))   (metrics.expected_speedup)

The tree's acceptance per depth, 1 - (1 - a)^w, treats the w candidates of a depth as independent tries
(each accepted with probability a): a teaching approximation, labelled as such on the page.
"""
from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go

from ..metrics import CostCurve, Metrics, expected_speedup

STEPS = 1000  # steps of the imagined run (only ratios matter)
FLAT = "flat (verifying costs one forward)"


def chain_tau(alpha: float, gamma: int) -> float:
    """Expected tokens per target forward of a chain of gamma drafts, each accepted with probability alpha."""
    if gamma <= 0:
        return 1.0
    if alpha >= 1.0:
        return gamma + 1.0
    return (1 - alpha ** (gamma + 1)) / (1 - alpha)


def tree_tau(alpha: float, widths: tuple[int, ...]) -> float:
    """Expected tokens per forward of a tree with widths[d] candidates per accepted node at depth d + 1."""
    tau, reach = 1.0, 1.0
    for w in widths:
        reach *= 1 - (1 - alpha) ** w
        tau += reach
    return tau


def tree_nodes(widths: tuple[int, ...]) -> int:
    total, level = 0, 1
    for w in widths:
        level *= w
        total += level
    return total


def flat_curve(seconds: float = 1.0) -> CostCurve:
    """A cost curve where any forward costs the same (the chain formula's assumption)."""
    return CostCurve({1: [seconds] * 3, 1024: [seconds] * 3})


def linear_curve(slope: float, seconds: float = 1.0) -> CostCurve:
    """cost(n) = cost(1) x (1 + slope x (n - 1)): a slider's stand-in where nothing was measured."""
    return CostCurve({n: [seconds * (1 + slope * (n - 1))] * 3 for n in (1, 2, 4, 8, 16, 32, 64, 128, 256)})


def what_if_metrics(tau: float, nodes: int, c: float, curve: CostCurve) -> Metrics:
    """The decode Metrics of STEPS steps that each emit tau tokens after drafting `nodes` tokens at c one-token
    forwards per drafted token (c as metrics.Metrics.c defines it, against this curve's one-token forward)."""
    one = curve.seconds(1) or 1.0
    many = curve.seconds(1 + nodes) if nodes else one
    m = Metrics(tokens=tau * STEPS, steps=STEPS, drafted=nodes * STEPS, draft_s=c * nodes * one * STEPS,
                verify_s=(many or one) * STEPS)
    if not nodes:
        m.single_steps, m.single_verify_s = STEPS, one * STEPS
    return m


def speedup(tau: float, nodes: int, c: float, curve: CostCurve) -> float | None:
    """metrics.expected_speedup of that imagined run (None where the curve does not reach 1 + nodes)."""
    return expected_speedup(what_if_metrics(tau, nodes, c, curve), curve)


def chain_speedup(alpha: float, gamma: int, c: float, curve: CostCurve) -> float | None:
    return speedup(chain_tau(alpha, gamma), gamma, c, curve)


def tree_speedup(alpha: float, widths: tuple[int, ...], c: float, curve: CostCurve) -> float | None:
    return speedup(tree_tau(alpha, widths), tree_nodes(widths), c, curve)


def covered(curve: CostCurve, nodes: int) -> bool:
    return curve.seconds(1) is not None and curve.seconds(1 + nodes) is not None


@dataclass
class Point:
    """A measured run on the explorer's axes: its alpha, draft nodes per drafting step, c and speedups."""

    label: str
    alpha: float
    nodes: float
    c: float
    predicted: float | None  # expected_speedup of its own metrics on the curve
    measured: float | None = None  # tok/s against plain decoding, where known


def run_point(label: str, m: Metrics, curve: CostCurve, measured: float | None = None) -> Point | None:
    """A run's decode metrics as a point (None for a run that drafted nothing)."""
    if not m.drafted or not m.steps:
        return None
    wide = m.steps - m.single_steps
    return Point(label, m.alpha, m.drafted / max(wide, 1), m.c, expected_speedup(m, curve), measured)


def surface(c: float, curve: CostCurve, max_gamma: int = 16, alphas: int = 41) -> tuple[list, list, list]:
    """Chain speedup over alpha (rows) x draft length (columns); None where the curve does not reach."""
    a_axis = [i / (alphas - 1) for i in range(alphas)]
    g_axis = list(range(1, max_gamma + 1))
    z = [[chain_speedup(min(a, 0.999), g, c, curve) for g in g_axis] for a in a_axis]
    return a_axis, g_axis, z


def figure(alpha: float, gamma: int, c: float, curve: CostCurve, widths: tuple[int, ...] = (),
           points: list[Point] = (), max_gamma: int = 16) -> go.Figure:
    """Left: speedup against draft length at this alpha (chain, and the tree if widths are given), with the
    measured points. Right: the chain's speedup over alpha x draft length, 1x as a contour."""
    g_axis = list(range(1, max_gamma + 1))
    a_axis, _, z = surface(c, curve, max_gamma)
    data = [go.Scatter(x=g_axis, y=[chain_speedup(alpha, g, c, curve) for g in g_axis], mode="lines+markers",
                       name=f"chain, α = {alpha:.2f}", line=dict(color="#2563eb"), xaxis="x", yaxis="y",
                       hovertemplate="draft length %{x}: %{y:.2f}×<extra>chain</extra>")]
    if widths:
        nodes = tree_nodes(widths)
        s = tree_speedup(alpha, widths, c, curve)
        if s is not None:
            data.append(go.Scatter(x=[nodes], y=[s], mode="markers", name=f"tree {'-'.join(map(str, widths))}",
                                   marker=dict(symbol="diamond", size=13, color="#16a34a"), xaxis="x", yaxis="y",
                                   hovertemplate=f"tree widths {widths}: {nodes} nodes, %{{y:.2f}}×<extra></extra>"))
    mine = chain_speedup(alpha, gamma, c, curve)
    if mine is not None:
        data.append(go.Scatter(x=[gamma], y=[mine], mode="markers", name="your setting",
                               marker=dict(size=14, color="#2563eb", line=dict(color="black", width=1.5)),
                               xaxis="x", yaxis="y", hovertemplate="your setting: %{y:.2f}×<extra></extra>"))
    for j, p in enumerate(points):
        if p.predicted is None:
            continue
        data.append(go.Scatter(x=[p.nodes], y=[p.measured if p.measured is not None else p.predicted],
                               mode="markers+text", text=[p.label],
                               textposition=("top center", "bottom center", "middle right")[j % 3],
                               name=p.label, marker=dict(symbol="x", size=12, color="#dc2626"), xaxis="x", yaxis="y",
                               hovertemplate=(f"{p.label}: α = {p.alpha:.2f}, c = {p.c:.3f}, "
                                              f"{p.nodes:.1f} nodes, predicted {p.predicted:.2f}×"
                                              + (f", measured {p.measured:.2f}×" if p.measured else "")
                                              + "<extra></extra>")))
    top = max([v for row in z for v in row if v is not None] + [2.0])
    scale = [[0, "#b91c1c"], [1 / top, "#f8fafc"], [1, "#1d4ed8"]]  # red below 1x, white at 1x, blue above
    data.append(go.Heatmap(x=g_axis, y=a_axis, z=z, colorscale=scale, zmin=0, zmax=top, xaxis="x2", yaxis="y2",
                           colorbar=dict(title="speedup", x=1.0, len=0.9),
                           hovertemplate="α %{y:.2f}, draft length %{x}: %{z:.2f}×<extra></extra>"))
    data.append(go.Contour(x=g_axis, y=a_axis, z=z, showscale=False, contours=dict(start=1, end=1, size=1,
                           coloring="none", showlabels=True), line=dict(color="black", width=2), xaxis="x2",
                           yaxis="y2", hoverinfo="skip", name="1× (break-even)"))
    data.append(go.Scatter(x=[gamma], y=[alpha], mode="markers", marker=dict(size=12, color="white",
                           line=dict(color="black", width=2)), xaxis="x2", yaxis="y2", showlegend=False,
                           hoverinfo="skip"))
    layout = dict(
        height=360, margin=dict(l=50, r=10, t=40, b=45), plot_bgcolor="white", paper_bgcolor="white",
        font=dict(size=11), legend=dict(orientation="h", y=-0.2, x=0),
        xaxis=dict(domain=[0, 0.45], title="draft tokens per step (tree: nodes)", gridcolor="#e2e8f0"),
        yaxis=dict(title="expected speedup (×)", gridcolor="#e2e8f0", rangemode="tozero"),
        xaxis2=dict(domain=[0.55, 0.93], title="draft length (chain)"),
        yaxis2=dict(anchor="x2", title="acceptance α"),
        shapes=[dict(type="line", xref="x", yref="y", x0=0, x1=max_gamma, y0=1, y1=1,
                     line=dict(color="#64748b", dash="dot"))],
        annotations=[dict(text=t, x=x, y=1.0, xref="paper", yref="paper", xanchor="center", yanchor="bottom",
                          showarrow=False, font=dict(size=12))
                     for t, x in (("speedup by draft length at this α", 0.22),
                                  ("chain speedup over α × length", 0.74))],
    )
    return go.Figure(data=data, layout=layout)


def verdict(alpha: float, gamma: int, c: float, curve: CostCurve, curve_name: str,
            widths: tuple[int, ...] = (), points: list[Point] = ()) -> str:
    """The explorer's answer in words: the chain (and tree) speedup, what dominates, the points."""
    s = chain_speedup(alpha, gamma, c, curve)
    if s is None:
        return (f"The cost curve ({curve_name}) does not reach {gamma + 1} positions: pick a shorter draft or the "
                "linear curve.")
    tau = chain_tau(alpha, gamma)
    one = curve.seconds(1)
    verify = curve.ratio(1 + gamma) or 1.0
    cost = gamma * c + verify
    lines = [f"**Chain: {s:.2f}×.** Each step emits τ = {tau:.2f} tokens on average and costs "
             f"{gamma} × c = {gamma * c:.2f} (drafting) + {verify:.2f} (verifying {gamma + 1} positions) = "
             f"{cost:.2f} one-token forwards; {tau:.2f} / {cost:.2f} = {s:.2f}."]
    if verify < 0.9:
        lines.append(f"⚠ On this curve verifying {gamma + 1} positions costs *less* than one token ({verify:.2f}×): "
                     "its one-token forwards were timed while the machine was busier. Such a curve flatters "
                     "speculation; compare with *linear* or *flat*.")
    if s < 1:
        why = "drafting" if gamma * c > verify - 1 else "verification"
        lines.append(f"Slower than plain decoding: {why} costs more than the {tau - 1:.2f} extra tokens per step pay "
                     "for.")
    if widths:
        t = tree_speedup(alpha, widths, c, curve)
        n = tree_nodes(widths)
        lines.append(f"Tree with widths {'-'.join(map(str, widths))} ({n} nodes): τ = {tree_tau(alpha, widths):.2f}, "
                     + (f"**{t:.2f}×**" if t is not None else "beyond the cost curve")
                     + " (independent-tries approximation: each of w candidates accepted with α).")
    for p in points:
        if p.predicted is not None:
            lines.append(f"*{p.label}*: α = {p.alpha:.2f}, c = {p.c:.3f}, {p.nodes:.1f} nodes per step → predicted "
                         f"{p.predicted:.2f}×" + (f", measured {p.measured:.2f}×" if p.measured else "") + ".")
    lines.append(f"<small>Verification cost: {curve_name}"
                 + (f"; a one-token forward takes {one * 1000:.0f} ms" if one and curve_name != FLAT else "")
                 + ". Priced by metrics.expected_speedup, the same function as the metrics table and the bench."
                 "</small>")
    return "\n\n".join(lines)
