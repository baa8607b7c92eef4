"""Stochastic Beam Search trees for RSD (Kool et al. 2019; RSD-S in Jeon et al. 2024).

Every depth keeps the `beam` best partial drafts by perturbed log-probability: a child's key is
its log q-probability of the whole draft plus Gumbel noise, conditioned on the children's largest
key being the parent's key (Gumbel-top-k applied hierarchically). The kept drafts are a sample
without replacement of `beam` sequences, and branches whose keys fall behind die early.

Why the siblings under one parent are still a without-replacement sample from that parent's q,
which is all the RSD verifier (verify_sampling, draw = without_replacement) needs:
  * Conditioning on the parent's key is a strictly increasing map of the children's keys, so the
    siblings' order is the order of log q + Gumbel: sequential sampling without replacement.
  * A parent keeps its first m children in that order, m decided by comparing key VALUES with the
    other beams' candidates. With Gumbel keys, which token holds the i-th largest key is
    independent of that key's value given the larger ones (argmax and max of Gumbels are
    independent, also when truncated below the previous key). So whether an i-th child exists says
    nothing about which token it is: m is a stopping time and each kept child is distributed as
    q minus its elder siblings, exactly what recursive rejection assumes.
  * Everything below a child uses fresh noise; the child's key only shifts it, so the argument
    repeats at every depth.
tests/test_trees.py checks the resulting output distribution against the target's exact one.
Under greedy decoding this is plain beam search on the drafter's raw log-probabilities.
"""
from __future__ import annotations

import torch

from ..tree import WITHOUT_REPLACEMENT, DraftTree
from ..sampling import entropy, probs
from .trees import feed, gumbel_keys, note_limit, root_logits, stops_before


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate at both ends."""
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def condition_on_max(keys: torch.Tensor, top) -> torch.Tensor:
    """Gumbel keys (per row) shifted so each row's maximum becomes `top`, order kept (Kool et al. 2019)."""
    v = top - keys + log1mexp(keys - keys.max(-1, keepdim=True).values)
    return top - v.clamp_min(0.0) - torch.log1p(torch.exp(-v.abs()))


def build_beam(lm, ids, warp, gen, beam: int, depth: int, max_nodes: int | None = None, stop=None) -> DraftTree:
    tree = DraftTree(draw=WITHOUT_REPLACEMENT)
    depth = stop.limit() if stop is not None else depth
    room = beam * depth if max_nodes is None else min(max_nodes, beam * depth)
    frontier, rows = [-1], root_logits(lm, ids)[None]
    logp = torch.zeros(1, 1, dtype=torch.float64)  # each frontier draft's log-probability under q
    key = torch.zeros(1, 1, dtype=torch.float64)  # and its perturbed key (the root's may be any constant)
    for level in range(depth):
        if stops_before(tree, stop, level + 1, rows):
            break
        qs = probs(rows, warp).cpu()
        if warp.greedy:  # q is one-hot: rank by the drafter's raw log-probabilities instead
            child_logp = logp + rows.float().log_softmax(-1).cpu().double()
            child_key = child_logp
        else:
            child_logp = logp + qs.double().log()
            child_key = condition_on_max(gumbel_keys(child_logp, gen), key)
        top = child_key.topk(min(beam, room, child_key.shape[-1]), dim=-1)
        candidates = [  # (key, parent position, token, log-probability); q = 0 tokens have key -inf
            (v, pos, t, float(child_logp[pos, t]))
            for pos, (vs, ts) in enumerate(zip(top.values.tolist(), top.indices.tolist()))
            for v, t in zip(vs, ts) if v > float("-inf")
        ]
        kept = sorted(candidates, key=lambda c: -c[0])[: min(beam, room)]
        if not kept:
            break
        kept.sort(key=lambda c: (c[1], -c[0]))  # grouped by parent; siblings in key (= draw) order
        for pos in sorted({c[1] for c in kept}):
            tree.q[frontier[pos]], tree.entropy[frontier[pos]] = qs[pos], float(entropy(rows[pos]))
        new = [tree.add(tok, frontier[pos]) for _, pos, tok, _ in kept]
        room -= len(new)
        if level == depth - 1 or room == 0:
            break
        frontier, rows = new, feed(lm, ids, tree, new)
        key = torch.tensor([[c[0]] for c in kept], dtype=torch.float64)
        logp = torch.tensor([[c[3]] for c in kept], dtype=torch.float64)
    return note_limit(tree, stop, depth)


def beam_builder(beam: int = 4, depth: int = 4, max_nodes: int | None = None):
    """A builder keeping `beam` drafts per depth for `depth` levels: at most beam * depth nodes."""
    return lambda lm, ids, warp, gen, stop=None: build_beam(lm, ids, warp, gen, beam, depth, max_nodes, stop)


def beam_strategy(draft_len: int):
    """draft_len = depth, 4 beams: at most 4 * draft_len nodes."""
    return beam_builder(4, draft_len)
