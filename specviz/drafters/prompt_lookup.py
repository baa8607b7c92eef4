"""Prompt lookup (n-gram) drafting: copy what followed earlier occurrences of the text's last n
tokens. Costs no model forward; wins where outputs quote their inputs (summaries, edits, RAG).

With branches > 1 the continuations after several earlier matches are merged into a trie, so
the target verifies all of them in its one forward. Each proposal is deterministic, so each node
carries its own one-hot q: trying siblings in turn with min(1, p/q) and removing a rejected token
from p is then exactly sampling from p, whatever the branching.
"""
from __future__ import annotations

import torch

from ..sampling import Warp
from ..stop_rules import StopRule
from ..tree import DraftTree
from . import FreeDrafter


def find_continuations(ids: list[int], k: int, max_ngram: int, min_ngram: int, branches: int = 1) -> list[list[int]]:
    """Up to `branches` distinct continuations (k tokens at most) after the most recent earlier
    matches of the longest suffix n-gram that has any match."""
    for n in range(min(max_ngram, len(ids) - 1), min_ngram - 1, -1):
        tail, found = ids[-n:], []
        for start in range(len(ids) - n - 1, -1, -1):
            if ids[start : start + n] == tail:
                cont = ids[start + n : start + n + k]
                if cont not in found:
                    found.append(cont)
                if len(found) == branches:
                    break
        if found:
            return found
    return []


def find_continuation(ids: list[int], k: int, max_ngram: int, min_ngram: int) -> list[int]:
    found = find_continuations(ids, k, max_ngram, min_ngram, 1)
    return found[0] if found else []


def trie(continuations: list[list[int]], budget: int, vocab: int) -> DraftTree:
    """Merge continuations into a tree of at most `budget` nodes (shared prefixes once)."""
    tree, index = DraftTree(), {}
    for cont in continuations:
        parent = -1
        for token in cont:
            node = index.get((parent, token))
            if node is None:
                if len(tree) >= budget:
                    break
                node = index[(parent, token)] = tree.add_certain(token, parent, vocab)
            parent = node
    return tree


class PromptLookupDrafter(FreeDrafter):
    def __init__(self, vocab: int, k: int = 8, max_ngram: int = 3, min_ngram: int = 2, branches: int = 1,
                 name: str = "pld"):
        self.vocab, self.k, self.max_ngram, self.min_ngram = vocab, k, max_ngram, min_ngram
        self.branches, self.name = branches, name

    def propose(self, ids: list[int], warp: Warp, gen: torch.Generator, stop: StopRule | None = None) -> DraftTree:
        k = stop.limit() if stop is not None else self.k  # a stop rule sets the length (no entropy here)
        found = find_continuations(ids, k, self.max_ngram, self.min_ngram, self.branches)
        if len(found) > 1:
            # the latest match is the likeliest: give it half the budget, the next a quarter, ...
            found = [cont[: max(1, k >> (i + 1))] for i, cont in enumerate(found)]
        return trie(found, k, self.vocab)
