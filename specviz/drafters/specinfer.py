"""SpecInfer-style multi-draft trees (Miao et al. 2024): children drawn i.i.d. from q.

Siblings may repeat a token; that is what i.i.d. means and what the multi-draft verifier
(verify_sampling with draw = iid) assumes, so duplicates are kept rather than merged. A repeat is
never accepted after its twin was rejected (the residual has no mass left on it), so it only
costs a node.
"""
from __future__ import annotations

import torch

from ..tree import IID, DraftTree
from .trees import build_by_widths, default_widths


def iid_draws(qs: torch.Tensor, k: int, gen: torch.Generator) -> list[list[int]]:
    """Per row of qs, k independent draws from it (with replacement)."""
    return torch.multinomial(qs, k, replacement=True, generator=gen).tolist()


def specinfer_builder(widths: tuple[int, ...] = (3, 2, 1), max_nodes: int | None = None):
    """A builder whose nodes at depth d get widths[d] i.i.d. children (at most max_nodes nodes)."""
    widths = tuple(widths)

    def build(lm, ids, warp, gen) -> DraftTree:
        return build_by_widths(lm, ids, warp, gen, widths, iid_draws, IID, max_nodes)

    return build


def specinfer_strategy(draft_len: int):
    """draft_len = depth; widths (2, 2, 1, 1, ...): 4 * draft_len - 2 nodes (2 for draft_len 1)."""
    return specinfer_builder(default_widths(draft_len))
