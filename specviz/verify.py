"""Verification rules: given the draft tree and the target's p at every node, decide which path
is accepted and which token the target adds after it.

p_rows[0] is the target distribution after the root (the last committed token); p_rows[1 + i] is
the distribution after node i. Every rule returns a Verdict; the engine does the rest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .sampling import residual, sample, uniform
from .tree import WITHOUT_REPLACEMENT, DraftTree

ACCEPTED, REJECTED, UNVISITED = "accepted", "rejected", "unvisited"
# How the final token of a step came about.
RESAMPLED = "resampled"  # drawn from the residual after a rejection
BONUS = "bonus"  # the accepted path ran out of children: a free extra token
TARGET = "target"  # nothing was drafted: a plain autoregressive token


@dataclass
class Verdict:
    path: list[int]  # accepted nodes, root to leaf
    token: int  # the token the target adds after the path
    kind: str  # RESAMPLED / BONUS / TARGET
    status: list[str]  # per node
    accept_prob: list[float | None]  # per node: min(1, p/q) at the moment it was tried
    final_p: torch.Tensor | None = field(default=None, repr=False)  # what `token` was drawn from


Rule = Callable[[DraftTree, torch.Tensor, torch.Generator], Verdict]


def _final_kind(tree: DraftTree, rejected_any: bool) -> str:
    if len(tree) == 0:
        return TARGET
    return RESAMPLED if rejected_any else BONUS


def verify_greedy(tree: DraftTree, p_rows: torch.Tensor, gen: torch.Generator) -> Verdict:
    """Follow the child equal to the target's argmax; stop at the first node without one."""
    status = [UNVISITED] * len(tree)
    accept_prob: list[float | None] = [None] * len(tree)
    path, node = [], -1
    while True:
        best = int(p_rows[node + 1].argmax())
        children = tree.children(node)
        nxt = None
        for child in children:
            hit = tree.tokens[child] == best and nxt is None
            status[child] = ACCEPTED if hit else REJECTED
            accept_prob[child] = 1.0 if hit else 0.0
            nxt = child if hit else nxt
        if nxt is None:
            kind = _final_kind(tree, bool(children))
            return Verdict(path, best, kind, status, accept_prob, p_rows[node + 1])
        path.append(nxt)
        node = nxt


def verify_sampling(
    tree: DraftTree, p_rows: torch.Tensor, gen: torch.Generator, residual=residual, drop_rejected: bool = True,
    mass=lambda p, x: float(p[x]),
) -> Verdict:
    """Lossless speculative sampling on a tree.

    Children of a node are tried in order, accepted with min(1, p(x)/q(x)); after a rejection p
    becomes norm(max(0, p - q)). For children drawn without replacement (RSD), q also loses the
    rejected token and is renormalized. A chain is the one-child case (Leviathan/Chen); i.i.d.
    children give SpecInfer's multi-step rule. `residual` and `drop_rejected` exist so tests can
    show that breaking either one is caught; `mass` is the target mass credited to a draft token
    (p(x) here; lossy rules such as LANTERN credit more).
    """
    status = [UNVISITED] * len(tree)
    accept_prob: list[float | None] = [None] * len(tree)
    path, node = [], -1
    while True:
        p = p_rows[node + 1]
        children = tree.children(node)
        q = tree.q.get(node)
        nxt = None
        for child in children:
            x = tree.tokens[child]
            qc = tree.q_node.get(child, q)
            a = 0.0 if qc[x] <= 0 else min(1.0, mass(p, x) / float(qc[x]))
            accept_prob[child] = a
            if uniform(gen) < a:
                status[child], nxt = ACCEPTED, child
                break
            status[child] = REJECTED
            p = residual(p, qc)
            if drop_rejected and tree.draw == WITHOUT_REPLACEMENT:
                q = q.clone()
                q[x] = 0.0
                total = q.sum()
                q = q / total if total > 0 else q
        if nxt is None:
            kind = _final_kind(tree, bool(children))
            return Verdict(path, sample(p, gen), kind, status, accept_prob, p)
        path.append(nxt)
        node = nxt
