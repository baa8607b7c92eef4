"""Draft a chain from a drafter model, one token per drafter forward."""
from __future__ import annotations

from typing import Callable

import torch

from ..lm import CachedLM
from ..sampling import Warp, entropy, probs, sample
from ..tree import DraftTree

# A stopping rule sees (depth so far, drafter entropy at the next position) and says stop.
StopRule = Callable[[int, float], bool]


def build_chain(
    lm: CachedLM, ids: list[int], warp: Warp, gen: torch.Generator, k: int, stop: StopRule | None = None
) -> DraftTree:
    tree = DraftTree()
    seq = list(ids)
    for depth in range(k):
        logits, _ = lm.forward(seq)
        ent = float(entropy(logits))
        if stop is not None and stop(depth, ent):
            break
        q = probs(logits[None], warp)[0].cpu()
        parent = len(tree) - 1
        tree.q[parent], tree.entropy[parent] = q, ent
        seq.append(tree.tokens[tree.add(sample(q, gen), parent)])
    return tree
