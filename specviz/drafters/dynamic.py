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


class Frontier:
    """A best-first tree being grown: the tree, and the candidate children of its fed nodes by path value."""

    def __init__(self, warp, branch: int):
        self.tree = DraftTree(draw=WITHOUT_REPLACEMENT)
        self.warp, self.branch = warp, branch
        self.pool: list[tuple[float, int, int, int]] = []  # (-value, tie-break, parent, token): a max-heap
        self.rows, self.value, self.order = {}, {-1: 1.0}, count()
        self.values: list[float] = []  # path value per tree node, in node order

    def offer(self, node: int, row) -> list[float]:
        """Make the node's `branch` likeliest children candidates; returns their probabilities."""
        self.rows[node] = row
        top = row.float().softmax(-1).topk(min(self.branch, row.shape[-1]))
        probs = top.values.tolist()
        for prob, tok in zip(probs, top.indices.tolist()):
            heapq.heappush(self.pool, (-self.value[node] * prob, next(self.order), node, tok))
        return probs

    def candidates(self) -> list[float]:
        """The candidates' path values, best first."""
        return sorted((-v for v, *_ in self.pool), reverse=True)

    def take(self, k: int) -> list[int]:
        """Add the k best candidates to the tree; their nodes."""
        new = []
        for neg_value, _, parent, tok in [heapq.heappop(self.pool) for _ in range(min(k, len(self.pool)))]:
            if parent not in self.tree.q:
                set_q(self.tree, parent, self.rows[parent], self.warp)
            new.append(self.tree.add(tok, parent))
            self.value[new[-1]] = -neg_value
            self.values.append(-neg_value)
        return new


def build_dynamic(lm, ids, warp, gen, budget: int, depth: int, width: int = 2, branch: int = 4,
                  stop=None) -> DraftTree:
    """A stop rule sets the number of rounds (its limit); the tree's own values decide the rest."""
    depth = stop.limit() if stop is not None else depth
    if not warp.greedy:
        raise ValueError("dynamic trees are for greedy decoding")
    grow = Frontier(warp, branch)
    grow.offer(-1, root_logits(lm, ids))
    for rnd in range(depth):
        last = rnd == depth - 1
        new = grow.take(budget - len(grow.tree) if last else min(width, budget - len(grow.tree)))
        if not new or last or len(grow.tree) >= budget:
            break
        for node, row in zip(new, feed(lm, ids, grow.tree, new)):
            grow.offer(node, row)
    return note_limit(grow.tree, stop, depth)


def dynamic_builder(budget: int = 16, depth: int = 6, width: int = 2, branch: int = 4):
    """At most `budget` nodes, at most `depth` deep; `width` nodes expanded per drafter forward."""
    return lambda lm, ids, warp, gen, stop=None: build_dynamic(lm, ids, warp, gen, budget, depth, width, branch, stop)


def dynamic_strategy(draft_len: int):
    """draft_len = depth; budget 4 * draft_len nodes."""
    return dynamic_builder(4 * draft_len, draft_len)
