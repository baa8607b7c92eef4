"""`python -m specviz train-drafter del`: exit adapters for DEL (specviz.drafters.early_exit) by KD.

    python -m specviz train-drafter del --steps 300 --batch-tokens 512 --threads 1

Data: the distillation shards of specviz.train.data (the target's own outputs with its top-32
log-probs at every position; no evaluation prompt: `check_no_evaluation_prompts`), the same
train / validation split by instruction as the other trained drafters. The hidden states of the
candidate exit layers are not stored: one teacher-forced forward of the target's first Lmax
layers per sequence (specviz.drafters.early_exit.exit_states, the drafter's own inference code)
recomputes them at the start of each run, in memory (fp16), for up to `max_tokens` positions.

Every adapter learns on the same rows: forward KL from the target's top-K distribution
(renormalized over the kept tokens) to the adapter's readout over the K = 8,192 kept tokens.
Seeded, resumable (atomic checkpoint every CHECKPOINT_EVERY steps), progress bar, loss curve PNG,
fp16 weights with per-layer held-out figures in their metadata (the drafter's priors).
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..drafters.early_exit import ExitAdapters, exit_states, param_count
from . import distill
from .data import DistillSet

LAYERS = (8, 12, 16, 20, 24)
CHECKPOINT_EVERY = 50
WARMUP = 20


@dataclass
class TrainConfig:
    steps: int = 300
    batch_tokens: int = 512  # rows (positions) per step, the same rows for every adapter
    lr: float = 2e-3
    seed: int = 0
    layers: tuple = LAYERS
    vocab: int = distill.VOCAB
    max_tokens: int = 40_000  # training positions whose states are recomputed (a seeded sample of sequences)
    max_valid: int = 6_000
    threads: int = 0


def _take(seqs: list[dict], limit: int, rng: random.Random) -> list[dict]:
    order = list(range(len(seqs)))
    rng.shuffle(order)
    out, total = [], 0
    for i in order:
        if total >= limit:
            break
        out.append(seqs[i])
        total += len(seqs[i]["tokens"]) - 1
    return out


def collect(target_model, seqs: list[dict], layers: tuple[int, ...], lookup: torch.Tensor, progress=None) -> dict:
    """Rows of every sequence (position i predicts token i + 1): states per layer (fp16), the target's
    top-K ids in the kept vocabulary (-1 outside) and probabilities."""
    states = {c: [] for c in layers}
    ids, prob = [], []
    bar = progress(seqs) if progress else seqs
    for s in bar:
        n = len(s["tokens"]) - 1
        out = exit_states(target_model, s["tokens"].tolist(), layers)
        for c in layers:
            states[c].append(out[c][:n].half())
        ids.append(lookup[s["ids"][:n]])
        prob.append(s["logp"][:n].exp())
    return {"states": {c: torch.cat(v) for c, v in states.items()}, "ids": torch.cat(ids), "probs": torch.cat(prob)}


def target_rows(ids: torch.Tensor, p: torch.Tensor, kept: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(p on the kept vocabulary [n, kept] (not renormalized), its mass, the target's top-1 (-1 outside))."""
    full = torch.zeros(ids.shape[0], kept)
    full.scatter_add_(-1, ids.clamp_min(0), p * (ids >= 0))
    return full, full.sum(-1, keepdim=True), ids[:, 0]


def layer_loss(adapters: ExitAdapters, i: int, readout: torch.Tensor, h: torch.Tensor, p: torch.Tensor,
               mass: torch.Tensor, top1: torch.Tensor) -> tuple[torch.Tensor, dict]:
    logq = F.linear(adapters.features(i, h.float()), readout).log_softmax(-1)
    p_norm = p / mass.clamp_min(1e-9)
    kl = (p_norm * (p_norm.clamp_min(1e-12).log() - logq)).sum(-1).mean()
    with torch.no_grad():
        q = logq.exp()
        tv = float((0.5 * (p - q).abs().sum(-1) + 0.5 * (1 - mass[:, 0])).mean())
        agree = float((logq.argmax(-1) == top1).float().mean())
    return kl, {"kl": float(kl.detach()), "tv": tv, "top1": agree}


@torch.no_grad()
def evaluate(adapters: ExitAdapters, readout: torch.Tensor, data: dict, chunk: int = 1024) -> dict:
    """Per layer and mean: kl, tv, top1 (agreement with the target's top token), overlap = 1 - tv."""
    kept = readout.shape[0]
    n = data["ids"].shape[0]
    sums: dict[str, float] = {}
    for a in range(0, n, chunk):
        p, mass, top1 = target_rows(data["ids"][a:a + chunk], data["probs"][a:a + chunk], kept)
        w = p.shape[0] / n
        for i, c in enumerate(adapters.layers):
            _, st = layer_loss(adapters, i, readout, data["states"][c][a:a + chunk], p, mass, top1)
            for k, v in st.items():
                sums[f"{k}@{c}"] = sums.get(f"{k}@{c}", 0.0) + w * v
    out = dict(sums)
    for k in ("kl", "tv", "top1"):
        out[k] = sum(sums[f"{k}@{c}"] for c in adapters.layers) / len(adapters.layers)
    return out


def train(target_model, data: DistillSet | list[DistillSet], cfg: TrainConfig, out: Path, work: Path,
          eos: set[int] = frozenset(), progress=None, log=print) -> dict:
    torch.set_flush_denormal(True)  # exp(top-K log-probs) and Adam moments underflow; undone below
    try:
        return _train(target_model, data, cfg, out, work, eos, progress, log)
    finally:
        torch.set_flush_denormal(False)


def _train(target_model, data, cfg: TrainConfig, out: Path, work: Path, eos, progress, log) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    sets = distill.as_sets(data)
    for one in sets:
        distill.check_no_evaluation_prompts(one.instructions_used())
    n_layers = int(target_model.config.num_hidden_layers)
    layers = tuple(sorted(c for c in cfg.layers if 1 <= c < n_layers))
    if not layers:
        raise ValueError(f"no candidate exit layer in 1 .. {n_layers - 1}: {cfg.layers}")
    torch.manual_seed(cfg.seed)
    train_all, valid_all = distill.load_sequences(data)
    vocab = int(target_model.config.vocab_size)
    vocab_ids = distill.frequent_tokens(train_all, cfg.vocab, vocab, set(eos))
    kept = len(vocab_ids)
    lookup = torch.full((vocab,), -1, dtype=torch.long)
    lookup[vocab_ids] = torch.arange(kept)
    train_seqs = _take(train_all, cfg.max_tokens, random.Random(cfg.seed + 1))
    valid_seqs = _take(valid_all, cfg.max_valid, random.Random(cfg.seed + 2))
    t0 = time.perf_counter()
    bar = (lambda desc: (lambda items: progress(items, desc=desc))) if progress else (lambda desc: None)
    train_data = collect(target_model, train_seqs, layers, lookup, bar("states (train)"))
    valid_data = collect(target_model, valid_seqs, layers, lookup, bar("states (valid)"))
    n_train = train_data["ids"].shape[0]
    log(f"del: exit layers {list(layers)}; {len(train_seqs)} training sequences ({n_train} positions of "
        f"{sum(len(s['tokens']) - 1 for s in train_all)}), {len(valid_seqs)} validation sequences "
        f"({valid_data['ids'].shape[0]} positions); states recomputed in {time.perf_counter() - t0:.0f} s; "
        f"readout {kept} tokens")
    readout = target_model.get_output_embeddings().weight.detach().float().index_select(0, vocab_ids).contiguous()
    adapters = ExitAdapters.for_target(target_model, layers, vocab_ids).float()
    params = list(adapters.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / WARMUP) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps)))))
    gen = torch.Generator().manual_seed(cfg.seed)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "checkpoint.pt"
    history: list[dict] = []
    start, seconds_before = 0, 0.0
    config = asdict(cfg) | {"layers": list(layers), "threads": None}
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        if state["config"] != config:
            raise ValueError(f"{ckpt} was written with other settings; delete {work} to start over")
        adapters.load_state_dict(state["adapters"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        history, start, seconds_before = state["history"], state["step"], state.get("seconds", 0.0)
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        log(f"resuming from step {start}")
    else:
        history.append({"step": 0, "valid": True, **evaluate(adapters, readout, valid_data)})
        log("init (raw early exit): valid " + " ".join(f"{k} {history[-1][k]:.3f}" for k in history[-1]
                                                       if k.startswith("top1@")))
    adapters.train()
    steps = range(start, cfg.steps)
    it = progress(steps, initial=start, total=cfg.steps, desc="train del") if progress else steps
    t1 = time.perf_counter()
    for step in it:
        idx = torch.randint(0, n_train, (cfg.batch_tokens,), generator=gen)
        p, mass, top1 = target_rows(train_data["ids"][idx], train_data["probs"][idx], kept)
        total, stats = 0.0, {}
        for i, c in enumerate(layers):
            kl, st = layer_loss(adapters, i, readout, train_data["states"][c][idx], p, mass, top1)
            total = total + kl
            stats.update({f"{k}@{c}": v for k, v in st.items()})
        loss = total / len(layers)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        for k in ("kl", "tv", "top1"):
            stats[k] = sum(stats[f"{k}@{c}"] for c in layers) / len(layers)
        stats["loss"] = float(loss.detach())
        history.append({"step": step + 1, **stats})
        if hasattr(it, "set_postfix"):
            it.set_postfix(kl=f"{stats['kl']:.3f}", top1=f"{stats['top1']:.2f}")
        if (step + 1) % CHECKPOINT_EVERY == 0 or step + 1 == cfg.steps:
            adapters.eval()
            history.append({"step": step + 1, "valid": True, **evaluate(adapters, readout, valid_data)})
            adapters.train()
            log(f"step {step + 1}: valid kl {history[-1]['kl']:.3f} " + " ".join(
                f"top1@{c} {history[-1][f'top1@{c}']:.3f}" for c in layers))
            tmp = work / ".checkpoint.pt.tmp"
            torch.save({"adapters": adapters.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "history": history, "step": step + 1, "gen": gen.get_state(),
                        "torch_rng": torch.get_rng_state(), "config": config,
                        "seconds": seconds_before + time.perf_counter() - t1}, tmp)
            os.replace(tmp, ckpt)
            (work / "history.json").write_text(json.dumps(history))
            distill.plot(history, work / "loss.png", f"del: {len(layers)} exit adapters, {cfg.steps} steps")
    adapters.eval()
    seconds = seconds_before + time.perf_counter() - t1
    valid = [h for h in history if "valid" in h]
    init, final = valid[0], valid[-1]
    adapters.prior = {c: {"top1": round(final[f"top1@{c}"], 4), "overlap": round(1 - final[f"tv@{c}"], 4)}
                      for c in layers}
    summary = {
        "kind": "del", "config": config, "layers": list(layers), "own_parameters": param_count(adapters),
        "head_tokens": kept,
        "data": {"sets": [{"dir": str(one.root), "shards": len(one.paths)} for one in sets],
                 "train_sequences": len(train_seqs), "valid_sequences": len(valid_seqs),
                 "train_positions": n_train, "valid_positions": int(valid_data["ids"].shape[0]),
                 "valid_every_instruction": distill.VALID_EVERY},
        "train_seconds": round(seconds),
        "per_layer": {c: {"raw_top1": init[f"top1@{c}"], "top1": final[f"top1@{c}"], "raw_kl": init[f"kl@{c}"],
                          "kl": final[f"kl@{c}"], "tv": final[f"tv@{c}"]} for c in layers},
    }
    adapters.save(out, {"train_seconds": summary["train_seconds"], "steps": cfg.steps})
    png = out.with_suffix(".loss.png")
    distill.plot(history, png, f"del: {len(layers)} exit adapters, {cfg.steps} steps (mean over layers)")
    return {"adapters": adapters, "summary": summary, "history": history, "png": png}


def run_from_cli(a, roots: list[Path]) -> int:
    """`python -m specviz train-drafter del` after the shared data step (specviz/train/cli.py)."""
    from ..api import eos_ids, load_model
    from ..drafters.early_exit import default_weights
    from ..models import cache_root
    from .card import log, progress_bar, write_card

    sets = [DistillSet(r, shards=a.shards if r == roots[-1] else 0) for r in roots]
    model, tokenizer, _ = load_model(a.target)
    cfg = TrainConfig(steps=a.steps, batch_tokens=a.batch_tokens, vocab=a.vocab or distill.VOCAB, seed=a.seed,
                      threads=a.threads, **({"max_tokens": a.positions} if getattr(a, "positions", None) else {}))
    out = Path(a.out) if a.out else default_weights(a.target)
    work = Path(a.work) if a.work else cache_root() / "train" / f"del-{Path(a.target).name}"
    result = train(model, sets, cfg, out, work, eos_ids(model, tokenizer),
                   progress=progress_bar(mininterval=10), log=log)
    card = write_card(a, cfg.vocab, result, out, log)
    for c, row in card["per_layer"].items():
        log(f"  exit layer {c}: held-out top-1 {row['raw_top1']:.3f} raw -> {row['top1']:.3f} with its adapter")
    return 0
