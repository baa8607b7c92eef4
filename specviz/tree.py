"""The draft tree: what a drafter proposes in one step. A chain is a tree with one child per node.

Node i has a token and a parent (-1 is the root: the last committed token, whose logits the
target computes in the same forward). Children of one parent were all drawn from the same
draft distribution q, stored once per parent, so verification can replay the exact q.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

# How children of one parent were drawn; verification must know it to stay lossless.
IID = "iid"  # independent draws from q (chains, SpecInfer)
WITHOUT_REPLACEMENT = "without_replacement"  # distinct draws (RSD: Gumbel-Top-k, beam search)


@dataclass
class DraftTree:
    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    q: dict[int, torch.Tensor] = field(default_factory=dict)  # parent -> draft distribution (fp32, CPU)
    entropy: dict[int, float] = field(default_factory=dict)  # parent -> drafter entropy there (nats)
    draw: str = IID
    # node -> its own q, for siblings that were not drawn from one shared q (deterministic
    # proposals such as several prompt-lookup matches, each a one-hot)
    q_node: dict[int, torch.Tensor] = field(default_factory=dict)
    stop: dict | None = None  # why drafting ended (a StopNote's as_dict), when a stop rule was asked
    wasted_forwards: int = 0  # drafter forwards whose output no node used (a round stopped after them)
    origin: dict[int, str] = field(default_factory=dict)  # a merged tree: node -> which drafter proposed it
    sources: tuple[str, ...] = ()  # a merged tree: its drafters, in order (origin's values, besides "both")

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, token: int, parent: int) -> int:
        self.tokens.append(int(token))
        self.parents.append(int(parent))
        return len(self.tokens) - 1

    def add_certain(self, token: int, parent: int, vocab: int) -> int:
        """Add a deterministic proposal: its own one-hot q, so p(x)/q(x) = p(x) keeps sampling exact
        whatever its siblings are (prompt lookup, n-gram drafts)."""
        node = self.add(token, parent)
        self.q_node[node] = torch.zeros(vocab)
        self.q_node[node][token] = 1.0
        self.q.setdefault(parent, self.q_node[node])  # what views and beta use at the parent
        self.entropy.setdefault(parent, 0.0)
        return node

    def children(self, node: int) -> list[int]:
        return [i for i, par in enumerate(self.parents) if par == node]

    def depth(self, node: int) -> int:
        return depths(self.parents)[node]

    def q_of(self, node: int) -> torch.Tensor:
        """The distribution `node` was drawn from."""
        return self.q_node.get(node, self.q.get(self.parents[node]))

    def is_chain(self) -> bool:
        return is_chain(self.parents)


def is_chain(parents: list[int]) -> bool:
    return all(par == i - 1 for i, par in enumerate(parents))


def depths(parents: list[int]) -> list[int]:
    """Depth of each node (children of the root have depth 1). Parents precede children."""
    out: list[int] = []
    for par in parents:
        out.append(1 if par < 0 else out[par] + 1)
    return out


def ancestor_mask(parents: list[int]) -> torch.Tensor:
    """[n, n] bool: entry (i, j) is True when node j is node i or one of its ancestors."""
    n = len(parents)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i, par in enumerate(parents):
        if par >= 0:
            mask[i] = mask[par]
        mask[i, i] = True
    return mask


def path_to(parents: list[int], node: int) -> list[int]:
    path = []
    while node >= 0:
        path.append(node)
        node = parents[node]
    return path[::-1]
