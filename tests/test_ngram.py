"""The n-gram drafter (counts from a corpus of the target's outputs and from the text so far)."""
import pytest
from test_engine import decode, reference_greedy
from test_lossless_sampling import N_TOKENS, TREE_PROMPT, VOCAB, chi_square

from specviz import corpus
from specviz.bench import read_prompts
from specviz.drafters.ngram import NgramDrafter, NgramTable, best_first_tree, next_tokens
from specviz.engine import Engine, Settings


def table_of(*texts, order=4):
    t = NgramTable(order)
    for ids in texts:
        t.add(list(ids))
    return t


def test_counts_back_off_from_the_longest_seen_context():
    t = table_of([1, 2, 3, 1, 2, 4, 1, 2, 4, 5, 2, 9])
    assert next_tokens([(t, 1.0)], [7, 1, 2], 3) == [(4, 2 / 3), (3, 1 / 3)]  # after (1, 2)
    assert next_tokens([(t, 1.0)], [7, 5, 2], 3) == [(9, 1.0)]  # (7, 5, 2) and then (5, 2) seen once
    assert next_tokens([(t, 1.0)], [8, 8, 8], 3) == []  # nothing ever followed 8


def test_weights_merge_tables_at_the_same_context_length():
    local, corpus_ = table_of([1, 2, 3]), table_of([1, 2, 4, 1, 2, 4])
    assert next_tokens([(local, 1.0), (corpus_, 1.0)], [1, 2], 2)[0][0] == 4
    assert next_tokens([(local, 8.0), (corpus_, 1.0)], [1, 2], 2) == [(3, 0.8), (4, 0.2)]


def test_best_first_tree_spends_the_budget_on_the_likeliest_paths():
    t = table_of([1, 2, 3, 4, 1, 2, 5, 6, 1, 2, 3, 7, 1, 2, 5, 8])
    tree, expected = best_first_tree([(t, 1.0)], [1, 2], budget=4, width=2, vocab=10)
    assert expected == 1.5
    # after (1, 2): 3 or 5 (1/2 each); then 4 or 7 after 3 (1/4 each) before anything deeper
    assert tree.tokens == [3, 5, 4, 7] and tree.parents == [-1, -1, 0, 0]
    assert all(float(tree.q_of(i)[tok]) == 1.0 for i, tok in enumerate(tree.tokens))
    chain, _ = best_first_tree([(t, 1.0)], [1, 2], budget=4, width=1, vocab=10)
    assert chain.parents == [-1, 0, 1, 2]


def test_unlikely_drafts_are_not_worth_a_wide_forward():
    t = table_of([1, 2, 3, 1, 2, 4, 1, 2, 5])
    sure = NgramDrafter(10, t, budget=4, width=4, prior=0.0, min_expected=0.0).propose([1, 2], None, None)
    assert len(sure) == 4
    # 1/3 + 1/3 + 1/3 + (1/3 * 1) ... with a prior of 1 the same tree expects < 2 accepted drafts
    assert len(NgramDrafter(10, t, budget=4, width=4, prior=1.0, min_expected=2.0).propose([1, 2], None, None)) == 0


def test_local_counts_follow_the_text_and_restart_for_a_new_one():
    d = NgramDrafter(10, None, budget=3, prior=0.0, min_expected=0.0)
    assert d.propose([1, 2, 3, 1, 2], None, None).tokens == [3, 1, 2]
    assert d.propose([1, 2, 3, 1, 2, 6, 1, 2], None, None).tokens[0] in (3, 6)
    assert d.propose([4, 5, 4], None, None).tokens == [5, 4, 5]  # nothing left of the first text


@pytest.mark.parametrize("width", [1, 4])
def test_greedy_ngram_decoding_equals_reference(tiny_target, width):
    prompt = [1, 2, 3, 4, 1, 2, 5, 6, 1, 2, 3, 7, 1, 2]
    want = reference_greedy(tiny_target, prompt, 30)
    drafter = NgramDrafter(tiny_target.config.vocab_size, table_of([2, 3, 4, 5] * 5), budget=8, width=width,
                           min_expected=0.5)
    assert Engine(tiny_target, decode, drafter).run(prompt, Settings(max_new_tokens=30)).token_ids == want


def test_ngram_tree_sampling_matches_target_distribution(target):
    drafter = NgramDrafter(VOCAB, None, budget=6, width=3, min_expected=0.0)  # 1 was followed by 2, 4 and 5
    assert len(drafter.propose(TREE_PROMPT, None, None).children(-1)) == 3
    drafter.reset()
    pvalue, tvd = chi_square(Engine(target, str, drafter, rule="sampling"), Settings(N_TOKENS, temperature=1.0),
                             TREE_PROMPT)
    print(f"n-gram tree: chi-square p={pvalue:.3g} tvd={tvd:.4f}")
    assert pvalue > 1e-3


def test_training_prompts_are_not_evaluation_prompts():
    train = [p["prompt"] for p in corpus.training_prompts()]
    assert len(train) >= 100 and len(set(train)) == len(train)
    for e in (p["prompt"] for p in read_prompts(None)):
        assert not any(e in t or t in e for t in train)


@pytest.mark.skipif(corpus.load("smollm2-135m") is None, reason="no stored SmolLM2 corpus")
def test_stored_corpus_is_the_targets_own_greedy_output():
    from specviz import models
    from specviz.api import build_engine

    if models.status("smollm2-135m") != "ready":
        pytest.skip("smollm2-135m not fetched")
    data = corpus.load("smollm2-135m")
    assert corpus.digest(data["outputs"]) == data["digest"]
    engine = build_engine("smollm2-135m", "none")
    for i in (0, len(data["prompts"]) // 2):  # a code prompt and a summary: regenerate with plain AR
        got = engine.generate(data["prompts"][i]["prompt"], Settings(max_new_tokens=data["max_new_tokens"]))
        assert got.token_ids == data["outputs"][i]


def test_gate_tuning_runs_on_a_tiny_corpus_and_reads_only_it(tmp_path, monkeypatch):
    import io
    import json
    import math

    from specviz.drafters import ngram_gate

    outputs = [[1, 2, 3, 4, 1, 2, 3, 5, 6], [7, 1, 2, 3, 4, 8, 1, 2, 3, 4], [2, 3, 4, 1, 2, 9], [5, 6, 1, 2, 3, 4, 5, 6]]
    path = tmp_path / "corpus-tiny.json"
    path.write_text(json.dumps({"version": 1, "target": "tiny", "max_new_tokens": 10, "outputs": outputs,
                                "prompts": [{"category": "qa", "prompt": p} for p in ("ab", "ba", "abc", "cab")],
                                "digest": corpus.digest(outputs)}))
    opened = []
    real_open = io.open

    def spy(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", spy)
    monkeypatch.setattr("builtins.open", spy)
    curve = {1: 1.0, 2: 1.3, 4: 1.4, 8: 1.7, 16: 2.0}
    assert ngram_gate.interpolate(curve, 3) == pytest.approx(1.35)
    assert ngram_gate.interpolate(curve, 9) == pytest.approx(1.7 + 0.3 / 8)
    result = ngram_gate.tune(path, curve, encode=lambda text: [ord(c) - ord("a") + 1 for c in text],
                             min_expected=(0.0, 1.0, 2.0), priors=(0.5, 1.0))
    assert len(result["grid"]) == 2 * 3 * 2  # drafter x min_expected x prior
    assert all(math.isfinite(r["tokens_per_cost"]) and r["tokens_per_cost"] > 0 for r in result["grid"])
    assert (result["chosen"]["min_expected"], result["chosen"]["prior"]) in {(m, p) for m in (0, 1, 2) for p in (.5, 1)}
    assert not any("prompts" in name and name.endswith(".jsonl") for name in opened)
    assert opened == [str(path)]  # the corpus is the only file it reads
    # a gate no tree reaches drafts nothing: every step is one token for one forward
    never = ngram_gate.tune(path, curve, encode=lambda text: [1], min_expected=(1e9,), priors=(1.0,))
    assert all(r["tokens_per_cost"] == 1.0 and r["drafting_share"] == 0 for r in never["grid"])
