"""N-gram drafting from counts (ADED-style): what followed the last few tokens, in a corpus of the
target's own outputs and in the text so far. Costs no model forward, so a wide tree costs only the
target's verification of its nodes, which on a CPU is nearly flat up to ~16 tokens.

The table backs off from the longest context with any count to shorter ones; counts from the
current text (prompt + output, updated every step: the "adaptive" part of ADED) weigh more than
the corpus, because a text repeats itself more than it repeats other texts.

As a tree (branches > 1) it grows best-first: the next node is the pending continuation with the
highest path probability under the counts, until the node budget is spent. Every node is a
deterministic proposal with its own one-hot q, which keeps sampling exact (see prompt_lookup).
"""
from __future__ import annotations

import heapq
from collections import Counter, defaultdict

import torch

from ..sampling import Warp
from ..tree import DraftTree
from ..verify import Verdict
from .prompt_lookup import one_hot


class NgramTable:
    """Next-token counts after every context of 1..order-1 tokens."""

    def __init__(self, order: int = 4):
        self.order = order
        self.counts: dict[tuple, Counter] = defaultdict(Counter)

    def add(self, ids: list[int], start: int = 1) -> None:
        """Count ids[i] after its contexts for every i >= start."""
        for i in range(max(1, start), len(ids)):
            for n in range(1, min(self.order - 1, i) + 1):
                self.counts[tuple(ids[i - n : i])][ids[i]] += 1

    def get(self, context: tuple) -> Counter | None:
        return self.counts.get(context)


def next_tokens(tables: list[tuple[NgramTable, float]], ids: list[int], width: int) -> list[tuple[int, float]]:
    """The `width` likeliest next tokens with their probabilities, from the longest context that
    any table has seen (weighted sum of the tables' counts at that length)."""
    order = max(t.order for t, _ in tables)
    for n in range(min(order - 1, len(ids)), 0, -1):
        context, merged = tuple(ids[-n:]), Counter()
        for table, weight in tables:
            found = table.get(context) if n < table.order else None
            if found:
                for token, count in found.items():
                    merged[token] += weight * count
        if merged:
            total = sum(merged.values())
            return [(token, count / total) for token, count in merged.most_common(width)]
    return []


def best_first_tree(tables, ids: list[int], budget: int, width: int, vocab: int) -> DraftTree:
    """Grow up to `budget` nodes, always expanding the pending continuation with the highest path
    probability; width 1 gives the single likeliest chain."""
    tree, pending, tick = DraftTree(), [], 0
    for token, p in next_tokens(tables, ids, width):
        heapq.heappush(pending, (-p, tick, -1, token, list(ids[-8:]))); tick += 1
    while pending and len(tree) < budget:
        neg, _, parent, token, context = heapq.heappop(pending)
        node = tree.add(token, parent)
        tree.q_node[node] = one_hot(token, vocab)
        tree.q.setdefault(parent, tree.q_node[node])
        tree.entropy.setdefault(parent, 0.0)
        context = (context + [token])[-max(t.order for t, _ in tables):]
        for child, p in next_tokens(tables, context, width):
            heapq.heappush(pending, (neg * p, tick, node, child, context)); tick += 1
    return tree


class NgramDrafter:
    def __init__(self, vocab: int, corpus: NgramTable | None, budget: int = 8, width: int = 1,
                 local_weight: float = 8.0, name: str = "ngram"):
        self.vocab, self.corpus, self.budget, self.width = vocab, corpus, budget, width
        self.local_weight, self.name = local_weight, name
        self.reset()

    def reset(self) -> None:
        self.local, self.seen = NgramTable(self.corpus.order if self.corpus else 4), []

    def _update(self, ids: list[int]) -> None:
        if ids[: len(self.seen)] != self.seen:  # a new text: start the local counts again
            self.reset()
        self.local.add(ids, start=len(self.seen))
        self.seen = list(ids)

    def propose(self, ids: list[int], warp: Warp, gen: torch.Generator) -> DraftTree:
        self._update(ids)
        tables = [(self.local, self.local_weight)] + ([(self.corpus, 1.0)] if self.corpus else [])
        return best_first_tree(tables, ids, self.budget, self.width, self.vocab)

    def learn(self, tree: DraftTree, verdict: Verdict) -> None:
        pass
