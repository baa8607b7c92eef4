"""What every tree builder shares: growing a draft tree level by level from a drafter LM.

Each level's new nodes go to the drafter in ONE forward (CachedLM builds the tree attention mask).
Nodes are added to the tree in exactly the order they are fed, so the drafter cache's node i is
the tree's node i and ModelDrafter.learn can keep the accepted path; the last level is never fed,
since nothing is drafted after it.

Greedy decoding (warp.greedy) makes the warped q one-hot, so "k distinct draws from q" does not
exist. Builders then take the drafter's top-k tokens by raw logits (deterministic) as children and
still store the warped one-hot q: the greedy verifier only compares tokens with the target's argmax.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..lm import CachedLM
from ..sampling import Warp, entropy, probs
from ..stop_rules import StopNote, StopRule, stop_level
from ..tree import DraftTree


def root_logits(lm: CachedLM, ids: list[int]) -> torch.Tensor:
    """The drafter's logits after the last committed token (starts a fresh tree in its cache)."""
    logits, _ = lm.forward(ids)
    return logits


def feed(lm: CachedLM, ids: list[int], tree: DraftTree, nodes: list[int]) -> torch.Tensor:
    """Drafter logits after each of `nodes`, fed in one forward; they must be the next unfed nodes."""
    fed = len(lm.tree_tokens)
    if nodes != list(range(fed, fed + len(nodes))):
        raise RuntimeError("tree nodes must be fed in the order they were added")
    _, logits = lm.forward(ids, [tree.tokens[i] for i in nodes], [tree.parents[i] for i in nodes])
    return logits


def set_q(tree: DraftTree, parent: int, logits: torch.Tensor, warp: Warp) -> torch.Tensor:
    """Record the draft distribution the children of `parent` come from (what verification replays)."""
    q = probs(logits[None], warp)[0].cpu()
    tree.q[parent], tree.entropy[parent] = q, float(entropy(logits))
    return q


def stops_before(tree: DraftTree, stop: StopRule | None, level: int, rows: torch.Tensor) -> bool:
    """Ask the stop rule before drafting tree level `level` (1-based) from the frontier's logits.
    When it stops, the forward that produced `rows` was spent for nothing: counted as wasted."""
    if stop is None or level < 2:
        return False
    soft = rows.float().softmax(-1)
    reason = stop_level(stop, level, entropy(rows).tolist(), soft.max(-1).values.tolist())
    if reason is None:
        return False
    tree.wasted_forwards += 1
    tree.stop = StopNote(stop.name, level - 1, reason, stop.state()).as_dict()
    return True


def note_limit(tree: DraftTree, stop: StopRule | None, levels: int) -> DraftTree:
    """Record that a round ran to the rule's limit (unless the rule stopped it earlier)."""
    if stop is not None and tree.stop is None:
        tree.stop = StopNote(stop.name, levels, "limit", stop.state()).as_dict()
    return tree


def raw_top_k(logits: torch.Tensor, k: int) -> list[list[int]]:
    """The greedy stand-in for k draws, per row: the k most likely tokens at temperature 1, best first."""
    return logits.float().topk(min(k, logits.shape[-1]), dim=-1).indices.tolist()


def gumbel_keys(logq: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """log q + Gumbel noise: sorting these keys descending is sampling without replacement from q.

    Tokens with q = 0 keep the key -inf whatever the noise, so they are never drawn.
    """
    noise = -torch.empty_like(logq).exponential_(generator=gen).log()
    return torch.where(logq > float("-inf"), logq + noise, logq)


def default_widths(depth: int) -> tuple[int, ...]:
    """Children per node at each depth for a draft_len: branch early, where drafts fail most."""
    return tuple([2, 2] + [1] * max(0, depth - 2))[:depth]


def widths_size(widths: tuple[int, ...], max_nodes: int | None = None) -> int:
    """Nodes in a full tree with these widths (capped at max_nodes)."""
    total, level = 0, 1
    for width in widths:
        level *= width
        total += level
    return total if max_nodes is None else min(total, max_nodes)


def depth_for_budget(nodes: int) -> int:
    """The draft_len whose default shapes first reach `nodes` nodes (4 * depth - 2 >= nodes)."""
    return max(1, -(-(nodes + 2) // 4))


# A child sampler: (rows of q, k, gen) -> per row, up to k tokens drawn from it, in draw order.
Pick = Callable[[torch.Tensor, int, torch.Generator], list[list[int]]]


def build_by_widths(lm: CachedLM, ids: list[int], warp: Warp, gen: torch.Generator, widths: tuple[int, ...],
                    pick: Pick, draw: str, max_nodes: int | None = None, stop: StopRule | None = None) -> DraftTree:
    """A fixed-shape tree: every node at depth d gets widths[d] children from `pick`.

    With max_nodes, the last level that fits only partly is filled round-robin (every parent's
    first child, then second children, ...). How many children a parent gets then depends on the
    shape and on q's support, never on which tokens were drawn, as the verifiers require. A stop
    rule sets the number of levels (the last width repeats) and may end the tree a level early.
    """
    tree = DraftTree(draw=draw)
    if stop is not None:
        widths = tuple(widths[min(d, len(widths) - 1)] for d in range(stop.limit()))
    room = widths_size(widths, max_nodes)
    frontier, rows = [-1], root_logits(lm, ids)[None]
    for depth, width in enumerate(widths):
        if stops_before(tree, stop, depth + 1, rows):
            break
        qs = probs(rows, warp).cpu()
        drawn = raw_top_k(rows, width) if warp.greedy else pick(qs, width, gen)
        # (rank among siblings, parent's position in the frontier, token)
        picks = [(rank, pos, tok) for pos, tokens in enumerate(drawn) for rank, tok in enumerate(tokens)]
        picks = sorted(sorted(picks)[:room], key=lambda r: (r[1], r[0]))  # siblings stay in draw order
        if not picks:
            break
        for pos in sorted({pos for _, pos, _ in picks}):
            tree.q[frontier[pos]], tree.entropy[frontier[pos]] = qs[pos], float(entropy(rows[pos]))
        new = [tree.add(tok, frontier[pos]) for _, pos, tok in picks]
        room -= len(new)
        if depth == len(widths) - 1 or room == 0:
            break
        frontier, rows = new, feed(lm, ids, tree, new)
    return note_limit(tree, stop, len(widths))


def widths_builder(pick: Pick, draw: str) -> Callable[..., Callable]:
    """The builder factory of a fixed-width tree family: factory(widths, max_nodes) -> builder."""

    def factory(widths: tuple[int, ...] = (3, 2, 1), max_nodes: int | None = None):
        widths = tuple(widths)
        return lambda lm, ids, warp, gen, stop=None: build_by_widths(lm, ids, warp, gen, widths, pick, draw,
                                                                     max_nodes, stop)

    return factory


def widths_strategy(factory: Callable[..., Callable]) -> Callable[[int], Callable]:
    """draft_len = depth; widths (2, 2, 1, 1, ...): 4 * draft_len - 2 nodes (2 for draft_len 1)."""
    return lambda draft_len: factory(default_widths(draft_len))
