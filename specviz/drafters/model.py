"""A separate, smaller language model as the drafter (same vocabulary as the target)."""
from __future__ import annotations

from typing import Callable

import torch

from ..lm import CachedLM
from ..sampling import Warp
from ..tree import DraftTree
from ..verify import Verdict
from .chain import build_chain

# A builder turns (drafter LM, committed ids, warp, generator) into a draft tree.
Builder = Callable[[CachedLM, list[int], Warp, torch.Generator], DraftTree]


def chain_builder(k: int) -> Builder:
    return lambda lm, ids, warp, gen: build_chain(lm, ids, warp, gen, k)


class ModelDrafter:
    def __init__(self, model: torch.nn.Module, builder: Builder, name: str = "model"):
        self.lm = CachedLM(model)
        self.builder = builder
        self.name = name
        self.greedy_only = False  # set for tree shapes no sampling verifier can accept losslessly

    def propose(self, ids: list[int], warp: Warp, gen: torch.Generator) -> DraftTree:
        return self.builder(self.lm, ids, warp, gen)

    def learn(self, tree: DraftTree, verdict: Verdict) -> None:
        # keep the accepted part of a drafted tree in the drafter's cache; chains need nothing
        if self.lm.tree_tokens:
            self.lm.accept(verdict.path)

    def reset(self) -> None:
        self.lm.reset()
