"""Greedy speculative decoding on the real models equals autoregressive decoding.

Batched (multi-token) forwards can differ from one-token forwards in the last float bits. Where
outputs diverge, the test requires the target's top-2 logit gap at that position to be within
numerical noise, and reports it; it never loosens the comparison anywhere else.
"""
import pytest
import torch

from specviz import models
from specviz.api import build_engine, load_model, make_drafter
from specviz.bench import first_divergence, top2_gap
from specviz.engine import Engine, Settings

NOISE = 1e-3  # logit units; fp32 batched-vs-single differences measured here are ~1e-5
PROMPTS = [
    "Summarize: The council voted to build bicycle lanes on Main Street for a one-year trial.",
    "Write a Python function that returns the factorial of n.",
    "What is the capital of Japan? Answer in one sentence.",
    "Continue the list: Monday, Tuesday, Wednesday,",
]


def assert_same_or_near_tie(model, prompt_ids, want, got, label):
    at = first_divergence(want, got)
    if at is None:
        return 0
    assert at < min(len(want), len(got)), f"{label}: lengths differ without a token divergence"
    gap = top2_gap(model, prompt_ids + want[:at])
    print(f"{label}: diverged at token {at}, target top-2 gap {gap:.2e}")
    assert gap < NOISE, f"{label}: diverged at token {at} where the target's top-2 gap is {gap:.3g}"
    return 1


def needs(*names):
    missing = [n for n in names if models.status(n) != "ready"]
    return pytest.mark.skipif(bool(missing), reason=f"not fetched: {missing} (make models)")


@needs("smollm2-135m")
@pytest.mark.parametrize("drafter", ["pld", "ngram-tree", "smollm2-135m"])
def test_smollm2_greedy_speculative_equals_ar(drafter):
    spec = build_engine("smollm2-135m", drafter, draft_len=5)
    model = spec.engine.target.model
    ar = Engine(model, spec.engine.decode, None, spec.engine.eos_ids)
    for prompt in PROMPTS:
        ids = spec.encode(prompt)
        want = ar.run(ids, Settings(max_new_tokens=48)).token_ids
        got = spec.engine.run(ids, Settings(max_new_tokens=48)).token_ids
        assert_same_or_near_tie(model, ids, want, got, f"{drafter} / {prompt[:30]}")


@needs("smollm2-135m")
def test_smollm2_engine_ar_equals_transformers_generate():
    spec = build_engine("smollm2-135m", "none")
    model = spec.engine.target.model
    for prompt in PROMPTS[:2]:
        ids = spec.encode(prompt)
        got = spec.engine.run(ids, Settings(max_new_tokens=32)).token_ids
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                                 temperature=None, top_p=None, top_k=None)
        want = out[0, len(ids):].tolist()
        assert_same_or_near_tie(model, ids, want, got, f"hf / {prompt[:30]}")


@needs("qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b")
def test_qwen_pair_greedy_speculative_equals_ar():
    spec = build_engine("qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", draft_len=4)
    model = spec.engine.target.model
    ar = Engine(model, spec.engine.decode, None, spec.engine.eos_ids)
    ids = spec.encode("Write a Python function is_prime(n).")
    want = ar.run(ids, Settings(max_new_tokens=32)).token_ids
    result = spec.engine.run(ids, Settings(max_new_tokens=32))
    assert_same_or_near_tie(model, ids, want, result.token_ids, "qwen 1.5b + 0.5b")
    assert result.metrics.acceptance_rate > 0.5  # code: the 0.5B agrees with the 1.5B most of the time
    load_model.cache_clear()  # free ~9 GB before the next tests


@needs("smollm2-135m", "qwen2.5-coder-0.5b")
def test_drafter_with_another_vocabulary_is_refused():
    target, _, _ = load_model("smollm2-135m")
    with pytest.raises(ValueError, match="vocabulary"):
        make_drafter("qwen2.5-coder-0.5b", target)


@needs("smollm2-135m")
def test_every_registered_drafter_runs_on_a_long_prompt():
    """Each registered drafter (the trained ones with their shipped weights) on a 2,000+-token prompt:
    it runs, drafts, and stays exact. (The EAGLE head's cache once grew by at most its own size, and
    a 1,528-token prompt overflowed it.)"""
    from specviz.drafters.registry import DRAFTERS, DraftRequest, make_drafter as make
    from specviz.drafters.feature_head import default_weights

    spec = build_engine("smollm2-135m", "none")
    model = spec.engine.target.model
    passage = " ".join(f"Item {i}: the {['red', 'green', 'blue'][i % 3]} box holds {i * 7 % 13} stones." for i in range(160))
    ids = spec.encode(passage + "\n\nHow many stones does the box of item 41 hold? Then list items 42 to 45.")
    assert len(ids) > 2000
    ar = Engine(model, spec.engine.decode, None, spec.engine.eos_ids)
    want = ar.run(ids, Settings(max_new_tokens=12)).token_ids
    ran = []
    for name in DRAFTERS:
        if name == "none" or (name.startswith("eagle") and not default_weights("smollm2-135m", name.split("+")[0]).exists()):
            continue
        shape = "chain" if DRAFTERS.get(name).takes_shape else ""
        drafter = make(DraftRequest(name, model, "smollm2-135m", draft_len=4, shape=shape))
        got = Engine(model, spec.engine.decode, drafter, spec.engine.eos_ids).run(ids, Settings(max_new_tokens=12))
        assert_same_or_near_tie(model, ids, want, got.token_ids, f"{name} on a {len(ids)}-token prompt")
        ran.append(name)
    assert {"pld", "ngram", "eagle", "eagle3+ngram", "del", "distill-kd"} <= set(ran), ran
