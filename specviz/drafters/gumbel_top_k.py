"""Gumbel-Top-k trees for Recursive Speculative Decoding (RSD, Jeon et al. 2024).

Each node's children are k distinct tokens drawn without replacement from its q: the top-k of
log q + Gumbel noise, in key order, which is exactly sequential sampling without replacement.
The RSD verifier (verify_sampling with draw = without_replacement) removes each rejected token from
q before trying the next sibling, which keeps the output distribution exactly the target's.
"""
from __future__ import annotations

import torch

from ..tree import WITHOUT_REPLACEMENT, DraftTree
from .trees import build_by_widths, default_widths, gumbel_keys


def gumbel_top_k(qs: torch.Tensor, k: int, gen: torch.Generator) -> list[list[int]]:
    """Per row of qs, up to k distinct tokens drawn without replacement, in draw order (never q = 0)."""
    top = gumbel_keys(qs.log(), gen).topk(min(k, qs.shape[-1]), dim=-1)
    rows = zip(top.indices.tolist(), top.values.tolist())
    return [[t for t, v in zip(ts, vs) if v > float("-inf")] for ts, vs in rows]


def gumbel_top_k_builder(widths: tuple[int, ...] = (3, 2, 1), max_nodes: int | None = None):
    """A builder whose nodes at depth d get widths[d] children (at most max_nodes nodes in all)."""
    widths = tuple(widths)

    def build(lm, ids, warp, gen) -> DraftTree:
        return build_by_widths(lm, ids, warp, gen, widths, gumbel_top_k, WITHOUT_REPLACEMENT, max_nodes)

    return build


def gumbel_top_k_strategy(draft_len: int):
    """draft_len = depth; widths (2, 2, 1, 1, ...): 4 * draft_len - 2 nodes (2 for draft_len 1)."""
    return gumbel_top_k_builder(default_widths(draft_len))
