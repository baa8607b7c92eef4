"""Named ways to shape a model drafter's proposal (chain or tree), for the CLI, bench and app.

Each entry maps a name to (description, factory); factory(draft_len) returns a Builder, i.e.
builder(drafter_lm, ids, warp, gen) -> DraftTree. `draft_len` is the strategy's size knob: chain
length for chains, depth for trees (every tree uses about 4 * draft_len nodes; see tree_size).
For equal-budget comparisons use budget_builder(strategy, nodes).
"""
from __future__ import annotations

from typing import Callable

from .beam import beam_builder, beam_strategy
from .dynamic import dynamic_builder, dynamic_strategy
from .gumbel_top_k import gumbel_top_k_builder, gumbel_top_k_strategy
from .model import Builder, chain_builder
from .specinfer import specinfer_builder, specinfer_strategy
from .trees import default_widths, depth_for_budget, widths_size

STRATEGIES: dict[str, tuple[str, Callable[[int], Builder]]] = {
    "chain": ("one draft token per position (classic speculative decoding)", chain_builder),
    "gumbel-top-k": ("tree, distinct children per node drawn without replacement (RSD, Gumbel-Top-k); "
                     "widths 2, 2, 1, ... over draft_len levels", gumbel_top_k_strategy),
    "beam": ("tree from stochastic beam search: the 4 best perturbed drafts per depth (RSD-S)", beam_strategy),
    "specinfer": ("tree, i.i.d. children per node (SpecInfer multi-draft); widths 2, 2, 1, ...", specinfer_strategy),
    "dynamic": ("tree grown where the drafter is confident, 4 * draft_len nodes (EAGLE-2; greedy only)",
                dynamic_strategy),
}

# Strategies whose trees no sampling verifier accepts losslessly: the builder raises under sampling.
GREEDY_ONLY = {"dynamic"}

_MAX_NODES: dict[str, Callable[[int], int]] = {
    "chain": lambda d: d,
    "gumbel-top-k": lambda d: widths_size(default_widths(d)),
    "specinfer": lambda d: widths_size(default_widths(d)),
    "beam": lambda d: 4 * d,
    "dynamic": lambda d: 4 * d,
}


def tree_size(strategy: str, draft_len: int) -> int:
    """The most nodes STRATEGIES[strategy] drafts per step at this draft_len (what the target verifies)."""
    return _MAX_NODES[strategy](draft_len)


def budget_builder(strategy: str, nodes: int) -> Builder:
    """A builder of `strategy` drafting at most `nodes` nodes, for comparisons at equal budgets.

    Trees get depth d = ceil((nodes + 2) / 4), the shallowest default shape that reaches the
    budget, capped at `nodes`: e.g. 4 -> depth 2, 8 -> 3, 16 -> 5, 32 -> 9. Beam keeps
    ceil(nodes / d) drafts per depth. A chain of `nodes` tokens is the equal-budget baseline.
    """
    d = depth_for_budget(nodes)
    factories = {
        "chain": lambda: chain_builder(nodes),
        "gumbel-top-k": lambda: gumbel_top_k_builder(default_widths(d), max_nodes=nodes),
        "specinfer": lambda: specinfer_builder(default_widths(d), max_nodes=nodes),
        "beam": lambda: beam_builder(-(-nodes // d), d, max_nodes=nodes),
        "dynamic": lambda: dynamic_builder(nodes, d),
    }
    if strategy not in factories:
        raise ValueError(f"unknown strategy '{strategy}'; choose one of: {', '.join(factories)}")
    return factories[strategy]()
