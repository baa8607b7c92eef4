"""Draft sources: the contract between the engine and anything that proposes draft tokens.

A drafter proposes a DraftTree for the committed text and learns from what the target said about
it. The engine relies on exactly what `Drafter` states below and nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from ..sampling import Warp
from ..stop_rules import StopRule
from ..tree import DraftTree
from ..verify import Verdict


@dataclass
class TargetView:
    """What the target's verification forward computed, handed to the drafter after each step.

    hidden: layer -> [n, hidden] target hidden states of committed positions start .. start + n - 1
        (only the layers the drafter asked for in `reads_target`; layer L is transformers'
        `hidden_states[L]`: 0 = embeddings, i = after decoder layer i, -1 = the final, normed state
        that the LM head reads). The token committed last (the target's own token of this step)
        has not been fed yet, so its state arrives with the next step.
    logits: [1 + nodes, vocab] the target's raw fp32 logits after the root and after each node
        (what online adaptation learns from).
    committed: the whole committed text after this step (prompt included).
    """

    hidden: dict[int, torch.Tensor] = field(default_factory=dict)
    start: int = 0
    logits: torch.Tensor | None = None
    committed: list[int] = field(default_factory=list)


@runtime_checkable
class Drafter(Protocol):
    name: str
    greedy_only: bool  # its trees are valid under greedy verification only (refused at T > 0)
    reads_target: tuple[int, ...]  # target layers whose hidden states it needs; () = none
    forward_seconds: float  # time spent in its own model forwards since construction

    def propose(self, ids: list[int], warp: Warp, gen: torch.Generator, stop: StopRule | None = None) -> DraftTree:
        """A draft for the text `ids`. A stop rule, when given, bounds the draft's length/depth and
        may end it early; the builder records why it stopped in `tree.stop`."""
        ...

    def learn(self, tree: DraftTree, verdict: Verdict, target: TargetView | None = None) -> None:
        """Called once per step after verification (sync caches, adapt, read target states)."""
        ...

    def reset(self) -> None:
        """Called before each new prompt."""
        ...


def hint(drafter, name: str, *args):
    """`drafter.name(*args)` where the drafter takes that hint (an optional method such as `price`,
    `own_clock`, `besides`, `follow`), else None."""
    method = getattr(drafter, name, None)
    return method(*args) if method is not None else None


class BuilderHints:
    """For drafters that build their trees with `self.builder`: passes hints on to a builder that takes
    them (drafters/priced.py), and ignores them otherwise."""

    builder = None

    def price(self, costs) -> None:
        """costs() -> seconds of a target forward by new positions on this machine (from the engine)."""
        hint(self.builder, "price", costs)

    def besides(self, nodes: int, value: float) -> None:
        """The next tree will be verified together with `nodes` other nodes expected to add `value`
        accepted tokens (a merged drafter's graft)."""
        hint(self.builder, "besides", nodes, value)

    def own_clock(self, clock) -> None:
        """clock() -> seconds of this run's own time (from the engine; it stops while the run waits)."""
        hint(self.builder, "own_clock", clock)

    def keeps_besides(self) -> bool:
        """Whether the last tree was built to be verified with those other nodes (False: they would
        cost more than they add)."""
        return getattr(self.builder, "graft", True)


class FreeDrafter:
    """Defaults for drafters that run no model of their own (prompt lookup, n-gram counts)."""

    greedy_only = False
    reads_target: tuple[int, ...] = ()
    forward_seconds = 0.0

    def learn(self, tree: DraftTree, verdict: Verdict, target: TargetView | None = None) -> None:
        pass

    def reset(self) -> None:
        pass
