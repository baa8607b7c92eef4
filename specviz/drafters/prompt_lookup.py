"""Prompt lookup (n-gram) drafting: copy what followed the latest earlier occurrence of the
text's last n tokens. Costs no model forward; wins where outputs quote their inputs."""
from __future__ import annotations

import torch

from ..sampling import Warp
from ..tree import DraftTree
from ..verify import Verdict


def find_continuation(ids: list[int], k: int, max_ngram: int, min_ngram: int) -> list[int]:
    """Up to k tokens that followed the most recent earlier match of the longest suffix n-gram."""
    for n in range(min(max_ngram, len(ids) - 1), min_ngram - 1, -1):
        tail = ids[-n:]
        for start in range(len(ids) - n - 1, -1, -1):
            if ids[start : start + n] == tail:
                return ids[start + n : start + n + k]
    return []


class PromptLookupDrafter:
    def __init__(self, vocab: int, k: int = 8, max_ngram: int = 3, min_ngram: int = 2, name: str = "pld"):
        self.vocab, self.k, self.max_ngram, self.min_ngram, self.name = vocab, k, max_ngram, min_ngram, name

    def propose(self, ids: list[int], warp: Warp, gen: torch.Generator) -> DraftTree:
        tree = DraftTree()
        for token in find_continuation(ids, self.k, self.max_ngram, self.min_ngram):
            parent = len(tree) - 1
            # a deterministic proposal is a one-hot q: p(x)/q(x) = p(x) keeps sampling exact
            q = torch.zeros(self.vocab)
            q[token] = 1.0
            tree.q[parent], tree.entropy[parent] = q, 0.0
            tree.add(token, parent)
        return tree

    def learn(self, tree: DraftTree, verdict: Verdict) -> None:
        pass

    def reset(self) -> None:
        pass
