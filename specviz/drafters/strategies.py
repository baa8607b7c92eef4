"""Draft shapes for model drafters (chain or tree), registered once, for the CLI, bench and app.

An entry's `build(draft_len)` returns a Builder, i.e. builder(drafter_lm, ids, warp, gen, stop=None)
-> DraftTree. `draft_len` is the shape's size knob: chain length for chains, depth for trees (every
tree uses about 4 * draft_len nodes; see tree_size). For equal-budget comparisons use
budget_builder(shape, nodes). A new shape is one file plus one entry here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..registry import Registry
from .beam import beam_builder, beam_strategy
from .dynamic import dynamic_builder, dynamic_strategy
from .gumbel_top_k import gumbel_top_k_builder, gumbel_top_k_strategy
from .model import Builder, chain_builder
from .priced import PricedDynamic, priced_strategy
from .specinfer import specinfer_builder, specinfer_strategy
from .trees import default_widths, depth_for_budget, widths_size


@dataclass(frozen=True)
class ShapeEntry:
    name: str
    label: str
    build: Callable[[int], Builder]  # build(draft_len)
    max_nodes: Callable[[int], int]  # the most nodes a step drafts at this draft_len
    budget: Callable[[int], Builder]  # budget(nodes): at most `nodes` nodes per step
    greedy_only: bool = False  # trees no sampling verifier accepts losslessly (refused at T > 0)


def _tree_budget(factory):
    return lambda nodes: factory(default_widths(depth_for_budget(nodes)), max_nodes=nodes)


STRATEGIES: Registry[ShapeEntry] = Registry(
    "strategy",
    ShapeEntry("chain", "one draft token per position (classic speculative decoding)", chain_builder,
               lambda d: d, chain_builder),
    ShapeEntry("gumbel-top-k", "tree, distinct children per node drawn without replacement (RSD, Gumbel-Top-k); "
               "widths 2, 2, 1, ... over draft_len levels", gumbel_top_k_strategy,
               lambda d: widths_size(default_widths(d)), _tree_budget(gumbel_top_k_builder)),
    ShapeEntry("beam", "tree from stochastic beam search: the 4 best perturbed drafts per depth (RSD-S)",
               beam_strategy, lambda d: 4 * d,
               lambda nodes: beam_builder(-(-nodes // depth_for_budget(nodes)), depth_for_budget(nodes),
                                          max_nodes=nodes)),
    ShapeEntry("specinfer", "tree, i.i.d. children per node (SpecInfer multi-draft); widths 2, 2, 1, ...",
               specinfer_strategy, lambda d: widths_size(default_widths(d)), _tree_budget(specinfer_builder)),
    ShapeEntry("dynamic", "tree grown where the drafter is confident, 4 * draft_len nodes (EAGLE-2; greedy only)",
               dynamic_strategy, lambda d: 4 * d, lambda nodes: dynamic_builder(nodes, depth_for_budget(nodes)),
               greedy_only=True),
    ShapeEntry("priced", "EAGLE-2's tree with as many nodes and levels as this machine's measured verification cost "
               "repays, at most draft_len levels and 24 nodes (greedy only)", priced_strategy, lambda d: 24,
               lambda nodes: PricedDynamic(depth_for_budget(nodes), max_nodes=nodes), greedy_only=True),
)

# Shapes whose trees no sampling verifier accepts losslessly: the builder raises under sampling.
GREEDY_ONLY = {e.name for e in STRATEGIES.entries() if e.greedy_only}


def tree_size(strategy: str, draft_len: int) -> int:
    """The most nodes STRATEGIES[strategy] drafts per step at this draft_len (what the target verifies)."""
    return STRATEGIES.get(strategy).max_nodes(draft_len)


def budget_builder(strategy: str, nodes: int) -> Builder:
    """A builder of `strategy` drafting at most `nodes` nodes, for comparisons at equal budgets.

    Trees get depth d = ceil((nodes + 2) / 4), the shallowest default shape that reaches the
    budget, capped at `nodes`: e.g. 4 -> depth 2, 8 -> 3, 16 -> 5, 32 -> 9. Beam keeps
    ceil(nodes / d) drafts per depth. A chain of `nodes` tokens is the equal-budget baseline.
    """
    return STRATEGIES.get(strategy).budget(nodes)
