"""Tree drafting: greedy exactness, lossless sampling on trees, tree masks and cache compaction, and
how far the lossy rules drift from the target's distribution."""
from collections import Counter
from functools import partial
from itertools import permutations

import pytest
import torch
from bigram import BigramLM, exact_joint
from conftest import decode
from scipy.stats import chisquare
from test_engine import PROMPTS, full_logits, reference_greedy
from test_lossless_sampling import N_TOKENS, PROMPT, VOCAB, chi_square

from specviz.drafters.beam import beam_builder, condition_on_max
from specviz.drafters.dynamic import dynamic_builder
from specviz.drafters.gumbel_top_k import gumbel_top_k, gumbel_top_k_builder
from specviz.drafters.model import ModelDrafter
from specviz.drafters.specinfer import specinfer_builder
from specviz.drafters.strategies import STRATEGIES, budget_builder, tree_size
from specviz.engine import Engine, Settings
from specviz.lm import CachedLM
from specviz.sampling import Warp
from specviz.tree import path_to
from specviz.rules import RULES
from specviz.verify import Verdict, verify_sampling
from specviz.rules import TARGET_RULES
from specviz.verify_lossy import lantern_rule, typical_rule

pytestmark = pytest.mark.usefixtures("one_thread")

TREES = ["gumbel-top-k", "beam", "specinfer", "dynamic"]
GREEDY, T1 = Warp(0.0), Warp(1.0)


def warp_for(strategy: str) -> Warp:
    return GREEDY if strategy == "dynamic" else T1  # dynamic trees refuse to sample


# --- greedy: every tree strategy reproduces greedy decoding token for token -----------------------

@pytest.mark.parametrize("strategy", TREES)
def test_greedy_tree_decoding_equals_reference_greedy(tiny_target, tiny_drafter, strategy):
    for prompt in PROMPTS:
        want = reference_greedy(tiny_target, prompt, 40)
        for builder in (STRATEGIES[strategy].build(3), budget_builder(strategy, 8)):
            result = Engine(tiny_target, decode, ModelDrafter(tiny_drafter, builder)).run(prompt, Settings(40))
            assert result.token_ids == want, (strategy, prompt)


@pytest.mark.parametrize("strategy", ["gumbel-top-k", "specinfer"])
def test_self_drafting_tree_accepts_a_full_path(tiny_target, strategy):
    # the greedy top-1 child is the target's own argmax, so every step accepts depth tokens + 1 bonus;
    # a drafter cache that kept the wrong nodes after a step would break this
    drafter = ModelDrafter(tiny_target, STRATEGIES[strategy].build(3))
    result = Engine(tiny_target, decode, drafter).run([1, 2, 3], Settings(40))
    assert result.metrics.tau == 4.0


# --- tree masks and KV compaction, for trees the builders actually make ----------------------------

def non_prefix_path(tree) -> list[int]:
    """The deepest root path that is not nodes 0, 1, 2, ... (accepting it must compact the cache)."""
    paths = [path_to(tree.parents, n) for n in range(len(tree))]
    paths = [p for p in paths if p != list(range(len(p)))]
    return max(paths, key=len)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "plain"])
@pytest.mark.parametrize("strategy", TREES)
def test_built_tree_logits_match_sequential_forwards_and_compaction(tiny_target, tiny_drafter, strategy, fast_path):
    committed = [1, 5, 7, 3, 9]
    build = STRATEGIES[strategy].build(3)
    tree = build(CachedLM(tiny_drafter), committed, warp_for(strategy), torch.Generator().manual_seed(3))
    assert len(tree) > 3 and not tree.is_chain()
    lm = CachedLM(tiny_target, fast_path)
    root, nodes = lm.forward(committed, tree.tokens, tree.parents)
    torch.testing.assert_close(root, full_logits(tiny_target, committed)[-1], atol=1e-5, rtol=1e-5)
    for node in range(len(tree)):
        path = [tree.tokens[i] for i in path_to(tree.parents, node)]
        torch.testing.assert_close(nodes[node], full_logits(tiny_target, committed + path)[-1], atol=1e-5, rtol=1e-5)
    path = non_prefix_path(tree)
    lm.accept(path)
    kept = committed + [tree.tokens[i] for i in path]
    assert lm.lin == kept and lm.cache_length() == len(kept)
    root, _ = lm.forward(kept + [4])
    torch.testing.assert_close(root, full_logits(tiny_target, kept + [4])[-1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("strategy", TREES)
def test_drafter_cache_keeps_the_accepted_path(tiny_drafter, strategy):
    warp = warp_for(strategy)
    drafter = ModelDrafter(tiny_drafter, STRATEGIES[strategy].build(3))
    committed = [1, 5, 7, 3, 9]
    tree = drafter.propose(committed, warp, torch.Generator().manual_seed(4))
    path = non_prefix_path(tree)
    drafter.learn(tree, Verdict(path, 4, "resampled", [], []))
    nxt = committed + [tree.tokens[i] for i in path] + [4]
    again = drafter.propose(nxt, warp, torch.Generator().manual_seed(5))
    want = full_logits(tiny_drafter, nxt)[-1]
    torch.testing.assert_close(again.entropy[-1], float(torch.distributions.Categorical(logits=want).entropy()),
                               atol=1e-4, rtol=1e-4)
    if warp == T1:
        torch.testing.assert_close(again.q[-1], want.softmax(-1), atol=1e-5, rtol=1e-5)


def test_each_level_is_one_drafter_forward(tiny_drafter):
    lm = CachedLM(tiny_drafter)
    tree = gumbel_top_k_builder((3, 2, 2))(lm, [1, 5, 7], T1, torch.Generator().manual_seed(0))
    assert len(tree) == 3 + 6 + 12
    assert lm.forwards == 3  # root, level 1, level 2 (the leaves are never fed)
    assert len(lm.tree_tokens) == 9


def test_sizes_and_budgets(tiny_drafter):
    for strategy in ["chain", *TREES]:
        for draft_len in (1, 2, 4):
            tree = STRATEGIES[strategy].build(draft_len)(CachedLM(tiny_drafter), [1, 2], GREEDY, torch.Generator())
            assert len(tree) == tree_size(strategy, draft_len), (strategy, draft_len)
        for nodes in (4, 8, 16, 32):
            tree = budget_builder(strategy, nodes)(CachedLM(tiny_drafter), [1, 2], GREEDY, torch.Generator())
            assert len(tree) == nodes, (strategy, nodes)


def test_dynamic_refuses_to_sample(tiny_drafter):
    with pytest.raises(ValueError, match="greedy"):
        dynamic_builder()(CachedLM(tiny_drafter), [1, 2], T1, torch.Generator())


# --- the samplers the lossless claims rest on ------------------------------------------------------

def test_gumbel_top_k_is_sampling_without_replacement():
    q = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    gen = torch.Generator().manual_seed(0)
    n = 20_000
    counts = Counter(tuple(gumbel_top_k(q[None], 2, gen)[0]) for _ in range(n))
    assert all(4 not in pair and pair[0] != pair[1] for pair in counts)
    pairs = list(permutations(range(4), 2))
    w = q.tolist()
    exact = [w[a] * w[b] / (1 - w[a]) for a, b in pairs]
    exp = [e * n / sum(exact) for e in exact]  # the sum is 1 up to float rounding
    assert chisquare([counts[p] for p in pairs], exp).pvalue > 1e-3
    assert len(gumbel_top_k(q[None], 9, gen)[0]) == 4  # never more tokens than q's support


def test_condition_on_max_keeps_order_and_sets_the_max():
    keys = torch.tensor([[-1.0, 0.5, -3.0, float("-inf"), 0.2], [2.0, 1.0, 0.0, -1.0, -2.0]], dtype=torch.float64)
    out = condition_on_max(keys, torch.tensor([[-2.0], [5.0]], dtype=torch.float64))
    assert out.max(-1).values.tolist() == pytest.approx([-2.0, 5.0])
    assert out.argsort(-1).tolist() == keys.argsort(-1).tolist() and out[0, 3] == float("-inf")
    assert bool((out[1] <= 5.0).all()) and float(out[1, 1]) < 5.0


# --- lossless sampling on trees: the bigram distribution test --------------------------------------


LOSSLESS = {
    "gumbel-top-k (3, 2) capped at 7 nodes, RSD, T=1": (gumbel_top_k_builder((3, 2), max_nodes=7),
                                                          Settings(N_TOKENS, temperature=1.0)),
    "beam 3 x 2, RSD, T=0.8 top-k 5": (beam_builder(3, 2), Settings(N_TOKENS, temperature=0.8, top_k=5)),
    "specinfer (2, 2), iid, T=1 top-p 0.9": (specinfer_builder((2, 2)), Settings(N_TOKENS, temperature=1.0, top_p=0.9)),
}


@pytest.mark.parametrize("case", LOSSLESS)
def test_tree_sampling_matches_target_distribution(target, drafter_model, case):
    builder, settings = LOSSLESS[case]
    pvalue, tvd = chi_square(Engine(target, str, ModelDrafter(drafter_model, builder), rule="sampling"), settings)
    print(f"{case}: chi-square p={pvalue:.3g} tvd={tvd:.4f}")
    assert pvalue > 1e-3


def test_rsd_without_the_q_update_fails(target, drafter_model):
    # keeping a rejected token in q under-states how likely the next distinct sibling was drawn,
    # so later siblings are over-accepted; wide first levels make that bias large
    broken = partial(verify_sampling, drop_rejected=False)
    engine = Engine(target, str, ModelDrafter(drafter_model, gumbel_top_k_builder((4, 2))), rule=broken)
    pvalue, tvd = chi_square(engine, Settings(N_TOKENS, temperature=1.0))
    print(f"RSD without q update: chi-square p={pvalue:.3g} tvd={tvd:.4f}")
    assert pvalue < 1e-6


# --- lossy rules: how far they move the output away from the target's distribution ---------------

def output_tvd(engine: Engine, settings: Settings, samples: int) -> tuple[float, float]:
    """(TVD of the first N_TOKENS outputs from the target's exact joint, the same TVD for exact samples).

    The second number is the noise floor: what a lossless sampler shows at this sample size.
    """
    counts = Counter(
        tuple(engine.run(PROMPT, Settings(**{**settings.__dict__, "seed": seed})).token_ids) for seed in range(samples)
    )
    truth = exact_joint(engine.target.model, PROMPT, N_TOKENS, settings.warp)
    tvd = 0.5 * sum(abs(counts[s] / samples - p) for s, p in truth.items())
    cells = list(truth)
    exact = torch.multinomial(torch.tensor([truth[s] for s in cells]), samples, replacement=True,
                              generator=torch.Generator().manual_seed(0))
    floor_counts = torch.bincount(exact, minlength=len(cells)) / samples
    floor = 0.5 * sum(abs(float(floor_counts[i]) - truth[s]) for i, s in enumerate(cells))
    return tvd, floor


LOSSY = {
    "typical-lossy": lambda model: typical_rule(),
    # the bigram table's rows (next-token logits) serve as its token embeddings
    "lantern-lossy": lambda model: lantern_rule(model.table, k=2, delta=0.3),
}


@pytest.mark.parametrize("rule", LOSSY)
def test_lossy_rules_move_the_output_distribution(target, drafter_model, rule):
    engine = Engine(target, str, ModelDrafter(drafter_model, gumbel_top_k_builder((2, 2))), rule=LOSSY[rule](target))
    tvd, floor = output_tvd(engine, Settings(N_TOKENS, temperature=1.0), samples=5_000)
    print(f"{rule}: TVD from the target = {tvd:.4f} (noise floor {floor:.4f})")
    assert tvd > 3 * floor


def test_lossy_rules_are_registered_and_exact_when_greedy(tiny_target, tiny_drafter):
    assert "typical-lossy" in RULES and "lantern-lossy" in TARGET_RULES
    want = reference_greedy(tiny_target, PROMPTS[0], 20)
    for rule in (RULES["typical-lossy"], TARGET_RULES["lantern-lossy"](tiny_target)):
        engine = Engine(tiny_target, decode, ModelDrafter(tiny_drafter, STRATEGIES["gumbel-top-k"].build(3)), rule=rule)
        result = engine.run(PROMPTS[0], Settings(20))
        assert result.token_ids == want and result.events[0].rule.endswith("-lossy")
