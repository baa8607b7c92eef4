"""EAGLE-2's dynamic tree sized each step by what verification costs on this machine (greedy only).

dynamic.py spends a fixed budget (4 nodes per level). What a node costs is not fixed: it is one more
position in the verification forward, and on a CPU that is free up to a few positions and then dear
(verify_cost.py measures the curve once per machine). Here a step's tree is chosen to maximise
expected tokens per second:

    (1 + kappa * sum of the nodes' path values) / (drafter seconds + verification seconds(1 + nodes))

A node's value is its path probability under the drafter (EAGLE-2's confidence); kappa calibrates it
(accepted / expected over the steps so far, with a prior of 1), since a drafter may be over- or
under-confident. Before each further drafter forward the builder compares stopping now (adding the
best candidates as leaves, as many as pay) with one more level (its children's values estimated from
the drafter's usual top-k probabilities, its seconds from the levels timed so far). The per-step
overhead outside both forwards is measured between calls and counted too. Without a curve (nobody
priced it) it builds dynamic.py's tree. Greedy verification accepts exactly the path the target
would have produced, so the tree's size changes speed only, never the output.
"""
from __future__ import annotations

import time
from typing import Callable

from ..stop_rules import StopNote
from ..tree import DraftTree, depths
from .dynamic import Frontier, build_dynamic
from .trees import feed, note_limit, root_logits

RULE = "priced"
DECAY = 0.95  # per step: the calibration and timings follow the text as it changes
PRIOR = 2.0  # kappa starts as 2 accepted / 2 expected


def ema(old: float | None, new: float, keep: float = 0.8) -> float:
    return new if old is None else keep * old + (1 - keep) * new


def accepted_in(tokens: list[int], parents: list[int], new: list[int]) -> int:
    """Nodes of a tree (tokens, parents) greedy verification accepted, given the tokens committed after it."""
    node, n = -1, 0
    while n < len(new):
        nxt = next((c for c, (t, p) in enumerate(zip(tokens, parents)) if p == node and t == new[n]), None)
        if nxt is None:
            break
        node, n = nxt, n + 1
    return n


class PricedDynamic:
    """A builder (lm, ids, warp, gen, stop) -> DraftTree; `price(costs)` hands it the target's curve."""

    def __init__(self, depth: int, max_nodes: int = 24, width: int = 2, branch: int = 4):
        self.depth, self.max_nodes, self.width, self.branch = depth, max_nodes, width, branch
        self.costs: Callable[[], dict[int, float]] | None = None
        self.clock: Callable[[], float] = time.perf_counter  # the engine's `own_clock` where it hands one
        self._seconds: dict[int, float] | None = None
        self.accepted, self.expected = PRIOR, PRIOR
        self.child_probs: list[float] | None = None  # mean top-`branch` probabilities of a fed row
        self.level_s: float | None = None  # seconds of one drafter forward over a level's nodes
        self.overhead_s = 0.0  # a step's seconds outside the drafter and the verification forward
        self.extra = (0, 0.0)  # nodes verified beside the next tree (a merged drafter's graft), their value
        self.graft = True  # whether they paid for themselves in the last tree's reckoning
        # the previous step: its text, its tree's (tokens, parents) before any graft, their value, the
        # nodes verified beside it, when it was built
        self._last: tuple[list[int], list[int], list[int], float, int, float] | None = None

    def price(self, costs: Callable[[], dict[int, float]]) -> None:
        """costs() -> seconds of a target forward by new positions (called once, at the first tree)."""
        self.costs, self._seconds = costs, None

    def besides(self, nodes: int, value: float) -> None:
        self.extra = (nodes, value)

    def own_clock(self, clock: Callable[[], float]) -> None:
        """The engine's clock of this run's own time (it stops while a scheduler serves other runs):
        what a step cost outside the forwards is read on it, or a wait for thirty other visitors would
        pass for overhead and make every node look free."""
        self.clock = clock

    @property
    def kappa(self) -> float:
        return self.accepted / self.expected

    def verify_s(self, positions: int) -> float:
        s = self._seconds
        return s[min(positions, max(s))]

    def rate(self, value: float, nodes: int, draft_s: float, extra: bool = True) -> float:
        """Expected committed tokens per second of a step with these nodes (summed path value), with or
        without the nodes verified beside them."""
        extra_nodes, extra_value = self.extra if extra else (0, 0.0)
        return ((1 + self.kappa * value + extra_value)
                / (draft_s + self.overhead_s + self.verify_s(1 + nodes + extra_nodes)))

    def best_leaves(self, value: float, nodes: int, candidates: list[float], draft_s: float
                    ) -> tuple[float, int, bool]:
        """(best rate, how many of the best `candidates` to add as leaves, whether the nodes offered
        beside the tree pay) for a tree of `nodes` nodes."""
        best = (0.0, 0, True)
        for extra in ((True, False) if self.extra[0] else (True,)):
            total = value
            room = min(self.max_nodes, max(self._seconds) - 1 - (self.extra[0] if extra else 0)) - nodes
            options = [(self.rate(total, nodes, draft_s, extra), 0)]
            for k, v in enumerate(candidates[:max(0, room)], 1):  # candidates: best first
                total += v
                options.append((self.rate(total, nodes + k, draft_s, extra), k))
            r, k = max(options, key=lambda o: (o[0], -o[1]))
            if r > best[0]:
                best = (r, k, extra)
        return best

    def _observe(self, ids: list[int], now: float) -> None:
        """Learn from the previous step of the same text: how much of its tree was accepted, and what
        the step cost outside the forwards we account for."""
        if self._last is None:
            return
        last_ids, tokens, parents, value, extra, end = self._last
        self._last = None
        if len(ids) <= len(last_ids) or ids[: len(last_ids)] != last_ids:
            return  # a new text: nothing to learn
        self.accepted = DECAY * self.accepted + accepted_in(tokens, parents, ids[len(last_ids):])
        self.expected = DECAY * self.expected + value
        outside = (now - end) - self.verify_s(1 + len(tokens) + extra)
        self.overhead_s = ema(self.overhead_s, max(0.0, outside))

    def __call__(self, lm, ids, warp, gen, stop=None) -> DraftTree:
        if not warp.greedy:
            raise ValueError("dynamic trees are for greedy decoding")
        if self.costs is None:
            return build_dynamic(lm, ids, warp, gen, 4 * self.depth, self.depth, self.width, self.branch, stop)
        if self._seconds is None:
            self._seconds = self.costs()
        start = self.clock()
        self._observe(list(ids), start)
        tree, value = self._build(lm, ids, warp, stop, start)
        self._last = (list(ids), list(tree.tokens), list(tree.parents), value,
                      self.extra[0] if self.graft else 0, self.clock())
        self.extra = (0, 0.0)
        return tree

    def _build(self, lm, ids, warp, stop, start: float) -> tuple[DraftTree, float]:
        """The tree, and the summed path value of its nodes."""
        depth = stop.limit() if stop is not None else self.depth
        grow = Frontier(warp, self.branch)

        def offer(node, row):
            probs = grow.offer(node, row)
            self.child_probs = probs if self.child_probs is None else [
                ema(a, b) for a, b in zip(self.child_probs, probs)]

        offer(-1, root_logits(lm, ids))
        tree = grow.tree
        for level in range(depth):
            spent = self.clock() - start
            have, candidates = sum(grow.values), grow.candidates()
            now_rate, now_take, self.graft = self.best_leaves(have, len(tree), candidates, spent)
            more = level < depth - 1 and len(tree) + self.width <= self.max_nodes
            if more and self.level_s is not None:  # never timed yet: grow once to learn what a level costs
                fed = candidates[: self.width]
                children = [v * p for v in fed for p in self.child_probs]
                grow_rate, _, _ = self.best_leaves(have + sum(fed), len(tree) + len(fed),
                                                   candidates[self.width:] + children, spent + self.level_s)
                more = grow_rate > now_rate
            if not more:
                grow.take(now_take)
                if level < depth - 1:
                    tree.stop = StopNote(RULE, max(depths(tree.parents), default=0), self.reason(len(tree)),
                                         self.state()).as_dict()
                break
            new = grow.take(self.width)
            if not new:
                break
            t = time.perf_counter()
            out = feed(lm, ids, tree, new)
            self.level_s = ema(self.level_s, time.perf_counter() - t)
            for node, row in zip(new, out):
                offer(node, row)
        return note_limit(tree, stop, depth), sum(grow.values)

    def reason(self, nodes: int) -> str:
        return (f"{nodes} nodes paid best: one more drafter level or more leaves would add less expected "
                f"text than they cost to draft and verify on this machine")

    def state(self) -> dict[str, float]:
        return {"calibration": round(self.kappa, 3), "verify_ms_per_node": round(
            1e3 * (self.verify_s(9) - self.verify_s(1)) / 8, 3) if self._seconds else 0.0}


def priced_strategy(draft_len: int) -> PricedDynamic:
    """draft_len = the most levels; nodes as many as pay, at most 24."""
    return PricedDynamic(draft_len)
