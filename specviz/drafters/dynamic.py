"""EAGLE-2-style dynamic trees (Li et al. 2024), for greedy decoding only.

The tree grows where the drafter is confident. A node's value is its path probability under the
drafter: the product of the drafter's temperature-1 probabilities along the path (greedy q itself
is one-hot, so it cannot rank anything). Each round adds the `width` most valuable candidates
(the top `branch` children of every node fed so far) and feeds them in one forward; the last round
spends what is left of the node budget on the best remaining candidates as leaves, which is
EAGLE-2's re-ranking step. Children are picked deterministically, not drawn from q, so no sampling
verifier here is lossless on these trees: under sampling the builder refuses.
"""
from __future__ import annotations

import heapq
from itertools import count

from ..tree import WITHOUT_REPLACEMENT, DraftTree
from .trees import feed, note_limit, root_logits, set_q


def build_dynamic(lm, ids, warp, gen, budget: int, depth: int, width: int = 2, branch: int = 4,
                  stop=None) -> DraftTree:
    """A stop rule sets the number of rounds (its limit); the tree's own values decide the rest."""
    depth = stop.limit() if stop is not None else depth
    if not warp.greedy:
        raise ValueError("dynamic trees are for greedy decoding")
    tree = DraftTree(draw=WITHOUT_REPLACEMENT)
    pool: list[tuple[float, int, int, int]] = []  # (-value, tie-break, parent, token): a max-heap
    rows, value, order = {}, {-1: 1.0}, count()

    def offer(node, row):  # make the node's best children candidates
        rows[node] = row
        top = row.float().softmax(-1).topk(min(branch, row.shape[-1]))
        for prob, tok in zip(top.values.tolist(), top.indices.tolist()):
            heapq.heappush(pool, (-value[node] * prob, next(order), node, tok))

    offer(-1, root_logits(lm, ids))
    for rnd in range(depth):
        last = rnd == depth - 1
        take = budget - len(tree) if last else min(width, budget - len(tree))
        chosen = [heapq.heappop(pool) for _ in range(min(take, len(pool)))]
        if not chosen:
            break
        new = []
        for neg_value, _, parent, tok in chosen:
            if parent not in tree.q:
                set_q(tree, parent, rows[parent], warp)
            new.append(tree.add(tok, parent))
            value[new[-1]] = -neg_value
        if last or len(tree) >= budget:
            break
        for node, row in zip(new, feed(lm, ids, tree, new)):
            offer(node, row)
    return note_limit(tree, stop, depth)


def dynamic_builder(budget: int = 16, depth: int = 6, width: int = 2, branch: int = 4):
    """At most `budget` nodes, at most `depth` deep; `width` nodes expanded per drafter forward."""
    return lambda lm, ids, warp, gen, stop=None: build_dynamic(lm, ids, warp, gen, budget, depth, width, branch, stop)


def dynamic_strategy(draft_len: int):
    """draft_len = depth; budget 4 * draft_len nodes."""
    return dynamic_builder(4 * draft_len, draft_len)
