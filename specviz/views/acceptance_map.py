"""Acceptance map: beta (the chance that a draft at depth d is accepted, metrics.beta_by_depth) by draft position
and prompt category, as a heatmap, from a bench JSON or from this session's runs.

    table = from_bench(json.load(open("bench.json")))     {(source, category): [beta at depth 1, 2, ...]}
    table = from_runs([(category, drafter, metrics), ...])
    acceptance_figure(table)
"""
from __future__ import annotations

import plotly.graph_objects as go

from ..examples import EXAMPLE_PROMPTS
from ..metrics import Metrics

MAX_DEPTH = 16
YOURS = "your prompts"


def category_of(prompt: str) -> str:
    """An example prompt's category (code, summarization, ...), else 'your prompts'."""
    for name, text in EXAMPLE_PROMPTS:
        if prompt == text:
            return name
    return YOURS


def _betas(row) -> list[float] | None:
    b = row.get("beta_by_depth") if isinstance(row, dict) else None
    if isinstance(b, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in b):
        return [float(x) for x in b[:MAX_DEPTH]]
    return None


def from_bench(data: dict) -> dict[tuple[str, str], list[float]]:
    """Rows of a bench JSON: `bench` ({category: summary}), `bench --drafters` ({drafter: {category: row}}) or a
    list of rows with "category" (the tree bench). ValueError when it holds no beta_by_depth at all."""
    if not isinstance(data, dict):
        raise ValueError("a bench JSON is an object with 'results'")
    results, config = data.get("results"), data.get("config") if isinstance(data.get("config"), dict) else {}
    label = str(config.get("drafter", "bench"))
    out: dict[tuple[str, str], list[float]] = {}
    if isinstance(results, dict):
        for key, value in results.items():
            if _betas(value) is not None:
                out[(label, str(key))] = _betas(value)
            elif isinstance(value, dict):
                for cat, row in value.items():
                    if _betas(row) is not None:
                        out[(str(key), str(cat))] = _betas(row)
    elif isinstance(results, list):
        for row in results:
            if isinstance(row, dict) and _betas(row) is not None and "category" in row:
                source = " ".join(str(row[k]) for k in ("strategy", "nodes", "stop") if k in row) or label
                out[(source, str(row["category"]))] = _betas(row)
    if not out:
        raise ValueError("no beta_by_depth in this file: make one with `python -m specviz bench --json FILE`")
    return out


def from_runs(runs: list[tuple[str, str, Metrics]]) -> dict[tuple[str, str], list[float]]:
    """(category, drafter, metrics) of finished runs, pooled per (drafter, category) by their beta counts."""
    pooled: dict[tuple[str, str], Metrics] = {}
    for category, drafter, m in runs:
        if m.beta_count:
            pooled.setdefault((drafter, category), Metrics()).add(m)
    return {key: m.beta_by_depth[:MAX_DEPTH] for key, m in pooled.items()}


def acceptance_figure(table: dict[tuple[str, str], list[float]], title: str = "") -> go.Figure:
    """Rows: 'source · category'; columns: draft position; colour: beta (grey where nothing was drafted)."""
    rows = sorted(table, key=lambda k: (k[0], k[1] == "overall", k[1]))
    depth = max((len(table[k]) for k in rows), default=0)
    z = [[table[k][d] if d < len(table[k]) else None for d in range(depth)] for k in rows]
    labels = [f"{s} · {c}" if len({k[0] for k in rows}) > 1 else c for s, c in rows]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(1, depth + 1)), y=labels, zmin=0, zmax=1, colorscale="Greens",
        text=[[f"{v:.2f}" if v is not None else "" for v in row] for row in z], texttemplate="%{text}",
        colorbar=dict(title="β"), hovertemplate="%{y}, draft position %{x}: β = %{z:.2f}<extra></extra>"))
    fig.update_layout(height=max(220, 60 + 28 * len(rows)), margin=dict(l=10, r=10, t=40 if title else 10, b=40),
                      xaxis=dict(title="draft position (depth)", dtick=1), yaxis=dict(autorange="reversed"),
                      title=dict(text=title, x=0, font=dict(size=13)), plot_bgcolor="white", paper_bgcolor="white")
    return fig


CAPTION = ("**Acceptance map:** β at each draft position (1 = the first drafted token of a step), per prompt "
           "category: the chance that a draft there is accepted (Σ min(p, q) where the target looked). Dark green: "
           "the drafter guesses this kind of text well that far ahead; pale: drafting that deep is wasted work. "
           "Categories are the example prompts' (a prompt of your own counts as *your prompts*).")
