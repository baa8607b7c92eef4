"""Named ways to shape a model drafter's proposal (chain or tree), for the CLI, bench and app.

Each entry maps a name to (description, factory); factory(draft_len) returns a Builder, i.e.
builder(drafter_lm, ids, warp, gen) -> DraftTree. `draft_len` is the strategy's size knob: chain
length for chains, depth (or node budget, as the entry documents) for trees.
"""
from __future__ import annotations

from typing import Callable

from .model import Builder, chain_builder

STRATEGIES: dict[str, tuple[str, Callable[[int], Builder]]] = {
    "chain": ("one draft token per position (classic speculative decoding)", chain_builder),
}
