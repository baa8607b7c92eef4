"""Lossy verification rules: they accept drafts the target's own sampling would often not produce,
trading fidelity for longer accepted runs. The output distribution is NOT the target's; their
names end in "-lossy" so nobody mistakes one for speculative sampling.

- typical-lossy (Medusa, Cai et al. 2024, "typical acceptance"): a draft token x is accepted when
  p(x) > min(eps, delta * exp(-H(p))); on a tree the longest accepted path wins. After it the target
  adds its own token, sampled from p.
- lantern-lossy (LANTERN, Jang et al. 2025): tokens that sit close in the target's embedding space
  are treated as interchangeable. x is accepted with min(1, p~(x) / q(x)), where p~(x) adds to p(x)
  the mass of x's nearest neighbours (cosine, among its k nearest), nearest first, as long as the
  added mass stays <= delta: moving that mass onto x changes p by at most delta in total
  variation. On rejection the usual residual norm(max(0, p - q)) is sampled (and RSD trees drop
  the rejected token from q), as in verify_sampling.
Both reduce to exact greedy decoding when p is one-hot (temperature 0, delta < 1).
"""
from __future__ import annotations

import math
import torch

from .sampling import sample
from .tree import DraftTree
from .verify import ACCEPTED, REJECTED, UNVISITED, Rule, Verdict, _final_kind, verify_sampling


def typical_threshold(p: torch.Tensor, eps: float, delta: float) -> float:
    """Medusa's bar for a draft token: min(eps, delta * exp(-entropy of p))."""
    h = float(-(p * p.clamp_min(1e-30).log()).sum())
    return min(eps, delta * math.exp(-h))


def longest_accepted_path(tree: DraftTree, ok: list[bool]) -> list[int]:
    """The deepest root path whose nodes are all ok (the first such path in node order on ties)."""
    best: list[int] = []
    paths: dict[int, list[int]] = {-1: []}
    for node, parent in enumerate(tree.parents):
        if ok[node] and parent in paths:
            paths[node] = paths[parent] + [node]
            if len(paths[node]) > len(best):
                best = paths[node]
    return best


def typical_rule(eps: float = 0.09, delta: float = 0.3) -> Rule:
    """Medusa typical acceptance (defaults are Medusa's posterior threshold and alpha)."""

    def verify_typical(tree: DraftTree, p_rows: torch.Tensor, gen: torch.Generator) -> Verdict:
        bars = {parent: typical_threshold(p_rows[parent + 1], eps, delta) for parent in set(tree.parents)}
        ok = [float(p_rows[par + 1][tok]) > bars[par] for tok, par in zip(tree.tokens, tree.parents)]
        path = longest_accepted_path(tree, ok)
        # the nodes tried are the children of the root and of accepted nodes; off the winning
        # path they count as rejected (failed the bar, or lost to a longer accepted branch)
        status, accept_prob = [UNVISITED] * len(tree), [None] * len(tree)
        on_path, tried_parents = set(path), {-1, *path}
        for node, parent in enumerate(tree.parents):
            if parent in tried_parents:
                status[node] = ACCEPTED if node in on_path else REJECTED
                accept_prob[node] = 1.0 if ok[node] else 0.0
        last = path[-1] if path else -1
        p = p_rows[last + 1]
        return Verdict(path, sample(p, gen), _final_kind(tree, bool(tree.children(last))), status, accept_prob, p)

    verify_typical.__name__ = "typical-lossy"
    return verify_typical


class LatentNeighbours:
    """Each token's k nearest tokens by cosine similarity of embedding rows, nearest first (cached)."""

    def __init__(self, embeddings: torch.Tensor, k: int):
        self.unit = torch.nn.functional.normalize(embeddings.detach().float().cpu(), dim=-1)
        self.k = min(k, self.unit.shape[0] - 1)
        self.cache: dict[int, torch.Tensor] = {}

    def __call__(self, token: int) -> torch.Tensor:
        if token not in self.cache:
            sims = self.unit @ self.unit[token]
            sims[token] = -float("inf")  # x itself is counted separately
            self.cache[token] = sims.topk(self.k).indices
        return self.cache[token]


def relaxed_mass(p: torch.Tensor, token: int, neighbour_ids: torch.Tensor, delta: float) -> float:
    """p(x) plus the nearest-first neighbour mass that fits in the total-variation budget delta."""
    cum = p[neighbour_ids].cumsum(0)
    fits = cum <= delta
    moved = float(cum[fits][-1]) if bool(fits.any()) else 0.0
    return float(p[token]) + moved


def lantern_rule(embeddings: torch.Tensor, k: int = 10, delta: float = 0.2) -> Rule:
    """LANTERN's relaxed acceptance with the target's input embeddings ([vocab, dim]) as latent space."""
    neighbours = LatentNeighbours(embeddings, k)

    def verify_lantern(tree: DraftTree, p_rows: torch.Tensor, gen: torch.Generator) -> Verdict:
        # speculative sampling, crediting x with its embedding neighbours' mass (bounded by delta)
        return verify_sampling(tree, p_rows, gen, mass=lambda p, x: relaxed_mass(p, x, neighbours(x), delta))

    verify_lantern.__name__ = "lantern-lossy"
    return verify_lantern


def lantern_for(target: torch.nn.Module, k: int = 10, delta: float = 0.2) -> Rule:
    """lantern-lossy for a Hugging Face causal LM: its input embedding matrix is the latent space."""
    return lantern_rule(target.get_input_embeddings().weight, k, delta)
