"""Draft a chain from a drafter model, one token per drafter forward."""
from __future__ import annotations

import torch

from ..lm import CachedLM
from ..sampling import Warp, entropy, probs, sample
from ..stop_rules import StopNote, StopRule
from ..tree import DraftTree


def build_chain(
    lm: CachedLM, ids: list[int], warp: Warp, gen: torch.Generator, k: int, stop: StopRule | None = None
) -> DraftTree:
    """Up to k tokens (the stop rule's limit when there is one); the rule may end the chain sooner."""
    tree = DraftTree()
    seq = list(ids)
    k = stop.limit() if stop is not None else k
    for depth in range(1, k + 1):
        logits, _ = lm.forward(seq)
        ent = float(entropy(logits))
        if stop is not None and depth > 1:
            reason = stop.stop(depth, ent, float(logits.float().softmax(-1).max()))
            if reason is not None:
                tree.wasted_forwards += 1  # this forward only told us to stop
                tree.stop = StopNote(stop.name, depth - 1, reason, stop.state()).as_dict()
                return tree
        q = probs(logits[None], warp)[0].cpu()
        parent = len(tree) - 1
        tree.q[parent], tree.entropy[parent] = q, ent
        seq.append(tree.tokens[tree.add(sample(q, gen), parent)])
    if stop is not None:
        tree.stop = StopNote(stop.name, k, "limit", stop.state()).as_dict()
    return tree
