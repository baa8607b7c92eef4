"""Draft sources. Each proposes a DraftTree for the committed text and may learn from the verdict.

A drafter is anything with:
    name: str
    propose(ids, warp, gen) -> DraftTree
    learn(tree, verdict) -> None      # e.g. adapt its draft length, sync its cache
    reset() -> None                    # called before each new prompt
"""
from __future__ import annotations

from typing import Protocol

import torch

from ..sampling import Warp
from ..tree import DraftTree
from ..verify import Verdict


class Drafter(Protocol):
    name: str

    def propose(self, ids: list[int], warp: Warp, gen: torch.Generator) -> DraftTree: ...

    def learn(self, tree: DraftTree, verdict: Verdict) -> None: ...

    def reset(self) -> None: ...
