"""The lossless check's result (specviz/lossless_check.py) as words, a table and side-by-side bars."""
from __future__ import annotations

import plotly.graph_objects as go

from ..lossless_check import PASS_P, CheckResult
from .labels import esc

TOP = 12  # sequences shown as bars (the rest pooled into "all others")


def readable(text: str) -> str:
    return repr(text)[1:-1].replace(" ", "␣") or "∅"


def lossless_markdown(r: CheckResult) -> str:
    verdict = "**passes** ✓" if r.passed else "**fails** ✗"  # no emoji: the browser font may lack them
    rule = f"{esc(r.rule)}" + ("" if r.lossless_rule else " (not a lossless rule)")
    rows = [
        "| | plain decoding | speculative |",
        "|---|---|---|",
        f"| samples of the first {r.k} token{'s' if r.k > 1 else ''} | {r.plain.n:,} | {r.speculative.n:,} |",
        f"| chi-square p-value vs the exact distribution | {r.plain.pvalue:.3g} | **{r.speculative.pvalue:.3g}** |",
        f"| total variation distance (noise floor {r.noise[0]:.3f}, 95%: {r.noise[1]:.3f}) | {r.plain.tv:.3f} | "
        f"**{r.speculative.tv:.3f}** |",
        f"| draft tokens accepted / drafted | – | {r.speculative.accepted:,} / {r.speculative.drafted:,} |",
    ]
    note = f" Ended early: {esc(r.note)}." if r.note else ""
    return (f"### The check {verdict}\n\n{r.sentence()}{note}\n\n" + "\n".join(rows)
            + f"\n\n<small>Rule: {rule}. Cells: {len(r.cells)} sequences expecting ≥ 5 samples each, plus one cell "
              f"for every other sequence ({r.rest:.3f} of the probability). The exact probabilities come from the "
              f"target's own logits ({r.real_forwards} forwards in {r.seconds:.0f} s for the whole check). A p-value "
              f"below {PASS_P:g} fails. Run i uses seed + i on both sides: the same request gives the same result, "
              "and where nothing was drafted both sides draw the same tokens (each side is tested against the exact "
              "distribution, not against the other).</small>")


def lossless_figure(r: CheckResult | None) -> go.Figure:
    fig = go.Figure()
    if r is None:
        fig.update_layout(height=320, margin=dict(l=10, r=10, t=10, b=10), plot_bgcolor="white",
                          annotations=[dict(text="Press <b>Run the check</b> to sample both decoders", showarrow=False,
                                            x=0.5, y=0.5, xref="paper", yref="paper", font=dict(size=14))],
                          xaxis=dict(visible=False), yaxis=dict(visible=False))
        return fig
    top = sorted(r.cells, key=lambda s: -r.cells[s])[:TOP]
    labels = [readable(r.labels.get(s, " ".join(map(str, s)))) for s in top] + ["all others"]
    exact = [r.cells[s] for s in top] + [1 - sum(r.cells[s] for s in top)]

    def freq(side):
        shown = [side.counts[s] / side.n for s in top]
        return shown + [1 - sum(shown)]

    for name, values, color in (("exact (target)", exact, "#334155"), ("plain decoding", freq(r.plain), "#60a5fa"),
                                ("speculative", freq(r.speculative), "#16a34a" if r.passed else "#dc2626")):
        fig.add_bar(x=labels, y=values, name=name, marker_color=color,
                    hovertemplate="%{x}: %{y:.3f}<extra>" + name + "</extra>")
    fig.update_layout(barmode="group", height=340, margin=dict(l=40, r=10, t=30, b=90), plot_bgcolor="white",
                      paper_bgcolor="white", legend=dict(orientation="h", y=1.08, x=0),
                      yaxis=dict(title="probability", gridcolor="#e2e8f0"), xaxis=dict(tickangle=-30),
                      font=dict(size=11))
    return fig
