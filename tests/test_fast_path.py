"""The fast path (specviz.fast) computes what transformers' forward computes.

Every comparison runs the same CachedLM call sequence on both paths and compares the logits: a
prefill, one-token steps, chains, trees with a mask, a tree extended by a second forward, a
rollback (crop) and the compaction of an accepted tree path, a cache that outgrows its first
allocation. Tolerances are stated per model: fp32 GEMMs whose kernels sum in another order differ
in the last bits, ~1e-7 relative to the logits' scale (measured: tiny models ~5e-7 absolute,
SmolLM2 ~5e-5 on logits of magnitude ~20).
"""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import decode, tiny_llama
from test_real_models import assert_same_or_near_tie, needs
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from specviz import fast
from specviz.engine import Engine, Settings
from specviz.fast.kv import MIN_CAPACITY
from specviz.lm import CachedLM
from specviz.tree import path_to

TINY_ATOL = 2e-5
REAL_ATOL = 5e-4  # SmolLM2 logits reach |30|; measured differences ~5e-5


def tiny_qwen2(seed: int) -> Qwen2ForCausalLM:
    """Qwen2 differs from Llama by q/k/v biases (random here, so the fast path must carry them)."""
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=48, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
            layer.input_layernorm.weight.uniform_(0.5, 1.5)  # non-trivial norm weights
            layer.post_attention_layernorm.weight.uniform_(0.5, 1.5)
        model.model.norm.weight.uniform_(0.5, 1.5)
        model.model.embed_tokens.weight.mul_(4.0)
    return model


def tiny_llama_biased(seed: int) -> LlamaForCausalLM:
    """Llama with attention and MLP biases, one KV head (MQA) and a llama3-scaled rotary."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=40, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=1, max_position_embeddings=1024,
                         attention_bias=True, mlp_bias=True, tie_word_embeddings=False,
                         rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 64})
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.normal_(0, 0.3)
        model.lm_head.weight.mul_(8.0)
    return model


TINY = {"llama": lambda: tiny_llama(0), "qwen2": lambda: tiny_qwen2(0), "llama-bias-mqa-llama3rope": lambda: tiny_llama_biased(0)}


def cache_free(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def scenario(lm: CachedLM, prompt: list[int]) -> tuple[list[torch.Tensor], list[int], list[int]]:
    """One CachedLM call sequence covering every way the engine feeds a model; returns all logits,
    the final committed text and the final tree's tokens (two children of the root)."""
    out = []

    def take(root, nodes):
        if root is not None:
            out.append(root)
        if len(nodes):
            out.append(nodes)

    v = lm.vocab
    tok = lambda i: (7 * i + 3) % v  # noqa: E731
    committed = list(prompt)
    take(*lm.forward(committed))  # prefill
    committed.append(tok(1))
    take(*lm.forward(committed))  # one token
    take(*lm.forward(committed, [tok(2), tok(3), tok(4)], [-1, 0, 1]))  # chain of drafts
    lm.accept([0, 1])
    committed += [tok(2), tok(3), tok(5)]
    # tree: root -> a -> c, root -> b -> d, b -> e; with a second level fed separately
    take(*lm.forward(committed, [tok(6), tok(7)], [-1, -1]))
    take(*lm.forward(committed, [tok(8), tok(9), tok(10)], [0, 1, 1]))
    lm.accept([1, 4])  # b -> e: not a prefix of the node order, so the cache compacts
    committed += [tok(7), tok(10), tok(11)]
    take(*lm.forward(committed))
    committed = committed[:-4] + [tok(12)]  # rewind: the cache crops to the common prefix
    take(*lm.forward(committed, [tok(13)], [-1]))
    lm.accept([0])
    committed += [tok(13), tok(14)]
    take(*lm.forward(committed + [tok(15 + i) for i in range(MIN_CAPACITY)]))  # outgrows the first allocation
    take(*lm.forward(committed, [tok(1), tok(2)], [-1, -1]))  # back again, tree after a long rollback
    assert lm.cache_length() == len(committed) + 2
    return out, committed, [tok(1), tok(2)]


@pytest.mark.parametrize("pack", [True, False], ids=["packed", "unpacked"])
@pytest.mark.parametrize("kind", TINY)
def test_fast_path_logits_equal_transformers_on_tiny_models(kind, pack, one_thread):
    """packed: oneDNN copies for multi-row forwards (the CPU default); unpacked: the model's own
    matrices for every forward (CUDA, or too little memory for the copies)."""
    model = TINY[kind]()
    assert fast.unsupported_reason(model) is None
    assert fast.prepare(model, pack=pack).packed == pack  # CachedLM then shares this preparation
    prompt = [1, 5, 7, 3, 9, 2, 11]
    plain, fastlm = CachedLM(model, fast_path=False), CachedLM(model, fast_path=True)
    (want, _, _), (got, committed, leaves) = scenario(plain, prompt), scenario(fastlm, prompt)
    assert len(want) == len(got)
    for i, (a, b) in enumerate(zip(want, got)):
        torch.testing.assert_close(b, a, atol=TINY_ATOL, rtol=0, msg=lambda m: f"{kind}, call {i}: {m}")
    for row, leaf in zip(got[-1], leaves):  # and the last tree equals cache-free forwards
        torch.testing.assert_close(row, cache_free(model, committed + [leaf])[-1], atol=TINY_ATOL, rtol=0)


@pytest.mark.parametrize("kind", TINY)
def test_bf16_packs_only_where_the_cpu_has_it_and_computes_what_transformers_does(kind, monkeypatch, one_thread):
    """bfloat16 weights are packed for oneDNN only on a CPU with native bf16 (elsewhere it is emulated and
    slower than float32); packed or not, the fast path's bf16 logits are transformers' bf16 logits to
    within bf16's resolution (float32 logits on the same scenario differ from both by about as much)."""
    from specviz.fast import weights

    model = TINY[kind]().to(torch.bfloat16)
    monkeypatch.setattr(weights, "native_bf16", lambda: False)
    assert not weights.should_pack(model)
    monkeypatch.setattr(weights, "native_bf16", lambda: True)
    assert weights.should_pack(model)
    if not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN in this torch build")
    prompt = [1, 5, 7, 3, 9, 2, 11]
    for pack in (True, False):
        assert fast.prepare(model, pack=pack).packed == pack
        (want, _, _), (got, _, _) = scenario(CachedLM(model, fast_path=False), prompt), scenario(CachedLM(model, fast_path=True), prompt)
        for i, (a, b) in enumerate(zip(want, got)):
            scale = max(1.0, float(a.float().abs().max()))
            torch.testing.assert_close(b.float(), a.float(), atol=0.05 * scale, rtol=0, msg=lambda m: f"{kind} {pack} {i}: {m}")


def test_tree_nodes_equal_cache_free_forwards(one_thread):
    model = tiny_qwen2(1)
    lm = CachedLM(model, fast_path=True)
    committed = [4, 8, 15, 16, 23, 42 % 48]
    tokens, parents = [9, 2, 4, 6, 8, 1], [-1, -1, 0, 1, 1, 3]
    root, nodes = lm.forward(committed, tokens, parents)
    torch.testing.assert_close(root, cache_free(model, committed)[-1], atol=TINY_ATOL, rtol=0)
    for node in range(len(tokens)):
        path = [tokens[i] for i in path_to(parents, node)]
        torch.testing.assert_close(nodes[node], cache_free(model, committed + path)[-1], atol=TINY_ATOL, rtol=0)


@pytest.mark.parametrize("kind", TINY)
def test_hidden_states_mean_what_transformers_means(kind, one_thread):
    """hidden_layers follows transformers' hidden_states indexing: 0 = embeddings, i = after decoder
    layer i, -1 (= num_layers) = the final normed state, for every row fed."""
    model = TINY[kind]()
    n_layers = model.config.num_hidden_layers
    layers = (0, 1, n_layers - 1, n_layers, -1, -2)
    committed = [3, 1, 4, 1, 5, 9, 2]
    results = []
    for fast_path in (False, True):
        lm = CachedLM(model, fast_path=fast_path)
        lm.forward(committed[:4])
        lm.forward(committed, [6, 5, 3], [-1, 0, 0], hidden_layers=layers)  # fed: 3 committed rows + 3 nodes
        results.append(lm.hidden)
    plain, fast_hidden = results
    assert set(fast_hidden) == set(layers)
    for layer in layers:
        assert fast_hidden[layer].shape == plain[layer].shape == (6, model.config.hidden_size)
        torch.testing.assert_close(fast_hidden[layer], plain[layer], atol=TINY_ATOL, rtol=0, msg=lambda m: f"{layer}: {m}")
    # the meaning, against transformers' cache-free forward of the committed text
    with torch.no_grad():
        ref = model(torch.tensor([committed]), output_hidden_states=True).hidden_states
    for layer in layers:
        torch.testing.assert_close(fast_hidden[layer][:3], ref[layer][0, 4:], atol=TINY_ATOL, rtol=0)


def test_preparation_is_shared_and_follows_weight_changes(one_thread):
    model = tiny_llama(3)
    a, b = CachedLM(model), CachedLM(model)
    assert a.fast_path and b.fast_path
    assert a._fast is b._fast is fast.prepare(model)  # packed once per model, not per CachedLM
    before, _ = a.forward([1, 2, 3])
    with torch.no_grad():
        model.lm_head.weight.mul_(0.5)  # changed in place (as an online learner would)
    b.reset()
    assert b._fast is not a._fast
    after, _ = b.forward([1, 2, 3])
    torch.testing.assert_close(after, before * 0.5, atol=TINY_ATOL, rtol=1e-5)
    torch.testing.assert_close(after, cache_free(model, [1, 2, 3])[-1], atol=TINY_ATOL, rtol=0)
    twin = copy.deepcopy(model)
    assert fast.prepare(twin) is not fast.prepare(model)


def test_switches_and_unsupported_architectures(monkeypatch):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2, n_positions=64)).eval()
    assert "gpt2" in fast.unsupported_reason(gpt2)
    assert not CachedLM(gpt2).fast_path  # automatic: falls back to transformers' forward
    with pytest.raises(ValueError, match="fast path"):
        CachedLM(gpt2, fast_path=True)
    root, _ = CachedLM(gpt2).forward([1, 2, 3])
    torch.testing.assert_close(root, cache_free(gpt2, [1, 2, 3])[-1], atol=1e-5, rtol=0)
    sliding = Qwen2ForCausalLM(Qwen2Config(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
                                           sliding_window=8, max_window_layers=0))
    assert "sliding" in fast.unsupported_reason(sliding)
    llama = tiny_llama(0)
    assert CachedLM(llama).fast_path and not CachedLM(llama, fast_path=False).fast_path
    monkeypatch.setenv("SPECVIZ_FAST_PATH", "0")
    assert not CachedLM(llama).fast_path and CachedLM(llama, fast_path=True).fast_path


def test_memory_accounting_counts_the_fast_paths_copies(one_thread):
    """Memory budgets see the packed copies (they about double a float32 model): the estimate before
    preparation equals the count after it, and a model the fast path does not pack adds nothing."""
    from specviz import models

    model = tiny_llama(3)
    own = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers())
    before = fast.copy_bytes(model)
    fm = fast.prepare(model)
    linears = sum(m.weight.numel() * m.weight.element_size() for m in model.modules() if isinstance(m, torch.nn.Linear))
    qkv = sum(m.weight.numel() * m.weight.element_size() for layer in model.model.layers
              for m in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj))
    expected = linears + qkv if fm.packed else 0
    assert before == fast.copy_bytes(model) == expected
    assert models.model_bytes(model) == own + expected
    fast.forget(model)
    unpacked = tiny_llama(4)
    fast.prepare(unpacked, pack=False)
    assert fast.copy_bytes(unpacked) == 0


def test_engine_runs_equal_on_both_paths(tiny_target, tiny_drafter, one_thread):
    from specviz.drafters.model import ModelDrafter, chain_builder
    from specviz.drafters.strategies import STRATEGIES

    prompt = [1, 5, 7, 3, 9, 2, 5, 7]
    for make in (lambda fp: None, lambda fp: ModelDrafter(tiny_drafter, chain_builder(4), fast_path=fp),
                 lambda fp: ModelDrafter(tiny_drafter, STRATEGIES.get("gumbel-top-k").build(3), fast_path=fp)):
        runs = [Engine(tiny_target, decode, make(fp), fast_path=fp).run(prompt, Settings(40, temperature=0.9, seed=3))
                for fp in (False, True)]
        assert runs[0].token_ids == runs[1].token_ids


# --- SmolLM2 ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2():
    from specviz.api import load_model

    return load_model("smollm2-135m")


@needs("smollm2-135m")
def test_smollm2_fast_logits_equal_transformers(smollm2):
    model, tokenizer, _ = smollm2
    prompt = tokenizer("The quick brown fox jumps over the lazy dog. " * 6)["input_ids"]
    want, _, _ = scenario(CachedLM(model, fast_path=False), prompt)
    got, _, _ = scenario(CachedLM(model, fast_path=True), prompt)
    worst = 0.0
    for i, (a, b) in enumerate(zip(want, got)):
        torch.testing.assert_close(b, a, atol=REAL_ATOL, rtol=0, msg=lambda m: f"call {i}: {m}")
        worst = max(worst, float((a - b).abs().max()))
    print(f"SmolLM2 fast vs transformers: max |logit difference| {worst:.2e} over {len(want)} calls")


@needs("smollm2-135m")
def test_smollm2_fast_hidden_states_equal_transformers(smollm2):
    model, tokenizer, _ = smollm2
    ids = tokenizer("Speculative decoding drafts tokens and verifies them in one forward.")["input_ids"]
    layers = (0, 1, 15, -1)
    hidden = []
    for fast_path in (False, True):
        lm = CachedLM(model, fast_path=fast_path)
        lm.forward(ids[:-3])
        lm.forward(ids, [17, 42], [-1, 0], hidden_layers=layers)
        hidden.append(lm.hidden)
    for layer in layers:
        scale = float(hidden[0][layer].abs().max())
        torch.testing.assert_close(hidden[1][layer], hidden[0][layer], atol=1e-5 * max(1.0, scale), rtol=1e-4)


def evaluation_prompts(n: int) -> list[str]:
    from specviz.prompts import read_prompts

    rows = read_prompts()
    by_category = {}
    for row in rows:
        by_category.setdefault(row["category"], row["prompt"])
    return list(by_category.values())[:n]


@needs("smollm2-135m")
@pytest.mark.parametrize("drafter", ["pld", "ngram-tree", "smollm2-135m"])
def test_smollm2_fast_speculative_equals_fast_ar(smollm2, drafter):
    """Greedy speculative decoding on the fast path writes the fast path's AR tokens (near-ties aside)."""
    from specviz.api import build
    from specviz.config import RunConfig

    spec = build(RunConfig("smollm2-135m", drafter, draft_len=5))
    assert spec.engine.target.fast_path
    model = spec.engine.target.model
    ar = Engine(model, spec.engine.decode, None, spec.engine.eos_ids, fast_path=True)
    diverged = 0
    for prompt in evaluation_prompts(4):
        ids = spec.encode(prompt)
        want = ar.run(ids, Settings(max_new_tokens=48)).token_ids
        got = spec.engine.run(ids, Settings(max_new_tokens=48)).token_ids
        diverged += assert_same_or_near_tie(model, ids, want, got, f"fast {drafter} / {prompt[:30]}")
    print(f"{drafter}: {diverged} of 4 prompts diverged at a near-tie")


def test_profile_reports_both_paths_and_the_breakdown(one_thread):
    """The profile's shape (no timing assertions: speed is measured by `python -m specviz profile`)."""
    import json

    from specviz.profile import format_profile, profile

    model = tiny_qwen2(2)
    result = profile(model, sizes=(1, 2, 9), prefix=16, repeats=2, breakdown_steps=2)
    assert result["paths"] == ["plain", "fast"] and set(result["cost_ms"]["fast"]) == {1, 2, 9}
    assert result["ratio_to_first_size"]["plain"][1] == 1.0
    for path in ("plain", "fast"):
        breakdown = result["breakdown_ms"][path]
        assert breakdown["GEMMs"] > 0 and breakdown["attention"] > 0
        parts = sum(v for k, v in breakdown.items() if not k.startswith("total"))
        assert abs(parts - breakdown["total (under the profiler)"]) < 1e-6 * max(1.0, parts) + 1e-9
    assert set(result["gemm_floor"]["ms"]) == {1, 9}
    json.loads(json.dumps(result))  # the bench stores it as JSON
    assert "fast speedup" in format_profile(result)
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2, n_positions=64)).eval()
    only_plain = profile(gpt2, sizes=(1, 2), prefix=8, repeats=1, breakdown_steps=1)
    assert only_plain["paths"] == ["plain"] and "gpt2" in only_plain["fast_path_unsupported"]


def test_gemm_routes_agree_and_report_every_route(one_thread):
    """Every GEMM route computes the same products (within fp32 rounding), and the table names the
    fastest route per row count; the compile route is covered by `profile --kernels --compile`."""
    import json

    import pytest

    from specviz.gemm_routes import _route, compare_routes, format_routes

    model = tiny_qwen2(3)
    g = compare_routes(model, rows=(1, 3, 9), repeats=2)
    assert g["routes"][:2] == ["onednn", "mkl"] and g["rows"] == [1, 3, 9]
    for route in g["routes"]:
        assert g["max_abs_diff_vs_mkl"][route] < 1e-4, route
        assert set(g["ms"][route]) == {1, 3, 9} and g["ratio_to_own_first"][route][1] == 1.0
    assert min(g["ratio_to_best_first"][r][1] for r in g["routes"]) == 1.0
    assert set(g["best"].values()) <= set(g["routes"])
    json.loads(json.dumps(g))
    table = format_routes(g)
    assert "onednn" in table and "fastest" in table
    with pytest.raises(ValueError, match="unknown GEMM route"):
        _route("cublas", [], 1, {}, {})
    from specviz.profile import format_profile, profile_target

    full = profile_target("tiny", load=lambda name: (model, None, None), repeats=1, kernels=True)
    assert full["gemm_routes"]["routes"] == g["routes"] and "fastest" in format_profile(full)


def test_one_row_route_is_measured_once_per_machine_and_both_routes_agree(monkeypatch, tmp_path, one_thread):
    from specviz.fast import routes

    monkeypatch.setenv("SPECVIZ_CACHE", str(tmp_path))
    monkeypatch.delenv(routes.ENV, raising=False)
    monkeypatch.setattr(routes, "_KNOWN", {})
    calls = []
    monkeypatch.setattr(routes, "measure", lambda fm: calls.append(1) or {"plain": 2.0, "packed": 1.0})
    model = tiny_llama(0)
    fm = fast.prepare(model, pack=True)
    assert calls == [1] and {lin.min_rows for lin in routes.linears(fm)} == {1}  # packed was faster
    assert '"route": "packed"' in (tmp_path / "measured" / "routes.json").read_text()
    monkeypatch.setattr(routes, "_KNOWN", {})  # a new process: reads the stored verdict, measures nothing
    assert fast.prepare(copy.deepcopy(model), pack=True) is not None and calls == [1]
    prompt = [1, 5, 7, 3, 9, 2, 11]
    outs = {}
    for route in routes.ROUTES:  # the forced choice, each on its own preparation
        monkeypatch.setenv(routes.ENV, route)
        twin = copy.deepcopy(model)
        assert {lin.min_rows for lin in routes.linears(fast.prepare(twin, pack=True))} == {1 if route == "packed" else 2}
        outs[route] = scenario(CachedLM(twin, fast_path=True), prompt)[0]
    for a, b in zip(outs["plain"], outs["packed"]):
        torch.testing.assert_close(b, a, atol=TINY_ATOL, rtol=0)
