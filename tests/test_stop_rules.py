"""Stopping rules: the +2/-1 schedule, AdaEDL and the confidence threshold end drafting rounds;
the output stays exactly the target's (greedy token for token; sampling by a chi-square test on a
context-dependent model, which a stale cache entry fails)."""

import pytest
import torch
from conftest import perturbed, tiny_llama
from exact import context_llama, pvalue_against_exact

from specviz.drafters.model import ModelDrafter, chain_builder
from specviz.drafters.strategies import STRATEGIES
from specviz.engine import Engine, Settings
from specviz.events import Drafted, Verified
from specviz.lm import CachedLM
from specviz.stop_rules import STOP_RULES, make_stop_rule
from specviz.stop_rules.adaedl import AdaEDL, acceptance_bound
from specviz.stop_rules.schedule import PlusTwoMinusOne

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = [1, 2, 3, 4, 5, 1, 2]


def test_schedule_grows_after_full_acceptance_and_shrinks_after_a_rejection():
    rule = PlusTwoMinusOne(4)
    assert rule.limit() == 4
    rule.update(4, 4)
    assert rule.limit() == 6
    rule.update(6, 2)
    assert rule.limit() == 5
    for _ in range(10):
        rule.update(5, 0)
    assert rule.limit() == 1
    rule.reset()
    assert rule.limit() == 4


def test_adaedl_bound_and_threshold_move_the_right_way():
    assert acceptance_bound(0.0, 0.2) == 1.0
    assert acceptance_bound(5.0, 0.2) == pytest.approx(0.0)
    rule = AdaEDL(8, lambda0=0.6)
    assert rule.stop(2, 0.1, 0.9) is None  # bound 0.86 > 0.6
    assert "λ" in rule.stop(2, 2.0, 0.3)  # bound 0.37 < 0.6
    before = rule.lam
    rule.update(4, 0)  # acceptance far below alpha: stop earlier next time
    assert rule.lam > before
    for _ in range(50):
        rule.update(4, 4)  # acceptance 1 > alpha: draft longer
    assert rule.lam < before


def test_every_registered_rule_builds_with_its_defaults():
    for name in STOP_RULES:
        rule = make_stop_rule(name, 4)
        assert rule.limit() >= 1 and isinstance(rule.state(), dict)
    with pytest.raises(ValueError, match="no parameter"):
        make_stop_rule("schedule", 4, {"nope": 1})
    with pytest.raises(ValueError, match="gamma must be"):
        make_stop_rule("adaedl", 4, {"gamma": -1})


@pytest.mark.parametrize("stop", ["schedule", "adaedl", "confidence"])
@pytest.mark.parametrize("shape", ["chain", "gumbel-top-k"])
def test_greedy_with_a_stop_rule_equals_autoregressive(tiny_target, tiny_drafter, stop, shape):
    settings = Settings(max_new_tokens=24)
    ar = Engine(tiny_target, str).run(PROMPT, settings)
    engine = Engine(tiny_target, str, ModelDrafter(tiny_drafter, STRATEGIES[shape].build(3)),
                    stop=make_stop_rule(stop, 3))
    run = engine.run(PROMPT, settings)
    assert run.token_ids == ar.token_ids
    notes = [ev.stop for ev in run.events if isinstance(ev, Drafted) and ev.nodes]
    assert notes and all(n["rule"] == stop for n in notes)


def test_schedule_lengths_follow_the_verdicts(tiny_target, tiny_drafter):
    engine = Engine(tiny_target, str, ModelDrafter(tiny_drafter, chain_builder(2)), stop=make_stop_rule("schedule", 2))
    events = engine.run(PROMPT, Settings(max_new_tokens=40)).events
    drafted = [ev for ev in events if isinstance(ev, Drafted)]
    verified = [ev for ev in events if isinstance(ev, Verified)]
    lengths = [d.stop["length"] for d in drafted if d.nodes]
    assert len(set(lengths)) > 1  # it did adapt
    for (d, v), nxt in zip(zip(drafted, verified), drafted[1:]):
        if not d.nodes or not nxt.nodes:
            continue
        grow = len(v.path) == len(d.nodes)
        assert nxt.stop["length"] == (min(32, d.stop["length"] + 2) if grow else max(1, d.stop["length"] - 1))


def test_adaedl_stops_early_and_counts_the_wasted_forward(tiny_target, tiny_drafter):
    engine = Engine(tiny_target, str, ModelDrafter(tiny_drafter, chain_builder(6)),
                    stop=make_stop_rule("adaedl", 6, {"lambda0": 0.95}))
    run = engine.run(PROMPT, Settings(max_new_tokens=30))
    stopped = [ev.stop for ev in run.events if isinstance(ev, Drafted) and ev.stop and ev.stop["reason"] != "limit"]
    assert stopped and run.metrics.wasted_forwards == len(stopped)
    assert all(ev.stop["depth"] >= 1 for ev in run.events if isinstance(ev, Drafted) and ev.stop)


# ---- sampling on a model whose next token depends on the whole context

VOCAB, N, SAMPLES = 6, 3, 8_000


def context_chi_square(engine: Engine, settings: Settings) -> float:
    return pvalue_against_exact(engine, PROMPT[:4], N, settings, SAMPLES)


@pytest.fixture(scope="module")
def context_pair():
    target = context_llama(VOCAB)  # the next token depends strongly on the earlier ones
    return target, perturbed(target, 0.5, seed=4)


def test_adaedl_sampling_matches_a_context_dependent_target(context_pair):
    target, drafter = context_pair
    engine = Engine(target, str, ModelDrafter(drafter, chain_builder(3)), rule="sampling",
                    stop=make_stop_rule("adaedl", 3, {"lambda0": 0.3}))
    pvalue = context_chi_square(engine, Settings(N, temperature=1.0))
    print(f"adaedl chain on a context-dependent target: p={pvalue:.3g}")
    assert pvalue > 1e-3


def test_a_stale_cache_entry_fails_the_same_test(context_pair, monkeypatch):
    target, drafter = context_pair
    real_keep = CachedLM._keep_slots

    def off_by_one(self, slots):  # a crop that leaves the first rejected draft's key/value behind
        real_keep(self, slots + 1 if isinstance(slots, int) and self.model is target else slots)

    monkeypatch.setattr(CachedLM, "_keep_slots", off_by_one)
    # one-token drafts from an unrelated model: frequent rejections, each leaving a stale entry
    engine = Engine(target, str, ModelDrafter(tiny_llama(9, vocab=VOCAB), chain_builder(1)), rule="sampling")
    pvalue = context_chi_square(engine, Settings(N, temperature=1.0))
    print(f"stale cache entry: p={pvalue:.3g}")
    assert pvalue < 1e-3  # the same decision threshold that the correct engine passes (p > 1e-3)
