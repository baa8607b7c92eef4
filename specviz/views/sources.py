"""A merged tree's drafters (drafters/merged.py) and the marker shape each gets in the views."""
from __future__ import annotations

SOURCE_SYMBOLS = ("circle", "square", "triangle-up")
BOTH_SYMBOL = "hexagon"


def source_symbols(nodes, sources=None) -> dict[str, str]:
    """A merged tree's drafters that proposed nodes here (Node.source), each with a marker shape: by their
    order in `sources` (the Drafted event's), so a drafter keeps its shape from step to step; nodes both
    proposed are hexagons. Empty for a tree from one drafter."""
    order = list(sources or [])
    out: dict[str, str] = {}
    for node in nodes:
        src = node.source
        if src is None or src in out:
            continue
        if src == "both":
            out[src] = BOTH_SYMBOL
        else:
            if src not in order:
                order.append(src)
            out[src] = SOURCE_SYMBOLS[min(order.index(src), len(SOURCE_SYMBOLS) - 1)]
    return dict(sorted(out.items(), key=lambda kv: (kv[0] == "both", order.index(kv[0]) if kv[0] in order else 0)))
