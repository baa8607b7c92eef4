"""The priced tree (drafters/priced.py) and the verification cost curve it reads (verify_cost.py):
output identical to greedy decoding whatever the curve, a tree that grows where verification is cheap
and shrinks to nothing where every node costs a whole step, a calibration that learns from what was
accepted, and a curve measured once per machine and cached atomically."""
import json

import pytest
import torch
from conftest import decode
from test_engine import PROMPTS, reference_greedy

from specviz import verify_cost
from specviz.drafters.dynamic import build_dynamic
from specviz.drafters.model import ModelDrafter
from specviz.drafters.priced import PricedDynamic, accepted_in
from specviz.drafters.strategies import STRATEGIES
from specviz.engine import Engine, Settings
from specviz.lm import CachedLM
from specviz.sampling import Warp

pytestmark = pytest.mark.usefixtures("one_thread")

FLAT = {n: 0.01 for n in range(1, 26)}  # a GPU-like curve: any tree verifies for the price of one token
STEEP = {n: 0.01 * n for n in range(1, 26)}  # every node costs as much as a whole one-token step
DEAR = {n: 0.01 + 0.1 * (n - 1) for n in range(1, 26)}  # every node costs ten


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECVIZ_CACHE", str(tmp_path / "cache"))


def priced(curve, depth=4, **kw) -> PricedDynamic:
    builder = PricedDynamic(depth, **kw)
    builder.price(lambda: dict(curve))
    return builder


def run(target, drafter_model, builder, prompt, n=40):
    drafter = ModelDrafter(drafter_model, builder)
    engine = Engine(target, decode, drafter)
    if curve := getattr(builder, "fixed", None):  # the engine priced it with the measured curve; a test's wins
        builder.price(lambda: dict(curve))
    return engine.run(prompt, Settings(n))


@pytest.mark.parametrize("curve", [None, FLAT, STEEP], ids=["measured", "flat", "steep"])
def test_priced_tree_decoding_equals_reference_greedy(tiny_target, tiny_drafter, curve):
    for prompt in PROMPTS:
        builder = PricedDynamic(4)
        builder.fixed = curve
        result = run(tiny_target, tiny_drafter, builder, prompt)
        assert result.token_ids == reference_greedy(tiny_target, prompt, 40), prompt


def test_the_tree_follows_the_cost_of_verification(tiny_target):
    # the target drafts for itself: its top child is always right, so on a flat curve every level pays;
    # where each node costs a whole step, no node pays (expected acceptance of a node is below 1): only the
    # first step's first level is fed, to time what a drafter level costs
    sizes, drafted = {}, {}
    for name, curve in (("flat", FLAT), ("steep", STEEP)):
        builder = PricedDynamic(4)
        builder.fixed = curve
        result = run(tiny_target, tiny_target, builder, [1, 5, 7], 30)
        sizes[name] = result.metrics.drafted / max(1, result.metrics.steps)
        drafted[name] = result.metrics.drafted
        assert result.token_ids == reference_greedy(tiny_target, [1, 5, 7], 30)
    assert drafted["steep"] <= builder.width
    assert sizes["flat"] > 8


def test_calibration_learns_from_accepted_nodes(tiny_target):
    # a drafter identical to the target is under-confident by its own path probabilities (every top
    # child is accepted although its probability is below 1), so kappa rises above its prior of 1
    builder = PricedDynamic(3)
    builder.fixed = FLAT
    run(tiny_target, tiny_target, builder, [2, 4, 6], 30)
    assert builder.kappa > 1.2


def test_unpriced_it_is_the_dynamic_tree(tiny_drafter):
    committed, gen = [1, 5, 7, 3], torch.Generator()
    tree = PricedDynamic(3)(CachedLM(tiny_drafter), committed, Warp(0.0), gen)
    want = build_dynamic(CachedLM(tiny_drafter), committed, Warp(0.0), gen, 12, 3)
    assert (tree.tokens, tree.parents) == (want.tokens, want.parents)
    with pytest.raises(ValueError, match="greedy"):
        priced(FLAT)(CachedLM(tiny_drafter), committed, Warp(1.0), gen)


def test_a_stopped_tree_says_why(tiny_drafter):
    builder = priced(STEEP, depth=3)
    first = builder(CachedLM(tiny_drafter), [1, 5, 7, 3], Warp(0.0), torch.Generator())
    assert len(first) == builder.width  # the first level is fed once, to time it
    tree = builder(CachedLM(tiny_drafter), [2, 6, 4], Warp(0.0), torch.Generator())
    assert len(tree) == 0 and tree.stop["rule"] == "priced" and "cost" in tree.stop["reason"]


def test_accepted_in_walks_the_tree():
    tokens, parents = [5, 6, 7, 8], [-1, -1, 0, 2]  # 5 -> 7 -> 8 and 6
    assert accepted_in(tokens, parents, [5, 7, 8, 1]) == 3
    assert accepted_in(tokens, parents, [5, 7, 2]) == 2
    assert accepted_in(tokens, parents, [6, 3]) == 1
    assert accepted_in(tokens, parents, [9]) == 0


def test_registered_and_refuses_sampling():
    entry = STRATEGIES.get("priced")
    assert entry.greedy_only and entry.max_nodes(3) == 24


def test_curve_is_measured_once_and_cached(tiny_target, monkeypatch, tmp_path):
    lm = CachedLM(tiny_target)
    first = verify_cost.seconds_by_positions(lm)
    assert sorted(first) == list(range(1, verify_cost.MAX_POSITIONS + 1)) and all(s > 0 for s in first.values())
    stored = json.loads((tmp_path / "cache" / "measured" / "verify-cost.json").read_text())
    assert len(stored) == 1 and "measured" in next(iter(stored.values()))

    def no_measuring(*a, **k):
        raise AssertionError("measured again")

    monkeypatch.setattr(verify_cost, "measure", no_measuring)
    assert verify_cost.seconds_by_positions(lm) == first


def test_an_unreadable_curve_is_measured_again(tiny_target, tmp_path):
    path = tmp_path / "cache" / "measured" / "verify-cost.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    curve = verify_cost.seconds_by_positions(CachedLM(tiny_target))
    assert len(curve) == verify_cost.MAX_POSITIONS
    assert json.loads(path.read_text())  # replaced by a whole file


@pytest.mark.parametrize("curve", [FLAT, DEAR], ids=["flat", "dear"])
def test_a_graft_is_kept_only_where_it_pays(tiny_target, tiny_drafter, curve):
    # the n-gram tree grafted onto a priced tree (eagle3+ngram): where verification is free its nodes are
    # verified too; where a node costs ten steps no graft pays; the output is greedy decoding's either way
    from specviz.drafters.merged import MergedDrafter
    from specviz.drafters.ngram import NgramDrafter

    vocab = tiny_target.config.vocab_size
    builder = PricedDynamic(3)
    counts = NgramDrafter(vocab, None, budget=6, width=4, min_expected=0.0)
    offered, propose = [], counts.propose
    counts.propose = lambda *a, **k: offered.append(len(tree := propose(*a, **k))) or tree
    prompt = [1, 2, 3, 1, 2, 4, 1, 2, 5, 1, 2]
    drafter = MergedDrafter(ModelDrafter(tiny_drafter, builder), counts, vocab, "m")
    engine = Engine(tiny_target, decode, drafter)
    builder.price(lambda: dict(curve))
    result = engine.run(prompt, Settings(30))
    assert result.token_ids == reference_greedy(tiny_target, prompt, 30)
    assert sum(offered) > 10  # the counts did offer trees
    assert (drafter.grafted > 0) == (curve is FLAT)


def test_the_graft_decision_weighs_its_value_against_its_nodes():
    builder = priced(STEEP)
    builder._seconds = dict(STEEP)
    builder.besides(6, 0.5)  # six nodes for half a token: not worth six steps' verification
    assert builder.best_leaves(0.0, 0, [], 0.0)[2] is False
    builder.besides(6, 9.0)  # six nodes for nine tokens (1 + 9 tokens for 7 steps beats 1 for 1)
    assert builder.best_leaves(0.0, 0, [], 0.0)[2] is True


def test_waiting_for_other_runs_is_not_counted_as_the_step_s_overhead(tiny_target, tiny_drafter):
    """Under the page's scheduler a run's stream sits still while thirty others take their turns. The tree's
    overhead is read on the engine's own clock, which stops while the stream waits: a wait there must
    not pass for a cost of every step (which would make every node look free and grow the largest trees)."""
    import time

    from specviz.events import StepFinished

    def overhead(consumer_wait: float) -> float:
        builder = PricedDynamic(4)
        engine = Engine(tiny_target, decode, ModelDrafter(tiny_drafter, builder))
        builder.price(lambda: dict(STEEP))
        for event in engine.stream([1, 5, 7, 2], Settings(24)):
            if isinstance(event, StepFinished):
                time.sleep(consumer_wait)  # the other runs' turns
        return builder.overhead_s

    alone, waited = overhead(0.0), overhead(0.05)
    assert waited < 0.02 + 2 * alone, (alone, waited)


def test_a_finished_engine_frees_its_caches_without_the_garbage_collector(tiny_target, tiny_drafter):
    """The hints the engine hands a priced drafter (the cost curve, its own clock) must not point back at
    the engine: a reference cycle kept every finished run's KV cache alive until a full collection, and a
    page serving thirty visitors piled them up (41 caches, 608 MB, after a 40-second load test)."""
    import gc
    import weakref

    builder = PricedDynamic(4)
    engine = Engine(tiny_target, decode, ModelDrafter(tiny_drafter, builder))
    engine.run([1, 5, 7, 2], Settings(12))
    cache = weakref.ref(engine.target)
    gc.disable()
    try:
        del engine
        assert cache() is None
    finally:
        gc.enable()
