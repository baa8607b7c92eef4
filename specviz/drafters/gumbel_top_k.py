"""Gumbel-Top-k trees for Recursive Speculative Decoding (RSD, Jeon et al. 2024).

Each node's children are k distinct tokens drawn without replacement from its q: the top-k of
log q + Gumbel noise, in key order, which is exactly sequential sampling without replacement.
The RSD verifier (verify_sampling with draw = without_replacement) removes each rejected token from
q before trying the next sibling, which keeps the output distribution exactly the target's.
"""
from __future__ import annotations

import torch

from ..tree import WITHOUT_REPLACEMENT
from .trees import gumbel_keys, widths_builder, widths_strategy


def gumbel_top_k(qs: torch.Tensor, k: int, gen: torch.Generator) -> list[list[int]]:
    """Per row of qs, up to k distinct tokens drawn without replacement, in draw order (never q = 0)."""
    top = gumbel_keys(qs.log(), gen).topk(min(k, qs.shape[-1]), dim=-1)
    rows = zip(top.indices.tolist(), top.values.tolist())
    return [[t for t, v in zip(ts, vs) if v > float("-inf")] for ts, vs in rows]


# nodes at depth d get widths[d] distinct children (at most max_nodes nodes in all)
gumbel_top_k_builder = widths_builder(gumbel_top_k, WITHOUT_REPLACEMENT)
gumbel_top_k_strategy = widths_strategy(gumbel_top_k_builder)
