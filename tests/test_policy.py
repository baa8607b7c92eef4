"""Drafter choice (issue 18): the policy learns the rewarded arm, `auto` stays exact whatever arm drafts.

- REINFORCE (and the supervised best-arm baseline) move probability to the arm a synthetic bandit
  rewards, deterministically for a seed, and pick plain decoding where it is best;
- `auto` on tiny models: greedy equals plain decoding token for token with the online switch
  re-deciding every step; under sampling the joint of the first tokens matches the exact one on a
  context-dependent target (chi-square, seeded), and a broken verifier fails the same test;
- events and traces record the arm of every step and the policy's probabilities.
"""
import json
from functools import partial

import pytest
import torch
from conftest import perturbed, tiny_llama
from exact import context_llama, pvalue_against_exact

from specviz import trace
from specviz.choice.arms import build_arms, make_auto_drafter
from specviz.choice.auto import Arm, AutoDrafter, step_units
from specviz.choice.bandit import SwitchSettings
from specviz.choice.features import TEXT_STATS, pooled_states, repeated_share, text_stats
from specviz.choice.policy import (ArmPolicy, fit_best_arm, fit_encoder, fit_reinforce, fit_values, gate,
                                   mean_reward)
from specviz.drafters.model import ModelDrafter, chain_builder
from specviz.drafters.ngram import NgramDrafter
from specviz.drafters.prompt_lookup import PromptLookupDrafter
from specviz.engine import Engine, Settings
from specviz.events import RunStarted, StepStarted
from specviz.verify import verify_sampling

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- the policy on synthetic bandits

def synthetic(n=300, dims=6, seed=0):
    """Contexts x and rewards: arm 1 pays where x0 > 0, arm 2 where x0 <= 0, arm 0 (AR) always 1."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dims, generator=gen)
    high = (x[:, 0] > 0).float()
    rewards = torch.stack([torch.ones(n), 0.6 + 1.4 * high, 0.6 + 1.4 * (1 - high)], 1)
    return x, rewards


def probs_of(weight, bias, x):
    return torch.softmax(x @ weight.T + bias, -1)


def test_reinforce_moves_probability_to_the_rewarded_arm():
    x, rewards = synthetic()
    before = probs_of(torch.zeros(3, x.shape[1]), torch.zeros(3), x)
    w, b = fit_reinforce(x, rewards, seed=0, epochs=60)
    after = probs_of(w, b, x)
    best = rewards.argmax(1)
    p_best_before = before.gather(1, best[:, None]).mean()
    p_best_after = after.gather(1, best[:, None]).mean()
    print(f"probability of the best arm: {p_best_before:.2f} -> {p_best_after:.2f}")
    assert p_best_after > 0.8 > p_best_before
    oracle = float(rewards.max(1).values.mean())
    assert mean_reward(after, rewards) >= 0.95 * oracle


def test_reinforce_is_deterministic_for_a_seed_and_differs_across_seeds():
    x, rewards = synthetic()
    w1, b1 = fit_reinforce(x, rewards, seed=3, epochs=5)
    w2, b2 = fit_reinforce(x, rewards, seed=3, epochs=5)
    w3, _ = fit_reinforce(x, rewards, seed=4, epochs=5)
    assert torch.equal(w1, w2) and torch.equal(b1, b2)
    assert not torch.equal(w1, w3)


@pytest.mark.parametrize("fit", [fit_reinforce, fit_best_arm])
def test_where_plain_decoding_is_best_the_policy_picks_it(fit):
    x, rewards = synthetic()
    rewards[:, 1:] = 0.7 + 0.25 * rewards[:, 1:] / rewards[:, 1:].max()  # every drafter below 1x
    w, b = fit(x, rewards, seed=0, epochs=60)
    assert (probs_of(w, b, x).argmax(1) == 0).all()


def test_supervised_baseline_learns_the_best_arm():
    x, rewards = synthetic()
    w, b = fit_best_arm(x, rewards, seed=0, epochs=60)
    assert (probs_of(w, b, x).argmax(1) == rewards.argmax(1)).float().mean() > 0.95


def test_the_gate_keeps_the_default_unless_a_pick_clears_the_margin():
    values = torch.tensor([[1.0, 1.5, 1.55], [1.0, 1.5, 1.8], [1.0, 2.0, 1.2]])
    picks = torch.tensor([2, 2, 0])
    assert gate(picks, values, 1, 0.1).tolist() == [1, 2, 1]  # +0.05 stays, +0.3 leaves, a loss stays
    assert gate(picks, values, 1, 0.0).tolist() == [2, 2, 1]
    assert gate(picks, values, 1, float("inf")).tolist() == [1, 1, 1]


def test_cross_validation_keeps_the_best_arm_where_features_say_nothing_and_leaves_it_where_they_do():
    from specviz.choice.train import cross_validated_margin

    gen = torch.Generator().manual_seed(0)
    n = 200
    states, stats = torch.randn(n, 8, generator=gen), torch.randn(n, len(TEXT_STATS), generator=gen)
    # arm 1 pays 1.6; arm 2 pays 1.3 +- 0.6 at random: no feature predicts when it wins, so out of fold
    # no margin gains on staying (in-sample, a policy fitted to the noise would)
    noise = torch.stack([torch.ones(n), torch.full((n,), 1.6), 1.3 + 0.6 * torch.randn(n, generator=gen)], 1)
    margin, means = cross_validated_margin(states, stats, noise, "reinforce", "both", epochs=30)
    assert means[float("inf")] == pytest.approx(1.6) and max(means.values()) < 1.61
    # now the first text statistic says when arm 2 pays 2.4 (and 0.8 otherwise): leaving pays
    told = noise.clone()
    told[:, 2] = torch.where(stats[:, 0] > 0, 2.4, 0.8)
    margin, means = cross_validated_margin(states, stats, told, "reinforce", "both", epochs=30)
    assert margin < 0.3 and means[margin] > means[float("inf")] + 0.2


def test_text_statistics_and_pooling():
    assert repeated_share([1, 2, 3, 1, 2, 3], 2) == pytest.approx(2 / 5)
    stats = text_stats([1, 2, 3, 1, 2, 3], "def f(x):\n    return x[0]\n")
    assert len(stats) == len(TEXT_STATS) and stats[TEXT_STATS.index("indented")] == pytest.approx(1 / 3)
    h = torch.arange(6.0).reshape(3, 2)
    assert pooled_states(h).tolist() == [2.0, 3.0, 4.0, 5.0]


def test_policy_file_round_trip(tmp_path):
    states, stats = torch.randn(20, 8), torch.randn(20, len(TEXT_STATS))
    enc = fit_encoder(states, stats, hidden_dims=4)
    x = enc(states, stats)
    w, b = fit_best_arm(x, torch.rand(20, 3), epochs=3)
    policy = ArmPolicy(["none", "pld:chain:8", "ngram:chain:8"], enc, w, b, "supervised", [1.0, 1.2, 1.1],
                       [0.0, 0.01, 0.02], [(1.0, 0.05), (4.0, 0.06)], {"prompts": 20},
                       fit_values(x, torch.rand(20, 3)), "pld:chain:8", float("inf"))
    again = ArmPolicy.load(policy.save(tmp_path / "p.safetensors"))
    assert again.arms == policy.arms and again.curve == policy.curve and again.card == {"prompts": 20}
    assert again.default_arm == "pld:chain:8" and again.margin == float("inf")
    assert torch.allclose(again.probs(states[0], stats[0]), policy.probs(states[0], stats[0]))
    assert torch.allclose(again.expected(states[0], stats[0]), policy.expected(states[0], stats[0]))


def test_the_value_model_predicts_each_arms_reward():
    x, rewards = synthetic()
    linear = torch.stack([torch.ones(len(x)), 1.2 + 0.3 * x[:, 0], 0.9 - 0.2 * x[:, 1]], 1)
    v = fit_values(x, linear, ridge=1e-6)
    assert torch.allclose(torch.cat([x, torch.ones(len(x), 1)], 1) @ v.T, linear, atol=1e-3)


def test_step_units_read_the_cost_curve():
    curve = [(1.0, 0.05), (5.0, 0.07), (9.0, 0.09)]
    assert step_units(curve, 1) == 1.0
    assert step_units(curve, 3) == pytest.approx(0.06 / 0.05)
    assert step_units(curve, 40) == pytest.approx(0.09 / 0.05)
    assert step_units([], 7) == 1.0


# ---- `auto` in the engine

VOCAB = 32


def tiny_policy(arms: list[str], state_dims: int, favour: str, seed: int = 0, text_only: bool = False) -> ArmPolicy:
    """A policy that prefers `favour` (by its bias) over a fitted encoder of random states (text_only:
    of the text statistics alone, so `auto` chooses before the prefill)."""
    gen = torch.Generator().manual_seed(seed)
    enc = fit_encoder(torch.randn(16, state_dims, generator=gen), torch.randn(16, len(TEXT_STATS), generator=gen),
                      0 if text_only else 4)
    bias = torch.tensor([2.0 if a == favour else 0.0 for a in arms])
    return ArmPolicy(arms, enc, torch.zeros(len(arms), enc.dims), bias, "test", [1.0] * len(arms),
                     [0.0] * len(arms), [(1.0, 0.05), (3.0, 0.06), (9.0, 0.08)])


def auto_drafter(target, drafter_model, favour="pld", every: int | None = 1, vocab=VOCAB, seed=0,
                 text_only=False) -> AutoDrafter:
    arms = [Arm("none", None), Arm("pld:chain:3", PromptLookupDrafter(vocab, k=3, min_ngram=1)),
            Arm("model:chain:2", ModelDrafter(drafter_model, chain_builder(2))),
            Arm("ngram:chain:4", NgramDrafter(vocab, None, budget=4, min_expected=0.0))]
    policy = tiny_policy([a.label for a in arms], 2 * target.config.hidden_size, favour, text_only=text_only)
    switch = SwitchSettings(every=every, decay=0.5, prior_weight=0.5, noise=1.0, seed=seed) if every else None
    return AutoDrafter(arms, policy, None, switch)


PROMPTS = [[1, 2, 3, 4, 5, 1, 2, 3], [7, 7, 7, 7, 7, 7], [3, 9, 27, 11, 3, 9, 4, 30, 2, 3, 9], list(range(20))]


@pytest.mark.parametrize("text_only", [False, True])
@pytest.mark.parametrize("favour", ["pld:chain:3", "model:chain:2", "none"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_auto_with_switching_equals_plain_decoding(tiny_target, tiny_drafter, prompt, favour, text_only):
    settings = Settings(max_new_tokens=40)
    want = Engine(tiny_target, str).run(prompt, settings).token_ids
    drafter = auto_drafter(tiny_target, tiny_drafter, favour, text_only=text_only)
    run = Engine(tiny_target, str, drafter).run(prompt, settings)
    assert run.token_ids == want
    steps = [ev for ev in run.events if isinstance(ev, StepStarted)]
    if text_only:  # chosen from the prompt's text: the choice drafts on the prefill already
        assert steps[0].arm == favour and steps[0].choice["arm"] == favour
    else:  # the prefill, then the policy's choice
        assert steps[0].arm == "none" and steps[1].arm == favour and steps[1].choice["by"] == "policy"


def test_greedy_auto_switches_mid_answer_and_records_it(tiny_target, tiny_drafter):
    run = Engine(tiny_target, str, auto_drafter(tiny_target, tiny_drafter, "pld:chain:3")).run(
        PROMPTS[0], Settings(max_new_tokens=60))
    start = run.events[0]
    assert isinstance(start, RunStarted) and start.policy["online"] and start.policy["every"] == 1
    steps = [ev for ev in run.events if isinstance(ev, StepStarted)]
    assert len({ev.arm for ev in steps[1:]}) >= 2  # it switched at least once
    first = steps[1].choice
    assert first["by"] == "policy" and first["arm"] == "pld:chain:3"
    assert sum(first["probs"].values()) == pytest.approx(1.0, abs=1e-3)
    switched = [ev.choice for ev in steps[2:] if ev.choice]
    assert switched and all(c["by"] == "online" and c["arm"] != c["from"] for c in switched)
    assert all(ev.choice is None or ev.arm == ev.choice["arm"] for ev in steps)
    loaded = trace.loads(trace.dumps(run.events))  # the choices survive a trace
    assert [e.arm for e in loaded if isinstance(e, StepStarted)] == [e.arm for e in steps]
    assert loaded[0].policy == start.policy


@pytest.mark.parametrize("margin,chosen", [(0.5, "none"), (0.1, "pld:chain:3"), (None, "pld:chain:3")])
def test_auto_keeps_the_default_arm_unless_the_pick_clears_the_margin(tiny_target, tiny_drafter, margin, chosen):
    drafter = auto_drafter(tiny_target, tiny_drafter, "pld:chain:3", every=None)
    policy = drafter.policy  # favours pld (by its bias); expected: pld 1.3x, the default (none) 1.0x
    policy.value_weight = torch.zeros(len(policy.arms), policy.encoder.dims + 1)
    policy.value_weight[:, -1] = torch.tensor([1.0, 1.3, 0.9, 0.8])
    policy.default_arm, policy.margin = "none", margin
    run = Engine(tiny_target, str, drafter).run(PROMPTS[0], Settings(max_new_tokens=20))
    first = [ev for ev in run.events if isinstance(ev, StepStarted)][1].choice
    assert first["arm"] == chosen and first["probs"]["pld:chain:3"] > 0.5
    assert ("margin of 0.5" in first["reason"]) == (margin == 0.5)
    assert run.token_ids == Engine(tiny_target, str).run(PROMPTS[0], Settings(max_new_tokens=20)).token_ids


def test_auto_is_deterministic_for_a_seed(tiny_target, tiny_drafter):
    settings = Settings(max_new_tokens=30, temperature=1.0, seed=5)

    def once():
        run = Engine(tiny_target, str, auto_drafter(tiny_target, tiny_drafter, "model:chain:2"),
                     rule="sampling").run(PROMPTS[2], settings)
        return run.token_ids, [ev.arm for ev in run.events if isinstance(ev, StepStarted)]

    assert once() == once()


def test_an_arm_that_cannot_be_built_is_skipped_with_a_note(tiny_target):
    from specviz.drafters.registry import DraftRequest

    def make(r):
        if r.name == "eagle3":
            raise ValueError("no trained head at assets/drafters/eagle3-x.safetensors")
        return PromptLookupDrafter(VOCAB, k=r.draft_len)

    arms, notes = build_arms(["none", "eagle3:chain:4", "pld:chain:8"], DraftRequest("auto", tiny_target, "x", 4, "chain"),
                             make)
    assert [a.label for a in arms] == ["none", "pld:chain:8"]
    assert notes == ["skipped eagle3:chain:4: no trained head at assets/drafters/eagle3-x.safetensors"]


def test_without_a_trained_policy_auto_decodes_plainly(tiny_target, tmp_path):
    from specviz.drafters.registry import DraftRequest

    request = DraftRequest("auto", tiny_target, "tiny", 4, "chain")
    drafter = make_auto_drafter(request, lambda r: PromptLookupDrafter(VOCAB, k=r.draft_len),
                                policy_file=tmp_path / "none.safetensors", decode=str)
    run = Engine(tiny_target, str, drafter).run(PROMPTS[0], Settings(max_new_tokens=10))
    steps = [ev for ev in run.events if isinstance(ev, StepStarted)]
    # an untrained policy reads no states: it decides before the prefill
    assert {ev.arm for ev in steps} == {"none"} and "no trained policy" in steps[0].choice["reason"]
    assert "no trained drafter policy" in run.events[0].policy["skipped"][0]


# ---- sampling stays exact under switching (context-dependent target, as in test_stop_rules)

CTX_VOCAB, N, SAMPLES = 6, 3, 8_000
CTX_PROMPT = [1, 2, 1, 2]


@pytest.fixture(scope="module")
def context_pair():
    target = context_llama(CTX_VOCAB)
    return target, perturbed(target, 0.5, seed=4)


def context_auto(target, drafter_model, text_only=False):
    arms = [Arm("pld:chain:3", PromptLookupDrafter(CTX_VOCAB, k=3, min_ngram=1)),
            Arm("model:chain:2", ModelDrafter(drafter_model, chain_builder(2))), Arm("none", None)]
    policy = tiny_policy([a.label for a in arms], 2 * target.config.hidden_size, "pld:chain:3", text_only=text_only)
    return AutoDrafter(arms, policy, None, SwitchSettings(every=1, decay=0.5, prior_weight=0.5, noise=1.0))


@pytest.mark.parametrize("text_only", [False, True])
def test_auto_sampling_with_switching_matches_a_context_dependent_target(context_pair, text_only):
    target, drafter_model = context_pair
    engine = Engine(target, str, context_auto(target, drafter_model, text_only), rule="sampling")
    switched = 0
    for seed in range(200):  # the switch really switches inside the tokens the test compares
        run = engine.run(CTX_PROMPT, Settings(N, temperature=1.0, seed=seed))
        switched += len({ev.arm for ev in run.events if isinstance(ev, StepStarted) and ev.step >= 1}) >= 2
    assert switched >= 50, switched
    pvalue = pvalue_against_exact(engine, CTX_PROMPT, N, Settings(N, temperature=1.0), SAMPLES)
    print(f"auto with switching, T=1: p={pvalue:.3g}")
    assert pvalue > 1e-3


def test_a_broken_verifier_fails_the_same_auto_test(context_pair):
    target, drafter_model = context_pair
    broken = partial(verify_sampling, residual=lambda p, q: p)  # samples p, not the residual, after a rejection
    engine = Engine(target, str, context_auto(target, drafter_model), rule=broken)
    pvalue = pvalue_against_exact(engine, CTX_PROMPT, N, Settings(N, temperature=1.0), SAMPLES)
    print(f"auto with a broken verifier: p={pvalue:.3g}")
    assert pvalue < 1e-3


def test_the_choice_view_shows_the_choice_switches_and_arms(tiny_target, tiny_drafter):
    from specviz.views.choice_view import choice_figure, choice_markdown, choices

    run = Engine(tiny_target, str, auto_drafter(tiny_target, tiny_drafter, "pld:chain:3")).run(
        PROMPTS[0], Settings(max_new_tokens=40))
    c = choices(run.events)
    assert c.first["arm"] == "pld:chain:3" and c.arms[0] == "none" and c.switches
    text = choice_markdown(trace.loads(trace.dumps(run.events)))  # a replay renders the same
    assert text == choice_markdown(run.events)
    assert "Chosen: **pld:chain:3**" in text and "→" in text and "Steps drafted by" in text
    assert "not measured" in text  # no AR run of the prompt and no recorded forward times: it says so
    plain = Engine(tiny_target, str).run(PROMPTS[0], Settings(max_new_tokens=40)).metrics
    from specviz.views.steps import decode_metrics

    want = decode_metrics(run.events).tokens_per_s / plain.tokens_per_s
    assert f"**{want:.2f}×** plain decoding, measured" in choice_markdown(run.events, reference=plain)
    fig = choice_figure(run.events)
    assert len(fig.data) == 3 and list(fig.data[0].x) == list(c.first["probs"])
    assert choices(Engine(tiny_target, str).run(PROMPTS[0], Settings(max_new_tokens=4)).events) is None


# ---- collect (resumable) and train-policy on a tiny model with SmolLM2's tokenizer

def tiny_target_dir(tmp_path):
    import shutil

    from specviz.models import cache_root

    tok = cache_root() / "hf" / "smollm2-135m"
    if not (tok / "tokenizer.json").exists():
        pytest.skip("SmolLM2's tokenizer is not in the cache")
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    d = tmp_path / "tiny"
    LlamaForCausalLM(cfg).eval().save_pretrained(d)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tok / name).exists():
            shutil.copy(tok / name, d)
    return str(d)


TRAINING = [{"category": c, "prompt": p, "source": "test"} for c, p in [
    ("code", "Write a Python function that adds two numbers. def add(a, b): return a + b"),
    ("writing", "Write a short poem about the sea and the sky."),
    ("summarization", "Summarize: the cat sat on the mat. The cat sat on the mat. The dog did not."),
    ("qa", "What is a heat pump, in one sentence?"),
    ("math", "What is 17 times 23? Show the steps."),
    ("translation", "Translate into French: the weather is nice today."),
]]


def test_training_prompts_never_hold_an_evaluation_prompt(monkeypatch):
    from specviz import collect
    from specviz.prompts import evaluation_prompts
    from specviz.train import sources

    evaluation = evaluation_prompts()[0]
    monkeypatch.setattr(sources, "wide_instructions", lambda seed=0: TRAINING + [
        {"category": "qa", "prompt": evaluation, "source": "leak"}])
    got = [r["prompt"] for r in collect.training_prompts(0)]
    assert evaluation not in got and set(got) <= {r["prompt"] for r in TRAINING} and len(got) >= 4


def test_collect_leaves_out_the_instructions_a_trained_head_learned_from(tmp_path, monkeypatch):
    """Logged on its own training instructions a head scores its training accuracy, and the policy learns
    to overrate its arms; collect skips the instructions whose responses fill the shards the head saw."""
    from safetensors.torch import save_file

    from specviz import collect
    from specviz.drafters import feature_head
    from specviz.train.data import BATCH, make_jobs

    rows = [{"category": "qa", "prompt": "x" * (10 + i % 37), "source": "t"} for i in range(3 * BATCH)]
    jobs = make_jobs([len(r["prompt"]) for r in rows], 0, BATCH)
    first = {j["prompt"] for j in jobs if j["shard"] == 0}
    kept = collect.unseen_instructions(rows, 0, 1)
    assert 0 < len(kept) == len(rows) - len(first)
    assert {i for i, r in enumerate(rows) if any(r is k for k in kept)}.isdisjoint(first)
    assert collect.unseen_instructions(rows, 0, 0) == rows
    head = tmp_path / "eagle3-t.safetensors"
    save_file({"w": torch.zeros(1)}, str(head), metadata={"shards": "20+3"})  # a corpus set, then 3 v2 shards
    monkeypatch.setattr(feature_head, "default_weights", lambda target, kind: tmp_path / f"{kind}-t.safetensors")
    assert collect.v2_shards_seen("t", ["none", "eagle3+ngram:dynamic:2"]) == 3
    assert collect.v2_shards_seen("t", ["none", "pld:chain:8", "eagle:chain:4"]) == 0  # no EAGLE-1 head here


def test_collect_resumes_and_train_policy_writes_a_policy(tmp_path, monkeypatch):
    from specviz import collect
    from specviz.choice.train import train_policy
    from specviz.paths import DRAFTERS as WEIGHTS

    target = tiny_target_dir(tmp_path)
    monkeypatch.setattr(collect, "training_prompts",
                        lambda limit, seed=0, seen=0: TRAINING[:limit] if limit else TRAINING)
    out = tmp_path / "out"
    arms = ["none", "pld:chain:8", "ngram:chain:4", "eagle3:chain:4"]
    path = collect.collect(target, arms, 4, 8, out, log=lambda s: None)
    rows = collect.read_outcomes(path)
    assert len(rows) == 4 and set(rows[0]["arms"]) == {"none", "pld:chain:8", "ngram:chain:4"}
    assert all(o["same_as_ar"] for r in rows for o in r["arms"].values())  # every arm exact
    card = json.loads((out / "card.json").read_text())
    assert card["prompts"] == 4 and "eagle3" in card["skipped"][0] and str(WEIGHTS) in card["skipped"][0]
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])  # a torn last line
    assert len(collect.read_outcomes(path)) == 3
    collect.collect(target, arms, 6, 8, out, log=lambda s: None)  # resumes: the torn prompt and two new ones
    rows = collect.read_outcomes(path)
    assert len(rows) == 6 and [r["key"] for r in rows[:3]] == [json.loads(x)["key"] for x in lines[:3]]
    policy = train_policy(rows, "reinforce", epochs=5)
    assert policy.arms == ["none", "pld:chain:8", "ngram:chain:4"] and len(policy.curve) >= 1
    # a prompt logged before an arm existed: named arms keep the arm and leave that prompt out
    from specviz.choice.train import table

    older = [dict(rows[0], arms={k: v for k, v in rows[0]["arms"].items() if k != "ngram:chain:4"})] + rows[1:]
    assert table(older)[0] == ["none", "pld:chain:8"]
    arms_kept, kept, rewards, _, _ = table(older, policy.arms)
    assert arms_kept == policy.arms and len(kept) == 5 and rewards.shape == (5, 3)
    again = ArmPolicy.load(policy.save(tmp_path / "auto.safetensors"))
    assert again.probs(collect.decode_states(rows[0]["states"]), torch.tensor(rows[0]["stats"])).shape == (3,)
    text_only = ArmPolicy.load(train_policy(rows, "reinforce", epochs=5, feature_set="text only").save(
        tmp_path / "text.safetensors"))  # the ablation's "text only" shipped: no state components
    assert text_only.encoder.basis.shape[1] == 0 and text_only.encoder.use_text
    assert text_only.probs(collect.decode_states(rows[0]["states"]), torch.tensor(rows[0]["stats"])).shape == (3,)


@pytest.mark.parametrize("fast_path", [True, False])
def test_auto_pools_the_same_states_as_collect(tiny_target, tiny_drafter, fast_path):
    from specviz.choice.features import prefill_states

    drafter = auto_drafter(tiny_target, tiny_drafter, every=None)
    seen = []
    real = drafter.policy.probs
    drafter.policy.probs = lambda states, stats: seen.append((states, stats)) or real(states, stats)
    Engine(tiny_target, str, drafter, fast_path=fast_path).run(PROMPTS[2], Settings(max_new_tokens=4))
    assert len(seen) == 1
    assert torch.allclose(seen[0][0], prefill_states(tiny_target, PROMPTS[2], fast_path), atol=1e-5)
    assert seen[0][1].tolist() == pytest.approx(text_stats(PROMPTS[2], ""))


def test_arms_sitting_out_are_scored_against_the_text_the_target_committed(tiny_target, tiny_drafter):
    drafter = auto_drafter(tiny_target, tiny_drafter, "none", every=4)
    pld = 1  # "pld:chain:3"
    text = [1, 2, 3, 4, 1, 2]
    drafter.switch.reset()
    drafter.greedy, drafter.active = True, 0
    drafter._draft_shadows(text)  # pld drafts [3, 4, 1] (it copies what followed "1 2"); ngram drafts too
    shadow, seconds = next((tree, s) for i, _, tree, s in drafter.shadows if i == pld)
    assert shadow.tokens == [3, 4, 1]
    drafter._score_shadows(text + [3, 4])  # too early: the draft's positions are not all committed yet
    assert drafter.switch.count[pld] == 0
    drafter._score_shadows(text + [3, 4, 9, 9])  # the target went 3, 4, then elsewhere: 2 accepted
    assert drafter.switch.count[pld] == 1
    assert drafter.switch.total[pld] == pytest.approx(drafter._reward(pld, 3, 2, seconds))
    assert all(i != pld for i, *_ in drafter.shadows)


@pytest.mark.parametrize("layers", [(-1,), (1, -1)])
def test_online_auto_returns_to_a_head_it_left_and_the_head_kept_up(tiny_target, layers):
    """An arm that reads the target's states follows the text while another arm drafts: the switch can
    come back to it, its drafts then read the states of every committed position, and output stays AR's."""
    from specviz.drafters.feature_head import FeatureDrafter, FeatureHead, HeadConfig

    torch.manual_seed(3)
    head = FeatureHead(HeadConfig(hidden=tiny_target.config.hidden_size, heads=4, kv_heads=2, intermediate=16,
                                  vocab=VOCAB, layers=layers)).eval()
    eagle = FeatureDrafter(head, tiny_target, chain_builder(3), "eagle")
    arms = [Arm("none", None), Arm("pld:chain:3", PromptLookupDrafter(VOCAB, k=3, min_ngram=1)),
            Arm("eagle:chain:3", eagle)]
    policy = tiny_policy([a.label for a in arms], 2 * tiny_target.config.hidden_size, "eagle:chain:3")
    drafter = AutoDrafter(arms, policy, None, SwitchSettings(every=1, decay=0.5, prior_weight=0.5, noise=2.0))
    settings = Settings(max_new_tokens=60)
    for prompt in PROMPTS:
        want = Engine(tiny_target, str).run(prompt, settings).token_ids
        run = Engine(tiny_target, str, drafter).run(prompt, settings)
        assert run.token_ids == want
        arms_by_step = [ev.arm for ev in run.events if isinstance(ev, StepStarted)]
        returned = [i for i in range(2, len(arms_by_step))
                    if arms_by_step[i] == "eagle:chain:3" and "eagle:chain:3" not in arms_by_step[i - 1:i]]
        assert returned, arms_by_step  # the head drafted again after another arm had drafted
        eagle._catch_up()
        text = prompt + run.token_ids[:-1]  # the last token's states come with the next step
        with torch.no_grad():
            states = tiny_target(torch.tensor([text]), output_hidden_states=True).hidden_states
            fused = torch.cat([states[layer][0] for layer in layers], -1)
            if head.config.fused:
                fused = head.fuse(fused)
        assert eagle.lm.known() >= len(text)  # (the last step may commit past the token budget)
        assert torch.allclose(eagle.lm.feats[:len(text)], fused, atol=1e-4)  # every committed position's states
