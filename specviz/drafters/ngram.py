"""N-gram drafting from counts (ADED-style): what followed the last few tokens, in a corpus of the
target's own outputs and in the text so far. Costs no model forward, so a wide tree costs only the
target's verification of its nodes (on this CPU's fast path a forward over 1 + 1..8 nodes costs ~1.3-1.7
one-token forwards, out/profile-smollm2.json).

The table backs off from the longest context with any count to shorter ones; counts from the
current text (prompt + output, updated every step: the "adaptive" part of ADED) weigh more than
the corpus, because a text repeats itself more than it repeats other texts.

As a tree (width > 1) it grows best-first: the next node is the pending continuation with the
highest path probability under the counts, until the node budget is spent. Every node is a
deterministic proposal with its own one-hot q, which keeps sampling exact (see prompt_lookup).
"""
from __future__ import annotations

import heapq
from collections import Counter, defaultdict

import torch

from ..sampling import Warp
from ..stop_rules import StopRule
from ..tree import DraftTree
from . import FreeDrafter


class NgramTable:
    """Next-token counts after every context of 1..order-1 tokens."""

    def __init__(self, order: int = 4):
        self.order = order
        self.counts: dict[tuple, Counter] = defaultdict(Counter)
        self._top: dict[tuple, tuple[list[tuple[int, int]], int]] = {}

    def add(self, ids: list[int], start: int = 1) -> None:
        """Count ids[i] after its contexts for every i >= start."""
        for i in range(max(1, start), len(ids)):
            for n in range(1, min(self.order - 1, i) + 1):
                self.counts[tuple(ids[i - n : i])][ids[i]] += 1
        self._top.clear()

    def count(self, context: tuple, token: int) -> int:
        found = self.counts.get(context)
        return found.get(token, 0) if found else 0

    def top(self, context: tuple, k: int) -> tuple[list[tuple[int, int]], int] | None:
        """The k most frequent next tokens after `context` with their counts, and the total count
        (memoized: a corpus table's short contexts have thousands of successors)."""
        if (context, k) not in self._top:
            found = self.counts.get(context) if len(context) < self.order else None
            self._top[(context, k)] = (found.most_common(k), sum(found.values())) if found else None
        return self._top[(context, k)]


def next_tokens(tables: list[tuple[NgramTable, float]], ids: list[int], width: int,
                prior: float = 0.0) -> list[tuple[int, float]]:
    """The `width` likeliest next tokens with their probabilities, from the longest context that
    any table has seen (weighted sum of the tables' counts at that length). `prior` is pseudo-count
    mass on "something else", so a context seen once does not claim certainty."""
    order = max(t.order for t, _ in tables)
    for n in range(min(order - 1, len(ids)), 0, -1):
        context, candidates, total = tuple(ids[-n:]), set(), 0.0
        for table, weight in tables:
            # the top `width` of a weighted sum lies within the union of each table's top `width`
            found = table.top(context, width)
            if found:
                candidates.update(token for token, _ in found[0])
                total += weight * found[1]
        if candidates:
            merged = {tok: sum(w * t.count(context, tok) for t, w in tables) for tok in candidates}
            best = sorted(candidates, key=lambda tok: -merged[tok])[:width]
            return [(tok, merged[tok] / (total + prior)) for tok in best]
    return []


def best_first_tree(tables, ids: list[int], budget: int, width: int, vocab: int,
                    prior: float = 0.0) -> tuple[DraftTree, float]:
    """Grow up to `budget` nodes, always expanding the pending continuation with the highest path
    probability; width 1 gives the single likeliest chain. Also returns the sum of the nodes' path
    probabilities: the expected number of accepted drafts if the counts were calibrated."""
    tree, pending, tick, expected = DraftTree(), [], 0, 0.0
    keep = max(t.order for t, _ in tables)
    for token, p in next_tokens(tables, ids, width, prior):
        heapq.heappush(pending, (-p, tick, -1, token, list(ids[-keep:]))); tick += 1
    while pending and len(tree) < budget:
        neg, _, parent, token, context = heapq.heappop(pending)
        node = tree.add_certain(token, parent, vocab)
        expected -= neg
        context = (context + [token])[-keep:]
        for child, p in next_tokens(tables, context, width, prior):
            heapq.heappush(pending, (neg * p, tick, node, child, context)); tick += 1
    return tree, expected


class NgramDrafter(FreeDrafter):
    """`min_expected` gates drafting: below that many expected accepted drafts the step drafts
    nothing and costs one plain target forward. On this CPU's fast path verifying 2 / 5 / 9 tokens
    costs ~1.31 / 1.49 / 1.72x one token (out/profile-smollm2.json), so a draft must be likely to
    pay. min_expected 2.0 with prior 0.5 maximized modeled tokens per unit of forward cost in a
    two-fold cross-validation on the corpus, never on the evaluation prompts (ngram_gate.py:
    1.364 chain / 1.391 tree, budget 8, vs 1.353 / 1.386 with the earlier prior 1.0, 1.203 / 1.287
    ungated). Set min_expected=0 where wide verification is free (a GPU)."""

    def __init__(self, vocab: int, corpus: NgramTable | None, budget: int = 8, width: int = 1,
                 local_weight: float = 8.0, prior: float = 0.5, min_expected: float = 2.0, name: str = "ngram"):
        self.vocab, self.corpus, self.budget, self.width = vocab, corpus, budget, width
        self.local_weight, self.prior, self.min_expected, self.name = local_weight, prior, min_expected, name
        self.reset()

    def reset(self) -> None:
        self.local, self.seen = NgramTable(self.corpus.order if self.corpus else 4), []
        self.last_expected = 0.0  # the last proposal's expected accepted drafts (0 when gated off)

    def _update(self, ids: list[int]) -> None:
        if ids[: len(self.seen)] != self.seen:  # a new text: start the local counts again
            self.reset()
        self.local.add(ids, start=len(self.seen))
        self.seen = list(ids)

    def draft(self, ids: list[int], budget: int | None = None) -> tuple[DraftTree, float]:
        """The ungated tree for the text `ids` and its expected accepted drafts (ngram_gate replays this)."""
        self._update(ids)
        tables = [(self.local, self.local_weight)] + ([(self.corpus, 1.0)] if self.corpus else [])
        return best_first_tree(tables, ids, self.budget if budget is None else budget, self.width, self.vocab,
                               self.prior)

    def propose(self, ids: list[int], warp: Warp, gen: torch.Generator, stop: StopRule | None = None) -> DraftTree:
        tree, expected = self.draft(ids, stop.limit() if stop is not None else None)  # a stop rule sets the budget
        self.last_expected = expected if expected >= self.min_expected else 0.0
        return tree if expected >= self.min_expected else DraftTree()
