"""Parallel decoding (PEARL): drafter and target at the same time, output still exactly the target's
(greedy token for token; sampling by a chi-square test on a context-dependent model, which a
deliberately broken variant fails), the same seed gives the same tokens whatever the timing, the
phases overlap, and a rejection cancels drafting under way."""
import random
import threading
import time

import pytest
import torch
from conftest import perturbed, tiny_llama
from exact import context_llama, pvalue_against_exact

from specviz import trace
from specviz.cli import build_parser, run_config
from specviz.config import RunConfig
from specviz.drafters.model import ModelDrafter, chain_builder
from specviz.drafters.prompt_lookup import PromptLookupDrafter
from specviz.engine import Engine, Settings
from specviz.events import Drafted, RunFinished, StepFinished, Verified
from specviz.parallel import ParallelEngine, position_generator
from specviz.stop_rules import make_stop_rule
from specviz.tree import DraftTree
from specviz.verify import ACCEPTED, UNVISITED

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = [1, 2, 3, 4, 5, 1, 2]


class Slow:
    """A drafter that sleeps before each proposal (a fixed or random time): scheduling changes,
    the drafts must not. Counts its proposals."""

    def __init__(self, inner, seconds=0.0, jitter=0.0, seed=0):
        self.inner, self.seconds, self.jitter = inner, seconds, jitter
        self.rand = random.Random(seed)
        self.calls = 0
        self.name, self.greedy_only, self.reads_target = inner.name, inner.greedy_only, ()
        self.lm = inner.lm

    @property
    def forward_seconds(self):
        return self.inner.forward_seconds

    def propose(self, ids, warp, gen, stop=None):
        self.calls += 1
        time.sleep(self.seconds + self.jitter * self.rand.random())
        return self.inner.propose(ids, warp, gen, stop)

    def learn(self, tree, verdict, target=None):
        pass

    def reset(self):
        self.inner.reset()


def slow_target(engine, seconds=0.0, jitter=0.0, seed=1):
    """The engine's target forwards take `seconds` longer (plus random jitter)."""
    rand = random.Random(seed)
    real = engine.target.forward

    def forward(*args, **kwargs):
        time.sleep(seconds + jitter * rand.random())
        return real(*args, **kwargs)

    engine.target.forward = forward
    return engine


@pytest.mark.parametrize("draft_len", [1, 2, 4])
def test_greedy_equals_autoregressive(tiny_target, tiny_drafter, draft_len):
    settings = Settings(max_new_tokens=40)
    ar = Engine(tiny_target, str).run(PROMPT, settings)
    engine = ParallelEngine(tiny_target, str, ModelDrafter(tiny_drafter, chain_builder(draft_len)), draft_len=draft_len)
    run = engine.run(PROMPT, settings)
    assert run.token_ids == ar.token_ids
    trace.validate(run.events)  # the same typed events as the sequential engine, in the same structure
    assert run.metrics.steps < len(ar.token_ids) or draft_len == 1
    assert run.metrics.tokens == 40 and run.metrics.elapsed_s > 0
    assert engine.run(PROMPT, settings).token_ids == ar.token_ids  # fresh caches for the next run


def test_greedy_with_the_schedule_and_an_end_of_text_token(tiny_target, tiny_drafter):
    ar = Engine(tiny_target, str).run(PROMPT, Settings(max_new_tokens=40))
    eos = ar.token_ids[25]
    expected = ar.token_ids[: ar.token_ids.index(eos) + 1]
    engine = ParallelEngine(tiny_target, str, ModelDrafter(tiny_drafter, chain_builder(3)), eos_ids={eos},
                            stop=make_stop_rule("schedule", 3))
    run = engine.run(PROMPT, Settings(max_new_tokens=40))
    assert run.token_ids == expected and run.stop_reason == "eos"
    sizes = {len(ev.nodes) for ev in run.events if isinstance(ev, Drafted)}
    assert len(sizes) > 1  # pre-verify steps check one token, post-verify steps the rest of a round


def test_a_seed_gives_the_same_tokens_whatever_the_timing(tiny_target, tiny_drafter):
    settings = Settings(max_new_tokens=30, temperature=1.0, seed=7)
    calm = ParallelEngine(tiny_target, str, ModelDrafter(tiny_drafter, chain_builder(3)), draft_len=3).run(PROMPT,
                                                                                                        settings)
    runs = [slow_target(ParallelEngine(tiny_target, str, Slow(ModelDrafter(tiny_drafter, chain_builder(3)),
                                                              jitter=0.004, seed=s), draft_len=3),
                        jitter=0.004, seed=s).run(PROMPT, settings) for s in range(3)]
    drafted = [[[n.token for n in ev.nodes] for ev in r.events if isinstance(ev, Drafted)] for r in [calm] + runs]
    assert all(r.token_ids == calm.token_ids for r in runs)
    assert all(d == drafted[0] for d in drafted)
    other = ParallelEngine(tiny_target, str, ModelDrafter(tiny_drafter, chain_builder(3)), draft_len=3).run(
        PROMPT, Settings(max_new_tokens=30, temperature=1.0, seed=8))
    assert other.token_ids != calm.token_ids


def test_drafting_and_verification_overlap(tiny_target, tiny_drafter):
    engine = slow_target(ParallelEngine(tiny_target, str, Slow(ModelDrafter(tiny_drafter, chain_builder(3)),
                                                               seconds=0.01), draft_len=3), seconds=0.03)
    run = engine.run(PROMPT, Settings(max_new_tokens=30))
    steps = [ev for ev in run.events if isinstance(ev, StepFinished)]

    def overlaps(a0, a1, b0, b1):
        return a0 < b1 and b0 < a1

    own = [s for s in steps if overlaps(s.draft_start_s, s.draft_start_s + s.draft_s,
                                        s.verify_start_s, s.verify_start_s + s.verify_s)]
    ahead = [s for prev, s in zip(steps, steps[1:]) if s.draft_start_s < prev.verify_start_s + prev.verify_s]
    assert own and ahead  # a step's last token drafted during its forward; the next step's draft during it too
    m = run.metrics
    assert m.draft_s + m.verify_s > m.elapsed_s  # the two models' times add up to more than the run took


def test_a_rejection_cancels_drafting_under_way(tiny_target):
    unrelated = Slow(ModelDrafter(tiny_llama(9), chain_builder(8)), seconds=0.02)  # mostly rejected
    engine = ParallelEngine(tiny_target, str, unrelated, draft_len=8)
    run = engine.run(PROMPT, Settings(max_new_tokens=20))
    m = run.metrics
    assert m.accepted < m.drafted / 2
    rounds = sum(1 for ev in run.events if isinstance(ev, Verified) and ev.nodes and len(ev.path) < len(ev.nodes))
    assert unrelated.calls < rounds * 8 / 2  # rounds of 8 were cut short when their first token failed
    assert unrelated.calls == m.drafted + m.wasted_forwards  # every drafter forward is a node or counted as wasted


def test_cancel_and_time_limit_end_the_run_and_the_next_run_is_right(tiny_target, tiny_drafter):
    engine = ParallelEngine(tiny_target, str, Slow(ModelDrafter(tiny_drafter, chain_builder(4)), seconds=0.005),
                            draft_len=4)
    full = engine.run(PROMPT, Settings(max_new_tokens=30)).token_ids
    steps = []
    events = []
    for ev in engine.stream(PROMPT, Settings(max_new_tokens=30), cancel=lambda: len(steps) >= 2):
        events.append(ev)
        steps += [ev] if isinstance(ev, StepFinished) else []
    assert events[-1].stop_reason == "cancelled" and full[: len(events[-1].token_ids)] == events[-1].token_ids
    stream = engine.stream(PROMPT, Settings(max_new_tokens=30))
    for ev in stream:  # abandon a run mid-step, drafting under way
        if isinstance(ev, Drafted):
            break
    assert engine.run(PROMPT, Settings(max_new_tokens=30)).token_ids == full
    stream.close()
    end = list(engine.stream(PROMPT, Settings(max_new_tokens=30), time_limit_s=0.0))[-1]
    assert end.stop_reason == "time limit" and end.token_ids == []


def test_the_events_round_trip_through_a_trace(tiny_target, tiny_drafter, tmp_path):
    run = ParallelEngine(tiny_target, str, ModelDrafter(tiny_drafter, chain_builder(3)), draft_len=3).run(
        PROMPT, Settings(max_new_tokens=20, temperature=0.8, seed=2))
    path = trace.save(run.events, tmp_path / "parallel.json")
    loaded = trace.load(path)
    assert isinstance(loaded[-1], RunFinished) and loaded[-1].token_ids == run.token_ids
    assert "parallel" in loaded[0].drafter


def test_drafters_without_a_model_of_their_own_are_refused(tiny_target):
    with pytest.raises(ValueError, match="its own model"):
        ParallelEngine(tiny_target, str, PromptLookupDrafter(32, k=4))

    class ReadsTarget(ModelDrafter):
        reads_target = (-1,)

    with pytest.raises(ValueError, match="cannot draft ahead"):
        ParallelEngine(tiny_target, str, ReadsTarget(tiny_target, chain_builder(2)))
    online = ModelDrafter(tiny_target, chain_builder(2))
    online.online = object()  # as DistilledDrafter(online=...): it learns from every verdict
    with pytest.raises(ValueError, match="learns from each verdict"):
        ParallelEngine(tiny_target, str, online)
    with pytest.raises(ValueError, match="not supported"):
        ParallelEngine(tiny_target, str, ModelDrafter(tiny_target, chain_builder(2)),
                       stop=make_stop_rule("adaedl", 3))


def test_run_config_and_cli():
    ok = RunConfig(drafter="qwen2.5-coder-0.5b", parallel=True).checked()
    assert ok.parallel and RunConfig.from_dict(ok.as_dict()) == ok
    assert RunConfig.from_dict({k: v for k, v in ok.as_dict().items() if k != "parallel"}).parallel is False
    for bad, match in ((dict(drafter="pld"), "its own model"),
                       (dict(drafter="qwen2.5-coder-0.5b", shape="gumbel-top-k"), "draft shape"),
                       (dict(drafter="qwen2.5-coder-0.5b", stop="adaedl"), "stopping rule")):
        with pytest.raises(ValueError, match=match):
            RunConfig(parallel=True, **bad).checked()
    a = build_parser().parse_args(["generate", "--prompt", "x", "--drafter", "qwen2.5-coder-0.5b", "--parallel"])
    assert run_config(a).checked().parallel
    a = build_parser().parse_args(["bench", "--drafter", "qwen2.5-coder-0.5b"])
    assert not run_config(a).parallel


def test_position_generators_are_distinct_streams():
    draws = {float(torch.rand((), generator=position_generator(seed, pos))) for seed in range(20) for pos in range(50)}
    assert len(draws) == 1000
    assert float(torch.rand((), generator=position_generator(3, 9))) == float(
        torch.rand((), generator=position_generator(3, 9)))


# ---- sampling on a model whose next token depends on the whole context (as in test_stop_rules)

VOCAB, N, SAMPLES = 6, 3, 8_000


@pytest.fixture(scope="module")
def context_pair():
    target = context_llama(VOCAB)  # the next token depends strongly on the earlier ones
    return target, perturbed(target, 0.5, seed=4)


def context_chi_square(engine, settings: Settings, samples: int = SAMPLES) -> float:
    return pvalue_against_exact(engine, PROMPT[:4], N, settings, samples)


@pytest.mark.parametrize("draft_len, settings", [(2, Settings(N, temperature=1.0)),
                                                 (3, Settings(N, temperature=0.8, top_p=0.9))])
def test_parallel_sampling_matches_a_context_dependent_target(context_pair, draft_len, settings):
    target, drafter = context_pair
    engine = ParallelEngine(target, str, ModelDrafter(drafter, chain_builder(draft_len)), rule="sampling",
                            draft_len=draft_len, threads=(1, 1))
    pvalue = context_chi_square(engine, settings)
    print(f"parallel, draft_len {draft_len}: p={pvalue:.3g}")
    assert pvalue > 1e-3


class TrustsTheContinuation(ParallelEngine):
    """Broken on purpose: post-verify takes the drafter's continuation as already verified (its
    first token is accepted unchecked whenever the rest of the round was)."""

    @staticmethod
    def verify(rule, tree, p_rows, ent_rows, gen, lookahead):
        if not lookahead:
            return ParallelEngine.verify(rule, tree, p_rows, ent_rows, gen, lookahead)
        n = len(tree) - 1
        head = DraftTree(tree.tokens[:n], tree.parents[:n], {k: v for k, v in tree.q.items() if k < n - 1})
        verdict = rule(head, p_rows, gen)
        if len(verdict.path) == n:
            verdict.path.append(n)
            verdict.status.append(ACCEPTED)
            verdict.accept_prob.append(1.0)
        else:
            verdict.status.append(UNVISITED)
            verdict.accept_prob.append(None)
        return verdict, torch.cat([p_rows, p_rows[-1:]]), torch.cat([ent_rows, ent_rows[-1:]])


def test_a_parallel_engine_that_trusts_the_continuation_fails_the_same_test(context_pair):
    target, drafter = context_pair
    engine = TrustsTheContinuation(target, str, ModelDrafter(drafter, chain_builder(2)), rule="sampling",
                                   draft_len=2, threads=(1, 1))
    pvalue = context_chi_square(engine, Settings(N, temperature=1.0), SAMPLES // 4)  # p ~ 0 at 8,000 too
    print(f"continuation trusted: p={pvalue:.3g}")
    assert pvalue < 1e-3  # the same decision threshold that the correct engine passes
