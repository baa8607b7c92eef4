"""Two drafters' trees merged into one token tree, verified in one forward (SpecInfer's merge).

SpecInfer merges the trees of several small drafters into one token tree and lets the target verify
them together. Here the second drafter is a free one (n-gram counts): its tree is grafted onto the
first drafter's, sharing prefixes (a token proposed by both under the same parent is one node), so
where the text copies (translation, summaries) the copied continuation is in the tree, and where it
does not the trained drafter's guesses are. The graft costs no drafter forward.

Under sampling it stays exact in every shape the first drafter samples (not `dynamic`, which is greedy
only): a grafted node is a point mass (its own one-hot q; the counts are a function of the text) and
comes after the first drafter's siblings, so when its turn comes the verifier has already turned p into
the right residual, and a point-mass stage -- accept y with p'(y), else go on with p' without y --
passes p' on unchanged, whichever y it was and whether or not the first drafter also drew y (then the
node is shared and is that drawer's). tests/test_merged.py checks one verification's output against p
for i.i.d. and without-replacement siblings, and that verifying the graft with the wrong q is caught.
"""
from __future__ import annotations

import torch

from ..sampling import Warp
from ..stop_rules import MERGED_ALONE, StopNote, StopRule
from ..tree import DraftTree, depths
from ..verify import Verdict
from . import Drafter, TargetView, hint


BOTH = "both"


def graft(tree: DraftTree, other: DraftTree, vocab: int, names: tuple[str, str] = ("first", "second")
          ) -> tuple[DraftTree, list[int]]:
    """`other`'s nodes (certain proposals) added to `tree` (in place) as a trie: a node whose token is
    already a child of its mapped parent is shared. Returns the tree and, per merged node, which tree
    proposed it (0: `tree`, 1: only `other`); `tree.origin` names it (`names`, or BOTH for a shared node)."""
    source = [0] * len(tree)
    tree.origin = {node: names[0] for node in range(len(tree))}
    tree.sources = tuple(names)
    children = {}  # (parent, token) -> node
    for node, (tok, par) in enumerate(zip(tree.tokens, tree.parents)):
        children.setdefault((par, tok), node)
    where = {-1: -1}  # other's node -> merged node
    for node, (tok, par) in enumerate(zip(other.tokens, other.parents)):
        parent = where[par]
        found = children.get((parent, tok))
        if found is None:
            found = tree.add_certain(tok, parent, vocab)
            children[(parent, tok)] = found
            source.append(1)
            tree.origin[found] = names[1]
        else:
            tree.origin[found] = names[1] if source[found] else BOTH
        where[node] = found
    return tree, source


class MergedDrafter:
    """`first` drafts (any shape); `second`'s tree (a free drafter's certain proposals) is grafted onto it."""

    def __init__(self, first: Drafter, second: Drafter, vocab: int, name: str, alone_above: float | None = None,
                 names: tuple[str, str] = ("first drafter", "second drafter")):
        self.first, self.second, self.vocab, self.name, self.names = first, second, vocab, name, names
        self.greedy_only = first.greedy_only
        # When the second drafter expects at least this many accepted drafts (its `last_expected`),
        # its tree goes alone: the first drafter's forwards and extra nodes would cost more than they add.
        self.alone_above = alone_above
        self.reads_target = tuple(first.reads_target) + tuple(
            layer for layer in second.reads_target if layer not in first.reads_target)
        self.grafted = self.grafted_accepted = 0  # nodes only the second drafter proposed / of them accepted
        self._source: list[int] = []

    @property
    def forward_seconds(self) -> float:
        return self.first.forward_seconds + self.second.forward_seconds

    def propose(self, ids: list[int], warp: Warp, gen: torch.Generator, stop: StopRule | None = None) -> DraftTree:
        other = self.second.propose(ids, warp, gen)
        if self.alone_above is not None and getattr(self.second, "last_expected", 0.0) >= self.alone_above:
            tree, source = other, [1] * len(other)  # a tree of one drafter: no origins; the note says why
            tree.stop = StopNote(MERGED_ALONE, max(depths(tree.parents), default=0),
                                 f"the {self.names[1]} expected {self.second.last_expected:.1f} accepted drafts "
                                 f"(at least {self.alone_above:g}), so it drafted alone and the {self.names[0]} "
                                 "was not asked").as_dict()
        else:
            # a priced tree counts the graft's cost
            hint(self.first, "besides", len(other), getattr(self.second, "last_expected", 0.0))
            tree = self.first.propose(ids, warp, gen, stop)  # the stop rule bounds the drafter that has one
            if not getattr(self.first, "keeps_besides", lambda: True)():
                other = DraftTree(draw=other.draw)  # the priced tree found the graft costs more than it adds
            tree, source = graft(tree, other, self.vocab, self.names)
        self.grafted += sum(source)
        self._source = source
        return tree

    def learn(self, tree: DraftTree, verdict: Verdict, target: TargetView | None = None) -> None:
        self.grafted_accepted += sum(self._source[n] for n in verdict.path if n < len(self._source))
        self.first.learn(tree, verdict, target)
        self.second.learn(tree, verdict, target)

    def follow(self, target: TargetView) -> bool:
        """Another drafter drafted this step (`auto`): the first drafter keeps the target's states, if it can;
        the n-gram counts read the text when they next draft."""
        if hasattr(self.first, "follow"):
            return bool(self.first.follow(target))
        return not self.first.reads_target

    def price(self, costs) -> None:
        hint(self.first, "price", costs)

    def own_clock(self, clock) -> None:
        hint(self.first, "own_clock", clock)

    def reset(self) -> None:
        self.first.reset()
        self.second.reset()
        self.grafted = self.grafted_accepted = 0
        self._source = []
