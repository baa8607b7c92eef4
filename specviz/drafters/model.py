"""A separate, smaller language model as the drafter (same vocabulary as the target)."""
from __future__ import annotations

from typing import Callable

import torch

from ..lm import CachedLM
from ..sampling import Warp
from ..stop_rules import StopRule
from ..tree import DraftTree
from ..verify import Verdict
from . import BuilderHints, TargetView
from .chain import build_chain

# A builder turns (drafter LM, committed ids, warp, generator, stop rule or None) into a draft tree.
Builder = Callable[..., DraftTree]


def chain_builder(k: int) -> Builder:
    return lambda lm, ids, warp, gen, stop=None: build_chain(lm, ids, warp, gen, k, stop)


class ModelDrafter(BuilderHints):
    reads_target: tuple[int, ...] = ()

    def __init__(self, model: torch.nn.Module, builder: Builder, name: str = "model", greedy_only: bool = False,
                 fast_path: bool | None = None):
        self.lm = CachedLM(model, fast_path)
        self.builder = builder
        self.name = name
        self.greedy_only = greedy_only  # tree shapes no sampling verifier can accept losslessly

    @property
    def forward_seconds(self) -> float:
        return self.lm.forward_seconds

    def propose(self, ids: list[int], warp: Warp, gen: torch.Generator, stop: StopRule | None = None) -> DraftTree:
        return self.builder(self.lm, ids, warp, gen, stop)

    def learn(self, tree: DraftTree, verdict: Verdict, target: TargetView | None = None) -> None:
        # keep the accepted part of a drafted tree in the drafter's cache; chains need nothing
        if self.lm.tree_tokens:
            self.lm.accept(verdict.path)

    def reset(self) -> None:
        self.lm.reset()
