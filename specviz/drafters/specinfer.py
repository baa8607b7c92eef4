"""SpecInfer-style multi-draft trees (Miao et al. 2024): children drawn i.i.d. from q.

Siblings may repeat a token; that is what i.i.d. means and what the multi-draft verifier
(verify_sampling with draw = iid) assumes, so duplicates are kept rather than merged. A repeat is
never accepted after its twin was rejected (the residual has no mass left on it), so it only
costs a node.
"""
from __future__ import annotations

import torch

from ..tree import IID
from .trees import widths_builder, widths_strategy


def iid_draws(qs: torch.Tensor, k: int, gen: torch.Generator) -> list[list[int]]:
    """Per row of qs, k independent draws from it (with replacement)."""
    return torch.multinomial(qs, k, replacement=True, generator=gen).tolist()


# nodes at depth d get widths[d] i.i.d. children (at most max_nodes nodes in all)
specinfer_builder = widths_builder(iid_draws, IID)
specinfer_strategy = widths_strategy(specinfer_builder)
