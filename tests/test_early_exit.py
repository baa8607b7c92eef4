"""DEL (specviz.drafters.early_exit): exit adapters train and round-trip, the draft cache built from
the target's hidden states equals running the layers, greedy decoding equals AR (tiny models, fast
path on and off, and SmolLM2 with the shipped adapters), sampling matches a context-dependent
target's exact distribution, and the per-context choice of exit layer and length behaves."""
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama
from exact import context_llama, pvalue_against_exact
from test_distilled_drafter import tiny_shards

from specviz import models
from specviz.drafters.early_exit import (ExitAdapters, ExitLM, default_weights, exit_states, layer_cost,
                                         make_del_drafter)
from specviz.engine import Engine, Settings
from specviz.events import Drafted
from specviz.train import early_exit as trainer

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = [1, 2, 3, 4, 5, 1, 2]


@pytest.fixture(scope="module")
def deep_target():
    return tiny_llama(0, vocab=32, layers=4)


def adapters_for(target, layers, kept, noise=0.0, seed=3) -> ExitAdapters:
    adapters = ExitAdapters.for_target(target, layers, torch.tensor(kept))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapters.proj:
            p.weight.copy_(torch.randn(p.weight.shape, generator=gen) * noise)
    return adapters.eval()


# ---- training

def test_training_lowers_the_loss_and_weights_round_trip(tmp_path, deep_target):
    data = tiny_shards(tmp_path / "data", deep_target)
    cfg = trainer.TrainConfig(steps=40, batch_tokens=64, lr=1e-2, layers=(1, 2, 3), vocab=28)
    out = tmp_path / "del.safetensors"
    result = trainer.train(deep_target, data, cfg, out, tmp_path / "work", log=lambda *a: None)
    curve = [h["kl"] for h in result["history"] if "valid" not in h]
    first, last = sum(curve[:5]) / 5, sum(curve[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    valid = [h for h in result["history"] if "valid" in h]
    assert valid[-1]["kl"] < valid[0]["kl"]  # held out, against the raw early exit
    assert out.with_suffix(".loss.png").stat().st_size > 1000
    loaded = ExitAdapters.load(out)
    assert loaded.layers == (1, 2, 3) and torch.equal(loaded.vocab_ids, result["adapters"].vocab_ids)
    assert set(loaded.prior) == {1, 2, 3} and 0 <= loaded.prior[2]["top1"] <= 1
    h = torch.randn(5, deep_target.config.hidden_size)
    with torch.no_grad():
        for i in range(3):
            assert torch.allclose(loaded.features(i, h), result["adapters"].features(i, h), atol=2e-2)
    # only the adapters' own parameters are stored (no embedding, no layer of the target)
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        assert all(k.startswith(("norm_in", "proj", "norm_out")) or k == "vocab_ids" for k in f.keys())
    # resuming a finished run reproduces it
    again = trainer.train(deep_target, data, cfg, tmp_path / "again.safetensors", tmp_path / "work",
                          log=lambda *a: None)
    assert again["summary"]["per_layer"] == result["summary"]["per_layer"]


def test_cli_registers_del():
    from specviz.drafters.registry import DRAFTERS

    assert "del" in DRAFTERS and DRAFTERS.get("del").kind == "trained"


# ---- the draft cache and the forward

def test_exit_states_equal_transformers_hidden_states(deep_target):
    ids = PROMPT + [9, 4]
    states = exit_states(deep_target, ids, (1, 3))
    with torch.no_grad():
        hf = deep_target(torch.tensor([ids]), output_hidden_states=True).hidden_states
    for layer in (1, 3):
        assert torch.allclose(states[layer], hf[layer][0], atol=1e-5)


def test_cache_filled_from_target_states_equals_running_the_layers(deep_target):
    """DEL's reuse of the verification forward: keys/values projected from hidden_states[l] give the
    same next state as running layers 0 .. L - 1 over the whole text."""
    adapters = adapters_for(deep_target, (2, 3), list(range(32)))
    ids = PROMPT + [9, 4, 4]
    with torch.no_grad():
        hf = deep_target(torch.tensor([ids[:-1]]), output_hidden_states=True).hidden_states
    lm = ExitLM(deep_target, adapters)
    lm.fill(0, {i: hf[i][0] for i in range(3)})
    for layer in (2, 3):
        lm.kv.length = lm.known
        h = lm.step(ids[-1], len(ids) - 1, layer)
        want = exit_states(deep_target, ids, (layer,))[layer][-1:]
        assert torch.allclose(h, want, atol=1e-5), layer
    # the logits are full width, -inf outside the kept ids
    kept = list(range(4, 32))
    lm = ExitLM(deep_target, adapters_for(deep_target, (2, 3), kept))
    row = lm.logits(2, torch.randn(1, deep_target.config.hidden_size))[0]
    assert torch.isinf(row[:4]).all() and torch.isfinite(row[kept]).all()


# ---- losslessness

@pytest.mark.parametrize("fast_path", [None, False])
@pytest.mark.parametrize("fixed", [(2, 3), (3, 2), None])
def test_greedy_equals_autoregressive(deep_target, fast_path, fixed):
    adapters = adapters_for(deep_target, (2, 3), list(range(4, 32)), noise=0.02)
    drafter = make_del_drafter(deep_target, 3, adapters=adapters, fixed=fixed)
    if fixed is None:  # DEL's own choice, from optimistic priors (it switches as the estimates move)
        adapters.prior = {2: {"top1": 0.9}, 3: {"top1": 0.95}}
    settings = Settings(max_new_tokens=24)
    drafted = accepted = 0
    for prompt in (PROMPT, [7, 7, 3]):
        ar = Engine(deep_target, str, fast_path=fast_path).run(prompt, settings)
        run = Engine(deep_target, str, drafter, fast_path=fast_path).run(prompt, settings)
        assert run.token_ids == ar.token_ids
        drafted += run.metrics.drafted
        accepted += run.metrics.accepted
        for ev in run.events:  # the chosen exit layer is recorded with every round that drafted
            if isinstance(ev, Drafted) and ev.nodes:
                assert ev.stop["exit_layer"] in (2, 3) and ev.stop["depth"] == len(ev.nodes)
    assert drafted > 0 and (accepted > 0 or fixed is None)  # DEL itself may stop drafting once it has measured


VOCAB, N, SAMPLES = 6, 3, 2_000


def chi_square(engine: Engine, temperature: float = 1.0) -> float:
    return pvalue_against_exact(engine, PROMPT[:4], N, Settings(N, temperature=temperature), SAMPLES)


def test_sampling_matches_a_context_dependent_target():
    target = context_llama(VOCAB)  # 2 layers; the next token depends strongly on the earlier ones
    # tokens 0 and 5 are outside the readout: q = 0 there, the residual supplies them
    adapters = adapters_for(target, (1,), [1, 2, 3, 4], noise=0.3)
    drafter = make_del_drafter(target, 3, adapters=adapters, fixed=(1, 3))
    engine = Engine(target, str, drafter, rule="sampling")
    pvalue = chi_square(engine)
    print(f"DEL chain (exit layer 1) on a context-dependent target: p={pvalue:.3g}")
    assert pvalue > 1e-3


# ---- the choice

def test_choice_maximizes_expected_tokens_per_cost(deep_target):
    adapters = adapters_for(deep_target, (1, 2, 3), list(range(32)))
    drafter = make_del_drafter(deep_target, 4, adapters=adapters, verify_row=0.0)
    cost = drafter.cost
    assert cost[1] < cost[2] < cost[3] < 1
    drafter.estimate = {1: 0.9, 2: 0.9, 3: 0.9}
    assert drafter.choose(4)[:2] == (1, 4)  # equal acceptance: the cheapest layer, the longest draft
    drafter.estimate = {1: 0.0, 2: 0.0, 3: 0.0}
    assert drafter.choose(4)[:2] == (None, 0)  # nothing pays off: an ordinary step
    drafter.estimate = {1: 0.05, 2: 0.1, 3: 0.97}
    assert drafter.choose(4)[0] == 3
    assert layer_cost(deep_target.config, 0, 0) == 0


# ---- SmolLM2 with the shipped adapters

def test_smollm2_greedy_with_the_shipped_adapters_equals_ar():
    if models.status("smollm2-135m") != "ready" or not default_weights().exists():
        pytest.skip("SmolLM2 not fetched or no shipped DEL adapters")
    from test_real_models import PROMPTS, assert_same_or_near_tie

    from specviz.api import build_engine

    spec = build_engine("smollm2-135m", "del", draft_len=4)
    model = spec.engine.target.model
    ar = Engine(model, spec.engine.decode, None, spec.engine.eos_ids)
    layers = Counter()
    for prompt in PROMPTS[:2]:
        ids = spec.encode(prompt)
        want = ar.run(ids, Settings(max_new_tokens=32)).token_ids
        run = spec.engine.run(ids, Settings(max_new_tokens=32))
        assert_same_or_near_tie(model, ids, want, run.token_ids, f"del / {prompt[:30]}")
        layers.update(ev.stop.get("exit_layer") for ev in run.events if isinstance(ev, Drafted))
    print("exit layers chosen:", dict(layers))
    assert sum(v for k, v in layers.items() if k is not None) > 0  # it did draft


def test_shipped_card_names_the_weights():
    path = default_weights()
    if not path.exists():
        pytest.skip("no shipped DEL adapters")
    card = Path(path).with_suffix(".md")
    assert card.exists() and "train-drafter del" in card.read_text()
