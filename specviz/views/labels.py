"""Small text helpers shared by the views: visible token text and the numbers behind a token."""
from __future__ import annotations

import html


def visible(text: str, limit: int = 16) -> str:
    """Token text as a label: whitespace made visible, long tokens shortened (not escaped)."""
    text = str(text)
    if text == "":
        return "∅"
    out = text.replace("\n", "↵").replace("\t", "⇥").replace("\r", "")
    if out.startswith(" "):
        out = "␣" + out[1:]
    if out.strip() == "":
        out = out.replace(" ", "␣")
    return out if len(out) <= limit else out[: limit - 1] + "…"


def number(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    try:
        return f"{float(x):.{digits}f}"
    except (TypeError, ValueError):
        return "?"


def ratio(p, q) -> str:
    """The acceptance probability written out: min(1, p/q) = value."""
    try:
        p, q = float(p), float(q)
    except (TypeError, ValueError):
        return "–"
    value = 0.0 if q <= 0 else min(1.0, p / q)
    return f"min(1, {p:.3f}/{q:.3f}) = {value:.3f}"


def esc(text) -> str:
    """HTML-escape anything shown in HTML, attributes or plotly labels (tokens are untrusted)."""
    return html.escape(str(text), quote=True)


def esc_plot(text) -> str:
    """Escape for plotly labels and hover text: plotly parses a few tags but not &quot;, so quotes stay."""
    return html.escape(str(text), quote=False)
