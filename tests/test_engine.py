"""Greedy exactness and KV-cache bookkeeping on tiny random-weight models."""
import pytest
import torch
from conftest import decode

from specviz.drafters.model import ModelDrafter, chain_builder
from specviz.drafters.prompt_lookup import PromptLookupDrafter, find_continuation
from specviz.engine import Engine, Settings
from specviz.lm import CachedLM

PROMPTS = [[1, 5, 7, 3, 9, 2, 5, 7], [4, 4, 4, 4], [3], list(range(20)) + list(range(10))]


def reference_greedy(model, prompt, n):
    """Greedy decoding by definition: argmax of a full, cache-free forward at every step."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def drafters(target, drafter):
    return [ModelDrafter(drafter, chain_builder(4), "tiny"), ModelDrafter(target, chain_builder(3), "self"),
            ModelDrafter(drafter, chain_builder(1), "k1"), PromptLookupDrafter(target.config.vocab_size, k=5)]


@pytest.mark.parametrize("fast_path", ["1", "0"], ids=["fast", "plain"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_speculative_equals_reference_greedy(tiny_target, tiny_drafter, prompt, fast_path, monkeypatch):
    monkeypatch.setenv("SPECVIZ_FAST_PATH", fast_path)  # target and model drafters (CachedLM's automatic choice)
    want = reference_greedy(tiny_target, prompt, 40)
    assert Engine(tiny_target, decode).run(prompt, Settings(max_new_tokens=40)).token_ids == want
    for drafter in drafters(tiny_target, tiny_drafter):
        result = Engine(tiny_target, decode, drafter).run(prompt, Settings(max_new_tokens=40))
        assert result.token_ids == want, drafter.name
        assert result.metrics.tokens == 40


def test_drafter_that_is_the_target_accepts_everything(tiny_target):
    result = Engine(tiny_target, decode, ModelDrafter(tiny_target, chain_builder(3))).run([1, 2, 3], Settings(max_new_tokens=40))
    assert result.metrics.acceptance_rate == 1.0
    assert result.metrics.tau == 4.0


def test_eos_stops_and_max_new_tokens_truncates(tiny_target, tiny_drafter):
    want = reference_greedy(tiny_target, PROMPTS[0], 40)
    eos = want[7]
    result = Engine(tiny_target, decode, ModelDrafter(tiny_drafter, chain_builder(4)), eos_ids={eos}).run(PROMPTS[0], Settings(max_new_tokens=40))
    assert result.token_ids == want[: want.index(eos) + 1] and result.stop_reason == "eos"
    result = Engine(tiny_target, decode, ModelDrafter(tiny_target, chain_builder(4))).run(PROMPTS[0], Settings(max_new_tokens=6))
    assert result.token_ids == want[:6] and result.stop_reason == "length"


def full_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "plain"])
def test_kv_rollback_matches_a_fresh_forward(tiny_target, fast_path):
    lm = CachedLM(tiny_target, fast_path)
    committed = [1, 5, 7, 3]
    root, nodes = lm.forward(committed, [9, 2, 6], [-1, 0, 1])
    ref = full_logits(tiny_target, committed + [9, 2, 6])
    torch.testing.assert_close(root, ref[3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nodes, ref[4:], atol=1e-5, rtol=1e-5)
    lm.accept([0])  # keep 9, drop 2 and 6
    assert lm.cache_length() == 5 and lm.lin == committed + [9]
    root, _ = lm.forward(committed + [9, 4])  # feeds only the new token
    torch.testing.assert_close(root, full_logits(tiny_target, committed + [9, 4])[-1], atol=1e-5, rtol=1e-5)
    # a rewind to an earlier point crops the cache instead of trusting stale entries
    root, _ = lm.forward([1, 5, 8])
    assert lm.cache_length() == 3
    torch.testing.assert_close(root, full_logits(tiny_target, [1, 5, 8])[-1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "plain"])
def test_tree_forward_matches_sequential_forwards_and_compacts(tiny_target, fast_path):
    lm = CachedLM(tiny_target, fast_path)
    committed = [1, 5, 7, 3]
    # root -> a(9) -> c(4); root -> b(2) -> d(6), b -> e(8)
    tokens, parents = [9, 2, 4, 6, 8], [-1, -1, 0, 1, 1]
    root, nodes = lm.forward(committed, tokens, parents)
    paths = {0: [9], 1: [2], 2: [9, 4], 3: [2, 6], 4: [2, 8]}
    for node, path in paths.items():
        torch.testing.assert_close(nodes[node], full_logits(tiny_target, committed + path)[-1], atol=1e-5, rtol=1e-5)
    lm.accept([1, 4])  # path b -> e is not a prefix of the node order: needs compaction
    assert lm.lin == committed + [2, 8] and lm.cache_length() == 6
    root, _ = lm.forward(committed + [2, 8, 3])
    torch.testing.assert_close(root, full_logits(tiny_target, committed + [2, 8, 3])[-1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "plain"])
def test_incremental_tree_extension(tiny_target, fast_path):
    lm = CachedLM(tiny_target, fast_path)
    committed = [1, 5, 7, 3]
    lm.forward(committed, [9, 2], [-1, -1])
    _, nodes = lm.forward(committed, [4, 6], [1, 1])  # two children of node 1 (token 2)
    torch.testing.assert_close(nodes[0], full_logits(tiny_target, committed + [2, 4])[-1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nodes[1], full_logits(tiny_target, committed + [2, 6])[-1], atol=1e-5, rtol=1e-5)


def test_find_continuation_prefers_longest_and_latest_match():
    ids = [1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 2, 3]
    assert find_continuation(ids, 3, max_ngram=3, min_ngram=2) == [7, 8, 5]
    assert find_continuation([1, 2, 3], 3, 3, 2) == []


def test_prompt_lookup_tree_merges_matches_into_a_trie():
    from specviz.drafters.prompt_lookup import find_continuations, trie

    ids = [5, 6, 1, 2, 5, 6, 3, 4, 5, 6, 1, 9, 5, 6]
    found = find_continuations(ids, 2, max_ngram=2, min_ngram=2, branches=4)
    assert found == [[1, 9], [3, 4], [1, 2]]
    tree = trie(found, budget=8, vocab=10)
    assert tree.tokens == [1, 9, 3, 4, 2] and tree.parents == [-1, 0, -1, 2, 0]
    assert all(float(tree.q_of(i)[t]) == 1.0 for i, t in enumerate(tree.tokens))


def test_greedy_prompt_lookup_tree_equals_reference(tiny_target):
    prompt = [1, 2, 3, 4, 1, 2, 5, 6, 1, 2, 3, 7, 1, 2]
    want = reference_greedy(tiny_target, prompt, 30)
    drafter = PromptLookupDrafter(tiny_target.config.vocab_size, k=6, min_ngram=1, branches=4)
    assert Engine(tiny_target, decode, drafter).run(prompt, Settings(max_new_tokens=30)).token_ids == want


def test_verification_cost_is_split_by_whether_drafts_were_verified(tiny_target):
    """Prompt lookup drafts only where the text repeats: the run has both kinds of forward, and the
    one-position forwards are counted apart (the app's "verification cost" row)."""
    from specviz.events import StepFinished, Verified

    prompt = [3, 1, 4, 1, 5, 9, 2, 6] * 3
    result = Engine(tiny_target, decode, PromptLookupDrafter(tiny_target.config.vocab_size, k=5)).run(
        prompt, Settings(max_new_tokens=30))
    verified = [ev for ev in result.events if isinstance(ev, Verified)]
    seconds = [ev.verify_s for ev in result.events if isinstance(ev, StepFinished)]
    m = result.metrics
    assert m.single_steps == sum(not ev.nodes for ev in verified)
    assert m.single_verify_s == pytest.approx(sum(s for s, ev in zip(seconds, verified) if not ev.nodes))
    assert 0 < m.single_steps < m.steps  # both kinds happened
    assert m.verify_cost_ratio > 0
    assert m.mean_verified_positions == pytest.approx(1 + m.drafted / (m.steps - m.single_steps))
