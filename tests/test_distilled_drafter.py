"""The distilled drafter LM (specviz.drafters.distilled): training, the TVD++ estimator, losslessness,
online adaptation.

- A few training steps on a tiny model lower the loss (KD and TVD++); weights round-trip.
- The TVD++ estimator's expectation over draft samples equals the exact TV gradient.
- Greedy decoding with the drafter (every shape, fast path on and off) equals AR; a reduced
  vocabulary head gives q = 0 outside its tokens, and sampling still matches the target's exact
  distribution on a context-dependent model (chi-square); so does the online switch, which does
  change the drafter's weights (and only its own copy).
"""
import json

import pytest
import torch
from conftest import tiny_llama
from exact import context_llama, pvalue_against_exact

from specviz import models
from specviz.drafters import distilled
from specviz.drafters.distilled import ReducedVocabLM, make_distilled_drafter, new_model
from specviz.drafters.online import OnlineLearner
from specviz.engine import Engine, Settings
from specviz.train import distill, tvd
from specviz.train.data import DistillSet, save_shard

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = [1, 2, 3, 4, 5, 1, 2]


# ---- the TVD++ estimator

def test_tvdpp_expectation_equals_the_exact_tv_gradient():
    torch.manual_seed(0)
    logits = torch.randn(5, 7) * 2
    p = torch.softmax(torch.randn(5, 7) * 2, -1)
    p[:, -1] = 0  # a token the target never says
    p = p / p.sum(-1, keepdim=True)
    z = logits.clone().requires_grad_(True)
    tvd.exact_tv(p, z).mean().backward()
    exact = z.grad
    enumerated = tvd.expected_tvdpp_grad(logits, p, sigma=1.0)
    assert torch.allclose(enumerated, exact, atol=1e-6), (enumerated, exact)
    # the sigma-normalized estimator is the same direction, scaled by 1 / sigma
    assert torch.allclose(tvd.expected_tvdpp_grad(logits, p, sigma=0.25), exact / 0.25, atol=1e-5)
    # and the sampled surrogate, averaged over many draws from q, converges to it
    gen = torch.Generator().manual_seed(1)
    z = logits.clone().requires_grad_(True)
    loss, _ = tvd.tvdpp_loss(z, p, gen, samples=200_000, sigma=1.0)
    loss.backward()
    assert torch.allclose(z.grad, exact, atol=4e-3), (z.grad, exact)


def test_tvdpp_training_lowers_tv_on_a_small_vocabulary():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(8, 12) * 2, -1)
    z = torch.zeros(8, 12, requires_grad=True)
    opt = torch.optim.Adam([z], lr=0.05)
    gen = torch.Generator().manual_seed(0)
    before = float(tvd.exact_tv(p, z.detach()).mean())
    for _ in range(300):
        loss, stats = tvd.tvdpp_loss(z, p, gen, samples=16)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = float(tvd.exact_tv(p, z.detach()).mean())
    assert after < 0.5 * before, (before, after)


# ---- a tiny distillation set and training

def tiny_shards(root, target, n_seqs=12, length=24, top_k=32, seed=0):
    """Sequences sampled from `target` with its top-K log-probs at every position, in the data format."""
    gen = torch.Generator().manual_seed(seed)
    seqs = []
    with torch.no_grad():
        for s in range(n_seqs):
            ids = [int(torch.randint(1, target.config.vocab_size, (1,), generator=gen))]
            for _ in range(length - 1):
                logits = target(torch.tensor([ids])).logits[0, -1]
                ids.append(int(torch.multinomial(logits.softmax(-1), 1, generator=gen)))
            logp = target(torch.tensor([ids])).logits[0].log_softmax(-1)
            top = logp.topk(top_k)
            seqs.append({"tokens": torch.tensor(ids, dtype=torch.int32), "hidden": torch.zeros(length, 4),
                         "topk_ids": top.indices.int(), "topk_logp": top.values.half(), "prompt_len": 1})
    jobs = [{"prompt": i, "temperature": 1.0, "shard": 0} for i in range(n_seqs)]
    instructions = [{"category": "code", "prompt": f"tiny instruction number {i}"} for i in range(n_seqs)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps({"version": 1, "target": "tiny", "seed": seed, "top_k": top_k,
                                                    "jobs": jobs, "instructions": instructions}))
    save_shard(root, 0, seqs, list(range(n_seqs)))
    return DistillSet(root)


@pytest.fixture(scope="module")
def tiny_target():
    return tiny_llama(0, vocab=32)


@pytest.mark.parametrize("kind", ["distill-kd", "distill-tvd"])
def test_training_lowers_the_loss_and_weights_round_trip(tmp_path, tiny_target, kind):
    data = tiny_shards(tmp_path / "data", tiny_target)
    cfg = distill.TrainConfig(kind=kind, steps=40, batch_tokens=96, lr=3e-3, layers=(0,), vocab=28, samples=8)
    out = tmp_path / "drafter.safetensors"
    result = distill.train(tiny_target, data, cfg, out, tmp_path / "work", log=lambda *a: None)
    s = result["summary"]
    trained = "kl" if kind == "distill-kd" else "tv"  # each lowers what it optimizes
    curve = [h[trained] for h in result["history"] if "valid" not in h]
    first, last = sum(curve[:5]) / 5, sum(curve[-5:]) / 5
    assert last < 0.9 * first, (first, last)
    assert (out.with_suffix(".loss.png")).stat().st_size > 1000
    loaded = distilled.load(out, tiny_target)
    assert loaded.model.embed_tokens is tiny_target.get_input_embeddings()  # shared, not a copy
    assert torch.equal(loaded.vocab_ids, result["model"].vocab_ids)
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        a = distill.drafter_logits(result["model"], ids)
        b = distill.drafter_logits(loaded, ids)
    assert torch.allclose(a, b, atol=2e-2)  # fp16 storage
    # resuming a finished run reproduces it (atomic checkpoint, same batch order)
    again = distill.train(tiny_target, data, cfg, tmp_path / "again.safetensors", tmp_path / "work", log=lambda *a: None)
    assert again["summary"]["final_valid"] == s["final_valid"]


def test_training_refuses_evaluation_prompts():
    from specviz.prompts import read_prompts

    with pytest.raises(ValueError, match="overlap the evaluation prompts"):
        distill.check_no_evaluation_prompts(["fine", read_prompts()[0]["prompt"]])


# ---- losslessness

def reduced_drafter(target, kept: list[int], layers=(1,), noise=0.0, seed=3):
    model = new_model(target, list(layers), torch.tensor(kept))
    if noise:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in distilled.own_parameters(model):
                p.add_(torch.randn(p.shape, generator=gen) * noise * p.std())
    return model


def test_reduced_vocabulary_rows_are_full_width_with_zero_q_outside(tiny_target):
    kept = list(range(0, 32, 2))
    lm = ReducedVocabLM(reduced_drafter(tiny_target, kept))
    root, nodes = lm.forward(PROMPT, [4, 6], [-1, 0])
    assert root.shape == (32,) and nodes.shape == (2, 32)
    outside = [t for t in range(32) if t not in kept]
    assert torch.isinf(root[outside]).all() and torch.isfinite(root[kept]).all()
    assert float(root.softmax(-1)[outside].sum()) == 0.0


@pytest.mark.parametrize("shape", ["chain", "gumbel-top-k", "beam", "specinfer", "dynamic"])
@pytest.mark.parametrize("fast_path", [None, False])
def test_greedy_equals_autoregressive(tiny_target, shape, fast_path):
    model = reduced_drafter(tiny_target, list(range(4, 32)), noise=0.2)
    drafter = make_distilled_drafter(tiny_target, "distill-kd", shape, 3, model=model, fast_path=fast_path)
    settings = Settings(max_new_tokens=24)
    for prompt in (PROMPT, [7, 7, 3]):
        ar = Engine(tiny_target, str).run(prompt, settings)
        run = Engine(tiny_target, str, drafter).run(prompt, settings)
        assert run.token_ids == ar.token_ids
    assert run.metrics.drafted > 0


VOCAB, N, SAMPLES = 6, 3, 3_000


@pytest.fixture(scope="module")
def context_target():
    target = context_llama(VOCAB)  # the next token depends strongly on the earlier ones
    return target


def chi_square(engine: Engine, temperature: float = 1.0) -> float:
    return pvalue_against_exact(engine, PROMPT[:4], N, Settings(N, temperature=temperature), SAMPLES)


@pytest.mark.parametrize("online", [False, True])
def test_sampling_matches_a_context_dependent_target(context_target, online):
    # tokens 0 and 5 are outside the drafter's vocabulary: q = 0 there, the residual supplies them
    model = reduced_drafter(context_target, [1, 2, 3, 4], noise=0.3)
    before = {k: v.clone() for k, v in distilled.own_state(model).items()}
    drafter = make_distilled_drafter(context_target, "distill-kd", "chain", 3, model=model, online=online)
    if online:
        drafter.online.every, drafter.online.steps = 40, 1  # dozens of updates: q changes many times during the test
    engine = Engine(context_target, str, drafter, rule="sampling")
    pvalue = chi_square(engine)
    print(f"distilled chain (online={online}) on a context-dependent target: p={pvalue:.3g}")
    assert pvalue > 1e-3
    changed = any(not torch.equal(before[k], v) for k, v in distilled.own_state(drafter.lm.model).items())
    assert changed == online
    assert all(torch.equal(before[k], v) for k, v in distilled.own_state(model).items())  # the shared copy


def test_online_switch_adapts_and_stays_greedy_exact(tiny_target):
    model = reduced_drafter(tiny_target, list(range(32)), noise=0.5)
    drafter = make_distilled_drafter(tiny_target, "distill-kd", "chain", 4, model=model, online=True)
    drafter.online.every, drafter.online.steps = 2, 4
    drafter.online.opt.param_groups[0]["lr"] = 3e-3
    engine = Engine(tiny_target, str, drafter)
    ar = Engine(tiny_target, str)
    settings = Settings(max_new_tokens=32)
    prompts = [PROMPT, [7, 7, 3], [9, 1, 4, 4]]
    first, second = [], []
    for rounds in (first, second):
        for prompt in prompts:
            run = engine.run(prompt, settings)
            assert run.token_ids == ar.run(prompt, settings).token_ids
            rounds.append(run.metrics.acceptance_rate)
    assert drafter.online.updates > 0 and drafter.lm.model is not model
    assert sum(second) > sum(first), (first, second)  # it learned the target on these prompts


def test_online_learner_groups_positions_by_text(tiny_target):
    learner = OnlineLearner(reduced_drafter(tiny_target, list(range(32))))
    from specviz.drafters.online import Item

    k = torch.zeros(4, dtype=torch.long)
    learner.buffer = [Item((1, 2, 3), k, k.float()), Item((1, 2), k, k.float()), Item((4, 5), k, k.float())]
    groups = learner._texts()
    assert sorted((g[0], len(g[1])) for g in groups) == [((1, 2, 3), 2), ((4, 5), 1)]
    loss = learner.update()
    assert loss == loss and learner.updates == 1


# ---- SmolLM2 with the shipped weights

def shipped(kind: str) -> bool:
    return models.status("smollm2-135m") == "ready" and distilled.default_weights(kind).exists()


@pytest.mark.parametrize("kind", ["distill-kd", "distill-tvd"])
def test_smollm2_greedy_with_the_shipped_drafter_equals_ar(kind):
    if not shipped(kind):
        pytest.skip("SmolLM2 not fetched or no shipped weights")
    from test_real_models import PROMPTS, assert_same_or_near_tie

    from specviz.api import build_engine

    spec = build_engine("smollm2-135m", kind, draft_len=4)
    model = spec.engine.target.model
    ar = Engine(model, spec.engine.decode, None, spec.engine.eos_ids)
    accepted = 0
    for prompt in PROMPTS[:2]:
        ids = spec.encode(prompt)
        want = ar.run(ids, Settings(max_new_tokens=32)).token_ids
        run = spec.engine.run(ids, Settings(max_new_tokens=32))
        assert_same_or_near_tie(model, ids, want, run.token_ids, f"{kind} / {prompt[:30]}")
        accepted += run.metrics.accepted
    assert accepted > 0  # the trained drafter does predict the target
