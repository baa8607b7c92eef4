"""The EAGLE feature head: training works, weights round-trip, drafting on the target's features is
lossless (greedy and sampled, chains and trees), its cache mirrors the committed text, and the
distillation instructions never contain an evaluation prompt."""
import json
import re
from types import SimpleNamespace

import pytest
import torch
from bigram import BigramLM
from conftest import decode, tiny_llama
from test_engine import PROMPTS, reference_greedy

from specviz import models
from specviz.drafters.feature_head import FeatureHead, HeadConfig, HeadLM, default_weights, make_feature_drafter
from specviz.engine import Engine, Settings
from specviz.tree import path_to
from specviz.train import data as distill
from specviz.train.eagle import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = ["chain", "dynamic", "gumbel-top-k", "beam", "specinfer"]


def random_head(config: HeadConfig, seed: int, std: float = 0.3, vocab_ids=None) -> FeatureHead:
    """An untrained head with weights large enough that its drafts vary with the context."""
    torch.manual_seed(seed)
    head = FeatureHead(config, vocab_ids)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, std)
    return head.eval()


# --- a tiny target whose next token depends on the whole context, and a trained head for it -------

@pytest.fixture(scope="module")
def context_target():
    return tiny_llama(0)


def tiny_distill(model, root, n_seqs: int = 24, length: int = 24, seed: int = 0, layers: tuple[int, ...] = ()):
    """Distillation shards for a tiny target: random prompts, greedy and sampled responses (and the
    states of `layers`, as data v2 records for EAGLE-3)."""
    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    prompts = [torch.randint(1, vocab, (int(torch.randint(3, 9, (1,), generator=gen)),), generator=gen).tolist()
               for _ in range(n_seqs)]
    temps = [0.0 if i % 3 else 1.0 for i in range(n_seqs)]
    seqs = distill.generate_batch(model, prompts, temps, eos=set(), pad=0, max_new_tokens=length, gen=gen,
                                  top_k=min(distill.TOP_K, vocab), layers=layers)
    jobs = [{"prompt": i, "temperature": t, "shard": i // 8} for i, t in enumerate(temps)]
    manifest = {"version": distill.VERSION, "target": "tiny", "seed": seed, "top_k": distill.TOP_K,
                "max_new_tokens": length, "batch": 8, "jobs": jobs, "layers": list(layers),
                "instructions": [{"category": "random", "prompt": str(p)} for p in prompts]}
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps(manifest))
    for s in range(n_seqs // 8):
        distill.save_shard(root, s, seqs[8 * s: 8 * s + 8], list(range(8 * s, 8 * s + 8)), layers)
    return seqs


@pytest.fixture(scope="module")
def trained(context_target, tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    seqs = tiny_distill(context_target, root)
    data = distill.DistillSet(root)
    cfg = TrainConfig(steps=40, batch_tokens=256, vocab=0, seed=0, lr=1e-2)
    result = train(context_target, data, cfg, root / "head.safetensors", root / "work", log=lambda *_: None,
                   intermediate=64)
    return SimpleNamespace(root=root, seqs=seqs, data=data, **result)


@pytest.fixture(scope="module")
def trained3(context_target, tmp_path_factory):
    """An EAGLE-3 head (fused low/middle/last states, training-time test over 3 steps) on the tiny target."""
    root = tmp_path_factory.mktemp("distill3")
    layers = distill.feature_layers(context_target.config.num_hidden_layers)
    seqs = tiny_distill(context_target, root, layers=layers)
    data = distill.DistillSet(root)
    cfg = TrainConfig(steps=60, batch_tokens=256, vocab=0, seed=0, lr=1e-2, recipe="eagle3", ttt_steps=3)
    result = train(context_target, data, cfg, root / "head3.safetensors", root / "work", log=lambda *_: None,
                   intermediate=64)
    return SimpleNamespace(root=root, seqs=seqs, data=data, layers=layers, **result)


def test_distill_shards_align_features_with_next_token_predictions(context_target, trained):
    seq = next(trained.data.sequences())
    assert seq.hidden.shape == (len(seq.tokens), context_target.config.hidden_size)
    with torch.no_grad():
        out = context_target(torch.tensor([seq.tokens.tolist()]), output_hidden_states=True)
    # row i = the target after reading tokens[0..i]: its final normed state and its top-K next tokens
    torch.testing.assert_close(seq.hidden.float(), out.hidden_states[-1][0], atol=2e-2, rtol=2e-2)
    assert torch.equal(seq.topk_ids[:, 0], out.logits[0].argmax(-1))
    greedy_rows = [s for s in trained.seqs if s["prompt_len"] < len(s["tokens"])]
    assert greedy_rows and all(len(s["hidden"]) == len(s["tokens"]) for s in trained.seqs)


def test_training_lowers_the_loss(trained):
    steps = [h for h in trained.history if "valid" not in h]
    mean = lambda rows, key: sum(h[key] for h in rows) / len(rows)  # noqa: E731
    for key in ("reg1", "reg2"):  # the token loss has the target's entropy as its floor
        assert mean(steps[-5:], key) < 0.9 * mean(steps[:5], key), key
    assert mean(steps[-5:], "acc1") > mean(steps[:5], "acc1") + 0.1


def test_weights_round_trip(trained, tmp_path):
    head = trained.head
    exact = FeatureHead.load(head.save(tmp_path / "fp32.safetensors", dtype=torch.float32))
    for name, value in head.state_dict().items():
        assert torch.equal(exact.state_dict()[name], value), name
    half = FeatureHead.load(trained.root / "head.safetensors")  # what train() wrote: fp16
    for name, value in head.state_dict().items():
        torch.testing.assert_close(half.state_dict()[name], value.half().float(), atol=0, rtol=0)
    from safetensors import safe_open

    with safe_open(str(trained.root / "head.safetensors"), framework="pt") as f:
        assert not any("embed" in k or "lm_head" in k for k in f.keys())  # never the target's own weights


def test_training_resumes_from_its_checkpoint(context_target, trained, tmp_path):
    # the checkpoint says 40 steps are done: asking for 40 again trains nothing and gives the same head
    cfg = TrainConfig(steps=40, batch_tokens=256, vocab=0, seed=0, lr=1e-2)
    again = train(context_target, trained.data, cfg, tmp_path / "again.safetensors", trained.root / "work",
                  log=lambda *_: None, intermediate=64)
    for name, value in trained.head.state_dict().items():
        assert torch.equal(again["head"].state_dict()[name], value), name


# --- the head's cache: incremental drafting equals recomputing from scratch -----------------------

def from_scratch(head: FeatureHead, target, committed: list[int], feats: torch.Tensor, extra: list[int]):
    """Logits after committed + extra with no cache: pairs j < len(feats) use the target's f_j, later
    pairs the head's own output of the pair before."""
    lm = HeadLM(head, target, target.config.vocab_size)
    seq = committed + extra
    outs = []
    with torch.no_grad():
        for j in range(len(seq) - 1):
            f = feats[j] if j < len(feats) else outs[-1]
            emb = lm.embed[torch.tensor(seq[1: j + 2])][None]
            fs = torch.stack([feats[i] if i < len(feats) else outs[i - 1] for i in range(j)] + [f])[None]
            out, _, _ = head(emb, fs, torch.arange(j + 1), causal=True)
            outs.append(out[0, -1])
    return lm.logits(outs[-1][None])[0]


def test_cached_chain_and_tree_logits_match_recomputation(context_target):
    head = random_head(HeadConfig.for_target(context_target.config, 64), seed=3)
    committed = [1, 5, 7, 3, 9, 2]
    with torch.no_grad():
        feats = context_target(torch.tensor([committed]), output_hidden_states=True).hidden_states[-1][0]
    lm = HeadLM(head, context_target, context_target.config.vocab_size)
    lm.set_features(0, feats[:-1])  # the last committed token is not fed yet, as in the engine
    root, _ = lm.forward(committed)
    torch.testing.assert_close(root, from_scratch(head, context_target, committed, feats[:-1], []), atol=1e-5,
                               rtol=1e-5)
    logits, _ = lm.forward(committed + [4])  # a chain step on the head's own guess
    torch.testing.assert_close(logits, from_scratch(head, context_target, committed, feats[:-1], [4]), atol=1e-5,
                               rtol=1e-5)
    lm.drop_tree()
    lm.forward(committed)
    tokens, parents = [4, 8, 11, 6], [-1, -1, 0, 1]
    _, rows = lm.forward(committed, tokens[:2], parents[:2])
    _, more = lm.forward(committed, tokens[2:], parents[2:])
    rows = torch.cat([rows, more])
    for node in range(len(tokens)):
        path = [tokens[i] for i in path_to(parents, node)]
        want = from_scratch(head, context_target, committed, feats[:-1], path)
        torch.testing.assert_close(rows[node], want, atol=1e-5, rtol=1e-5)
    # new target features replace the guesses: the cache keeps only pairs fed true features
    lm.set_features(len(committed) - 1, feats[-1:])
    assert lm.cache_length() == len(committed) - 1 and lm.true_pairs == len(committed) - 1


# --- lossless: greedy equals AR on tiny targets, for every shape ------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_greedy_equals_autoregressive_on_a_context_dependent_target(context_target, trained, shape):
    accepted = 0
    for head in (trained.head, random_head(trained.head.config, 1)):
        for prompt in PROMPTS:
            want = reference_greedy(context_target, prompt, 30)
            drafter = make_feature_drafter(context_target, head=head, shape=shape, draft_len=3)
            result = Engine(context_target, decode, drafter).run(prompt, Settings(30))
            assert result.token_ids == want, (shape, prompt)
            assert result.metrics.steps > 0 and drafter.forward_seconds > 0
            accepted += result.metrics.accepted
    assert accepted > 0  # the trained head's drafts were used, not just verified away


def test_reduced_vocabulary_drafts_only_its_tokens(context_target):
    ids = torch.arange(0, context_target.config.vocab_size, 2)
    head = random_head(HeadConfig.for_target(context_target.config, 64), 2, vocab_ids=ids)
    drafter = make_feature_drafter(context_target, head=head, shape="gumbel-top-k", draft_len=3)
    engine = Engine(context_target, decode, drafter)
    for prompt in PROMPTS:
        assert engine.run(prompt, Settings(30)).token_ids == reference_greedy(context_target, prompt, 30)
    result = engine.run(PROMPTS[0], Settings(30, temperature=1.0, seed=1))
    drafted = [n.token for ev in result.events if type(ev).__name__ == "Drafted" for n in ev.nodes]
    assert drafted and all(t % 2 == 0 for t in drafted)


def test_step_zero_drafts_nothing(context_target, trained):
    drafter = make_feature_drafter(context_target, head=trained.head, shape="chain", draft_len=3)
    result = Engine(context_target, decode, drafter).run(PROMPTS[0], Settings(10))
    sizes = [len(ev.nodes) for ev in result.events if type(ev).__name__ == "Drafted"]
    assert sizes[0] == 0 and max(sizes) == 3


def test_stop_rule_bounds_the_rounds(context_target, trained):
    from specviz.stop_rules import make_stop_rule

    drafter = make_feature_drafter(context_target, head=trained.head, shape="chain", draft_len=3)
    engine = Engine(context_target, decode, drafter, stop=make_stop_rule("schedule", 2))
    result = engine.run(PROMPTS[3], Settings(30))
    assert result.token_ids == reference_greedy(context_target, PROMPTS[3], 30)
    notes = [ev.stop for ev in result.events if type(ev).__name__ == "Drafted" and ev.nodes]
    assert notes and all(n["rule"] == "schedule" and n["depth"] <= 32 for n in notes)


# --- lossless sampling: the exact output distribution, chains and a tree ---------------------------

class FeatureBigram(BigramLM):
    """The bigram target of the distribution tests, plus hidden states and embeddings for a head."""

    def __init__(self, vocab: int, seed: int, hidden: int = 8):
        super().__init__(vocab, seed)
        gen = torch.Generator().manual_seed(seed + 7)
        self.feat = torch.nn.Parameter(torch.randn(vocab, 64, hidden, generator=gen))
        self.emb = torch.nn.Embedding(vocab, hidden)
        self.out = torch.nn.Linear(hidden, vocab, bias=False)
        self.config.hidden_size = hidden

    def get_input_embeddings(self):
        return self.emb

    def get_output_embeddings(self):
        return self.out

    def forward(self, input_ids, position_ids, logits_to_keep=0, output_hidden_states=False, **kw):
        out = super().forward(input_ids, position_ids, logits_to_keep)
        if output_hidden_states:
            out.hidden_states = (self.feat[input_ids, position_ids % 64],)
        return out


SAMPLES = 3000  # a few head forwards per run: fewer runs than the model-free tests, the same test


@pytest.mark.parametrize("shape,warp", [("chain", dict(temperature=0.8, top_p=0.9)),
                                        ("gumbel-top-k", dict(temperature=1.0))])
def test_sampling_matches_target_distribution(shape, warp, monkeypatch):
    import test_lossless_sampling as lossless

    monkeypatch.setattr(lossless, "SAMPLES", SAMPLES)
    target = FeatureBigram(6, seed=0)
    head = random_head(HeadConfig(hidden=8, heads=2, kv_heads=1, intermediate=16, vocab=6), seed=4, std=0.8)
    drafter = make_feature_drafter(target, head=head, shape=shape, draft_len=2)
    engine = Engine(target, str, drafter, rule="sampling")
    pvalue, tvd = lossless.chi_square(engine, Settings(lossless.N_TOKENS, **warp))
    print(f"eagle {shape} {warp}: chi-square p={pvalue:.3g} tvd={tvd:.4f}")
    assert pvalue > 1e-3


def test_a_broken_verifier_fails_the_same_sampling_test(monkeypatch):
    import test_lossless_sampling as lossless
    from specviz.verify import verify_sampling

    monkeypatch.setattr(lossless, "SAMPLES", SAMPLES)
    target = FeatureBigram(6, seed=0)
    head = random_head(HeadConfig(hidden=8, heads=2, kv_heads=1, intermediate=16, vocab=6), seed=4, std=0.8)

    def accept_everything(tree, p_rows, gen):  # q's tokens pass unchecked: drafts leak into the output
        flat = torch.zeros_like(p_rows)
        for parent, q in tree.q.items():
            flat[parent + 1] = q
        flat[flat.sum(-1) == 0] = p_rows[flat.sum(-1) == 0]
        return verify_sampling(tree, flat, gen)

    drafter = make_feature_drafter(target, head=head, shape="chain", draft_len=2)
    pvalue, _ = lossless.chi_square(Engine(target, str, drafter, rule=accept_everything),
                                    Settings(lossless.N_TOKENS, temperature=1.0))
    assert pvalue < 1e-6


# --- the real target with the shipped head --------------------------------------------------------

SMOL_PROMPTS = ["Write a Python function that returns the squares of a list of numbers.",
                "Explain what a compiler does in three sentences."]


@pytest.mark.skipif(models.status("smollm2-135m") != "ready" or not default_weights().exists(),
                    reason="SmolLM2-135M or the shipped head is not installed")
@pytest.mark.parametrize("shape", ["chain", "dynamic"])
def test_shipped_head_is_lossless_on_smollm2(shape):
    from specviz.api import encode_prompt, load_model

    model, tokenizer, _ = load_model("smollm2-135m")
    drafter = make_feature_drafter(model, shape=shape, draft_len=4)
    decode_text = lambda ids: tokenizer.decode(ids)  # noqa: E731
    for text in SMOL_PROMPTS:
        ids = encode_prompt(tokenizer, text, True)
        ar = Engine(model, decode_text).run(ids, Settings(40))
        spec = Engine(model, decode_text, drafter).run(ids, Settings(40))
        if spec.token_ids != ar.token_ids:  # allowed only at a numerical near-tie (see NOTES.md)
            k = next(i for i, (a, b) in enumerate(zip(ar.token_ids, spec.token_ids)) if a != b)
            with torch.no_grad():
                logits = model(torch.tensor([ids + ar.token_ids[:k]])).logits[0, -1]
            top2 = logits.topk(2).values
            assert float(top2[0] - top2[1]) < 1e-3, (text, k)
        assert spec.metrics.accepted > 0


# --- training data never contains an evaluation prompt --------------------------------------------

def shingles(text: str, n: int = 8) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i: i + n]) for i in range(len(words) - n + 1)}


def test_no_training_instruction_contains_an_evaluation_prompt():
    from specviz.prompts import evaluation_prompts
    from specviz.train.sources import shares_material, wide_instructions

    evaluation = evaluation_prompts()  # both sets: the tuning prompts and the held-out ones
    assert len(evaluation) >= 40
    training = [row["prompt"] for row in wide_instructions()]
    assert len(training) > 5000
    # the check itself catches a copied span, not just a copied prompt
    assert shares_material(["Please do this: " + evaluation[5][:200]], evaluation)
    assert len(training) > 500
    for text in training:
        for e in evaluation:
            assert e not in text and text not in e, text[:80]
    # nor any eight-word run of an evaluation prompt's material (its lines after the task line)
    material = set().union(*(shingles(e.split("\n", 1)[1]) for e in evaluation if "\n" in e))
    clash = [t[:60] for t in training if shingles(t) & material]
    assert not clash, clash
    manifest = distill.data_dir("smollm2-135m") / "manifest.json"
    if manifest.exists():  # the data made on this machine: its own instructions pass the same check
        stored = [row["prompt"] for row in json.loads(manifest.read_text())["instructions"]]
        assert len(stored) > 5000 and not shares_material(stored, evaluation)


# --- EAGLE-3: fused low/middle/last states, training-time test -------------------------------------

def test_v2_shards_hold_the_fused_layers(context_target, trained3):
    seq = trained3.seqs[0]
    with torch.no_grad():
        out = context_target(torch.tensor([seq["tokens"].tolist()]), output_hidden_states=True)
    for layer in trained3.layers:
        torch.testing.assert_close(seq[f"layer{layer}"].float(), out.hidden_states[layer][0], atol=2e-2, rtol=2e-2)
    assert trained3.head.config.layers == tuple(trained3.layers) + (-1,)


def test_eagle3_training_lowers_the_loss_at_every_unrolled_step(trained3):
    steps = [h for h in trained3.history if "valid" not in h]
    mean = lambda rows, key: sum(h[key] for h in rows) / len(rows)  # noqa: E731
    for k in (1, 2, 3):
        assert mean(steps[-5:], f"ce{k}") < 0.9 * mean(steps[:5], f"ce{k}"), k
    assert mean(steps[-5:], "acc1") > mean(steps[:5], "acc1") + 0.1


def test_training_time_test_computes_what_drafting_computes(context_target, trained3):
    """Step k of the unrolled training pass at base j equals the head drafting the teacher's tokens
    x_{j+2} .. x_{j+k} after the committed text x_0 .. x_{j+1}, through HeadLM's cache."""
    from specviz.train.eagle import collate3, ttt_outputs

    head = trained3.head
    seq = trained3.data.sequences().__next__()
    row = {"tokens": seq.tokens, "ids": seq.topk_ids, "logp": seq.topk_logp.float(), "prompt_len": seq.prompt_len,
           "states": torch.cat([seq.layers[L] for L in trained3.layers] + [seq.hidden], -1)}
    lookup = torch.arange(context_target.config.vocab_size)
    embed = context_target.get_input_embeddings().weight.detach()
    with torch.no_grad():
        outs = ttt_outputs(head, collate3([row], lookup, embed, 3), 3)
    tokens = seq.tokens.tolist()
    for j in (3, 9, 15):
        want = torch.stack([HeadLM(head, context_target, 32).logits(outs[k][0, j][None])[0] for k in range(3)])
        lm = HeadLM(head, context_target, context_target.config.vocab_size)
        lm.set_features(0, row["states"][: j + 1].float())
        root, _ = lm.forward(tokens[: j + 2])
        _, first = lm.forward(tokens[: j + 2], [tokens[j + 2]], [-1])  # the builders grow a tree level by level
        _, second = lm.forward(tokens[: j + 2], [tokens[j + 3]], [0])
        nodes = torch.cat([first, second])
        torch.testing.assert_close(root, want[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(nodes, want[1:], atol=1e-4, rtol=1e-4)


def test_fused_head_round_trips_and_is_lossless(context_target, trained3, tmp_path):
    head = FeatureHead.load(trained3.head.save(tmp_path / "h3.safetensors", dtype=torch.float32))
    assert head.config.layers == trained3.head.config.layers and head.config.fused
    for name, value in trained3.head.state_dict().items():
        assert torch.equal(head.state_dict()[name], value), name
    accepted = 0
    for shape in ("chain", "dynamic"):
        for prompt in PROMPTS:
            drafter = make_feature_drafter(context_target, head=head, shape=shape, draft_len=3)
            assert drafter.reads_target == head.config.layers
            result = Engine(context_target, decode, drafter).run(prompt, Settings(30))
            assert result.token_ids == reference_greedy(context_target, prompt, 30), (shape, prompt)
            accepted += result.metrics.accepted
    assert accepted > 0


def test_head_computes_in_the_targets_dtype(trained3):
    """A CPU cannot show a device slip, but a dtype slip is the same kind of bug: with the target in
    float64 every tensor the head keeps (buffers, features, cache) is float64, and greedy stays exact."""
    import copy

    target = copy.deepcopy(tiny_llama(0)).double()
    head = trained3.head
    for shape in ("chain", "dynamic"):
        drafter = make_feature_drafter(target, head=copy.deepcopy(head), shape=shape, draft_len=3)
        for prompt in PROMPTS[:2]:
            result = Engine(target, decode, drafter).run(prompt, Settings(20))
            assert result.token_ids == reference_greedy(target, prompt, 20), (shape, prompt)
        lm = drafter.lm
        assert {t.dtype for t in (lm.feats, lm.outs, lm.kv_buf[0], lm.readout)} == {torch.float64}
        assert all(p.dtype == torch.float64 for p in lm.head.parameters())


def test_a_warm_start_begins_from_the_given_head(context_target, trained, trained3, tmp_path):
    init = trained3.root / "head3.safetensors"
    start = FeatureHead.load(init)
    frozen = TrainConfig(steps=1, batch_tokens=256, vocab=0, seed=0, lr=0.0, recipe="eagle3", init=str(init))
    out = train(context_target, trained3.data, frozen, tmp_path / "h.safetensors", tmp_path / "w0",
                log=lambda *_: None, intermediate=64)
    for name, value in start.state_dict().items():  # lr 0: one step leaves the loaded weights as they were
        assert torch.equal(out["head"].state_dict()[name], value), name
    cold = TrainConfig(steps=1, batch_tokens=256, vocab=0, seed=0, lr=0.0, recipe="eagle3")
    fresh = train(context_target, trained3.data, cold, tmp_path / "c.safetensors", tmp_path / "w1",
                  log=lambda *_: None, intermediate=64)
    assert out["history"][0]["loss"] < fresh["history"][0]["loss"]  # it starts where the trained head ended
    with pytest.raises(ValueError, match="another shape"):  # an EAGLE-1 head cannot start an EAGLE-3 run
        train(context_target, trained3.data, TrainConfig(steps=1, batch_tokens=256, vocab=0, recipe="eagle3",
                                                         init=str(trained.root / "head.safetensors")),
              tmp_path / "x.safetensors", tmp_path / "w2", log=lambda *_: None, intermediate=64)


def test_a_time_budget_ends_training_and_writes_the_head(context_target, trained, tmp_path):
    # max_seconds: the schedule runs on elapsed time, training stops at the budget with the head written
    cfg = TrainConfig(steps=100_000, batch_tokens=256, vocab=0, seed=0, lr=1e-2, max_seconds=1.0, checkpoint_every=50)
    result = train(context_target, trained.data, cfg, tmp_path / "budget.safetensors", tmp_path / "work",
                   log=lambda *_: None, intermediate=64)
    done = [h["step"] for h in result["history"] if "valid" not in h]
    assert 0 < done[-1] < 100_000 and done == list(range(1, done[-1] + 1))
    head = FeatureHead.load(tmp_path / "budget.safetensors")
    for name, value in result["head"].state_dict().items():
        torch.testing.assert_close(head.state_dict()[name], value.half().float(), atol=0, rtol=0)


def test_rows_of_one_batch_do_not_interact(context_target):
    # a GPU makes data in batches of 8 shards: a row's greedy response and records must not depend on
    # which other rows share its batch
    gen = torch.Generator().manual_seed(3)
    vocab = context_target.config.vocab_size
    prompts = [torch.randint(1, vocab, (n,), generator=gen).tolist() for n in (3, 7, 5, 8)]
    together = distill.generate_batch(context_target, prompts, [0.0] * 4, eos=set(), pad=0, max_new_tokens=12,
                                      gen=torch.Generator().manual_seed(0), top_k=8)
    for i, p in enumerate(prompts):
        alone = distill.generate_batch(context_target, [p], [0.0], eos=set(), pad=0, max_new_tokens=12,
                                       gen=torch.Generator().manual_seed(0), top_k=8)[0]
        assert torch.equal(alone["tokens"], together[i]["tokens"])
        torch.testing.assert_close(alone["hidden"].float(), together[i]["hidden"].float(), atol=2e-2, rtol=2e-2)


def test_continuous_batching_records_what_the_padded_batch_records():
    # the CPU data route (fast path, one slot per job, a finished slot takes the next prompt) must record
    # what the padded batch records: the same greedy tokens, the same states and top-K, EOS honoured
    model = tiny_llama(5, layers=3)
    gen = torch.Generator().manual_seed(4)
    vocab = model.config.vocab_size
    prompts = [torch.randint(1, vocab, (n,), generator=gen).tolist() for n in (3, 9, 5, 12, 4, 7, 6)]
    layers = (1, 2)
    free = distill.generate_batch(model, prompts, [0.0] * len(prompts), eos=set(), pad=0, max_new_tokens=10,
                                  gen=torch.Generator().manual_seed(0), top_k=8)
    eos = {int(free[0]["tokens"][len(prompts[0]) + 3])}  # row 0 stops early; rows without it run to the limit
    ref = distill.generate_batch(model, prompts, [0.0] * len(prompts), eos=eos, pad=0, max_new_tokens=10,
                                 gen=torch.Generator().manual_seed(0), top_k=8, layers=layers)
    got = dict(distill.generate_slots(model, prompts, [0.0] * len(prompts), eos, 10, [None] * len(prompts),
                                      top_k=8, layers=layers, slots=3))
    assert sorted(got) == list(range(len(prompts)))
    stopped = 0
    for i, r in enumerate(ref):
        g = got[i]
        assert torch.equal(g["tokens"], r["tokens"]) and g["prompt_len"] == r["prompt_len"]
        stopped += int(r["tokens"][-1]) in eos
        assert g["hidden"].shape[0] == len(g["tokens"])
        for key in ("hidden", "topk_logp", "layer1", "layer2"):
            torch.testing.assert_close(g[key].float(), r[key].float(), atol=2e-3, rtol=2e-3)
        assert (g["topk_ids"] == r["topk_ids"]).float().mean() > 0.95  # near-ties may swap order
    assert stopped and any(len(r["tokens"]) - r["prompt_len"] == 10 for r in ref)


def test_sampled_jobs_draw_the_same_tokens_whatever_shares_their_slots():
    model = tiny_llama(6)
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(1, 32, (n,), generator=gen).tolist() for n in (4, 6, 3, 8)]

    def run(idx, slots):
        gens = [torch.Generator().manual_seed(100 + j) for j in idx]
        out = dict(distill.generate_slots(model, [prompts[j] for j in idx], [1.0] * len(idx), set(), 12, gens,
                                          top_k=4, slots=slots))
        return {j: out[k]["tokens"] for k, j in enumerate(idx)}

    together = run([0, 1, 2, 3], 2)
    alone = {j: run([j], 1)[j] for j in range(4)}
    assert all(torch.equal(together[j], alone[j]) for j in range(4))
    assert len({tuple(t.tolist()[len(prompts[j]):]) for j, t in together.items()}) > 1


def test_the_data_sampler_draws_from_the_tempered_distribution():
    # one uniform per draw (inverse CDF) in place of torch.multinomial: the same distribution, and a token
    # with no probability is never drawn
    logits = torch.tensor([2.0, 0.5, -1.0, 1.0, float("-inf")])
    gen = torch.Generator().manual_seed(0)
    n = 40_000
    for t in (1.0, 0.7):
        p = (logits / t).softmax(-1)
        counts = torch.bincount(torch.tensor([distill.draw(logits, t, gen) for _ in range(n)]), minlength=5).double()
        assert counts[4] == 0
        sd = (n * p * (1 - p)).sqrt()
        assert ((counts - n * p).abs() <= 4 * sd + 1e-9).all(), (t, counts / n, p)


# --- merged trees: the head's tree with an n-gram tree grafted on (SpecInfer's merge) -------------

def test_graft_shares_prefixes_and_keeps_parents_first():
    from specviz.drafters.merged import graft
    from specviz.tree import DraftTree

    head = DraftTree()
    a = head.add(5, -1)
    head.add(6, a)
    head.add(7, -1)
    other = DraftTree()
    x = other.add_certain(5, -1, 16)  # shared with the head's first node
    y = other.add_certain(9, x, 16)  # new under a shared node
    other.add_certain(3, y, 16)  # new under a new node
    other.add_certain(7, -1, 16)  # shared
    merged, source = graft(head, other, 16)
    assert merged.tokens == [5, 6, 7, 9, 3] and merged.parents == [-1, 0, -1, 0, 3]
    assert source == [0, 0, 0, 1, 1]
    assert all(p < i for i, p in enumerate(merged.parents))
    assert merged.q_of(3)[9] == 1.0 and merged.q_of(4)[3] == 1.0  # grafted nodes are certain proposals


def test_merged_tree_is_lossless_and_its_grafted_nodes_are_accepted(context_target, trained3):
    from specviz.drafters.merged import MergedDrafter
    from specviz.drafters.ngram import NgramDrafter

    vocab = context_target.config.vocab_size
    grafted_accepted = 0
    for prompt in PROMPTS + [[3, 8, 1, 6, 2] * 4]:
        want = reference_greedy(context_target, prompt, 30)
        head = make_feature_drafter(context_target, head=trained3.head, shape="dynamic", draft_len=2)
        drafter = MergedDrafter(head, NgramDrafter(vocab, None, budget=6, width=4, min_expected=0.0), vocab, "m")
        result = Engine(context_target, decode, drafter).run(prompt, Settings(30))
        assert result.token_ids == want, prompt
        assert drafter.reads_target == trained3.head.config.layers
        grafted_accepted += drafter.grafted_accepted
        drafted = [ev for ev in result.events if type(ev).__name__ == "Drafted"]
        sources = {n.source for ev in drafted for n in ev.nodes}
        assert "second drafter" in sources and sources <= {"first drafter", "second drafter", "both"}
        assert all(ev.sources == ["first drafter", "second drafter"] for ev in drafted if any(n.source for n in ev.nodes))
    assert grafted_accepted > 0  # the graft's own nodes were used, not just verified away


@pytest.mark.parametrize("shape", ["chain", "gumbel-top-k"])
def test_merged_tree_sampling_matches_target_distribution(shape, monkeypatch):
    """The whole engine with a merged drafter under sampling: the distribution test passes."""
    import test_lossless_sampling as lossless

    from specviz.drafters.merged import MergedDrafter
    from specviz.drafters.ngram import NgramDrafter

    monkeypatch.setattr(lossless, "SAMPLES", SAMPLES)
    target = FeatureBigram(6, seed=0)
    head = random_head(HeadConfig(hidden=8, heads=2, kv_heads=1, intermediate=16, vocab=6), seed=4, std=0.8)
    drafter = MergedDrafter(make_feature_drafter(target, head=head, shape=shape, draft_len=2),
                            NgramDrafter(6, None, budget=4, width=2, prior=0.0, min_expected=0.0), 6, "m")
    pvalue, tvd = lossless.chi_square(Engine(target, str, drafter, rule="sampling"),
                                      Settings(lossless.N_TOKENS, temperature=1.0), lossless.TREE_PROMPT)
    print(f"merged {shape}: chi-square p={pvalue:.3g} tvd={tvd:.4f}")
    assert pvalue > 1e-3


def test_a_confident_graft_drafts_alone(context_target, trained3):
    """Where the counts expect enough accepted drafts, the head is not asked; below that it is, and
    decoding stays exact either way."""
    from specviz.drafters.merged import MergedDrafter
    from specviz.drafters.ngram import NgramDrafter
    from specviz.sampling import Warp

    vocab = context_target.config.vocab_size
    head = make_feature_drafter(context_target, head=trained3.head, shape="dynamic", draft_len=2)
    asked = []
    propose = head.propose
    head.propose = lambda *a, **k: asked.append(1) or propose(*a, **k)
    counts = NgramDrafter(vocab, None, budget=6, width=4, prior=0.0, min_expected=0.0)
    prompt = [3, 8, 1, 6, 2] * 4
    drafter = MergedDrafter(head, counts, vocab, "m", alone_above=2.0)
    tree = drafter.propose(prompt, Warp(), torch.Generator())
    assert counts.last_expected >= 2.0 and tree.tokens[:3] == [3, 8, 1] and not asked
    assert drafter.grafted == len(tree)
    drafter.alone_above = 100.0
    drafter.propose(prompt, Warp(), torch.Generator())
    assert asked
    for alone in (2.0, 100.0):
        drafter = MergedDrafter(head, counts, vocab, "m", alone_above=alone)
        result = Engine(context_target, decode, drafter).run(prompt, Settings(30))
        assert result.token_ids == reference_greedy(context_target, prompt, 30)


def test_teacher_forced_guesses_are_what_the_served_head_drafts(context_target, trained3):
    # specviz.train.agreement scores the head on the target's own greedy text in one forward; each guess must
    # be the token the served head drafts (a chain of 1) at the same place, so the agreement it reports is the
    # head's, with the serving taken out
    from specviz.events import Drafted, Emitted
    from specviz.train.agreement import agreement, first_guesses

    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    drafter = make_feature_drafter(context_target, head=trained3.head, shape="chain", draft_len=1)
    result = Engine(context_target, decode, drafter).run(prompt, Settings(24, stop_at_eos=False))
    guesses = first_guesses(context_target, trained3.head, prompt + result.token_ids)
    committed, checked = len(prompt), 0
    for ev in result.events:
        if isinstance(ev, Drafted) and ev.nodes:
            assert ev.nodes[0].token == int(guesses[committed - 2]), committed
            checked += 1
        elif isinstance(ev, Emitted):
            committed += len(ev.tokens)
    assert checked > 5
    counts = agreement(context_target, lambda text: [int(t) for t in text.split()], trained3.head,
                       [{"category": "a", "prompt": "3 1 4 1 5 9 2 6"}, {"category": "b", "prompt": "2 7 1 8"}], 16)
    assert counts["all"][1] == counts["a"][1] + counts["b"][1] == 32
    assert counts["all"][0] == counts["a"][0] + counts["b"][0]


def test_drafters_of_one_weights_file_share_its_binding_and_stay_exact(context_target, tmp_path):
    """A server builds a drafter per run (and `auto` one per head arm): heads loaded from the same file
    share one loaded head and one binding to the target (readout rows, packed matrices); each drafter
    keeps its own cache, and output stays AR's. A target in another dtype gets a binding of its own."""
    import copy
    import gc
    import weakref

    from specviz.drafters.feature_head import load_shared

    config = HeadConfig(hidden=context_target.config.hidden_size, heads=4, kv_heads=2, intermediate=16,
                        vocab=context_target.config.vocab_size)
    path = random_head(config, seed=5, std=0.5).save(tmp_path / "h.safetensors")
    a = make_feature_drafter(context_target, path, shape="chain", draft_len=3)
    b = make_feature_drafter(context_target, path, shape="dynamic", draft_len=2)
    assert load_shared(path) is load_shared(path)
    assert a.lm.readout is b.lm.readout and a.lm.lean is b.lm.lean and a.lm.kv_buf[0] is not b.lm.kv_buf[0]
    settings = Settings(max_new_tokens=24)
    for prompt in ([1, 2, 3, 4], [5, 9, 5, 9, 5, 2, 7]):
        want = Engine(context_target, str).run(prompt, settings).token_ids
        for drafter in (a, b, a):
            assert Engine(context_target, str, drafter).run(prompt, settings).token_ids == want
    wide = copy.deepcopy(context_target).double()
    c = make_feature_drafter(wide, path, shape="chain", draft_len=3)
    assert c.lm.readout.dtype == torch.float64 and a.lm.readout.dtype == torch.float32
    assert c.lm.head is not a.lm.head and next(a.lm.head.parameters()).dtype == torch.float32
    assert Engine(context_target, str, a).run([1, 2, 3, 4], settings).token_ids == \
        Engine(context_target, str).run([1, 2, 3, 4], settings).token_ids
    gone = weakref.ref(wide)
    del c, wide
    gc.collect()
    assert gone() is None  # a binding does not keep a target the model cache let go of
