"""Train an EAGLE feature head (specviz.drafters.feature_head) on distillation data (specviz.train.data).

Loss per depth d (EAGLE): smooth L1 between the head's predicted feature and the target's
feature, plus W_TOKEN x the cross-entropy of the head's readout against the target's top-K
next-token distribution (renormalized over the readout's tokens). Depth 1 feeds the target's
features (with a little uniform noise, as EAGLE does); depth 2 feeds the head's own depth-1
predictions, so that drafting on its own guesses holds up (training-time unrolling, as in HASS /
EAGLE-3, here over all positions at once).

Everything is seeded; checkpoints are written atomically every CHECKPOINT_EVERY steps and a rerun
continues from the last one. The loss curve goes to a PNG beside the weights (needs matplotlib).
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..drafters.feature_head import FeatureHead, HeadConfig, readout_weight
from .data import DistillSet

LR = 1e-3
WARMUP = 50
WEIGHT_DECAY = 0.01
W_TOKEN = 0.5  # weight of the token loss against the feature loss
W_DEPTH2 = 0.7  # weight of the depth-2 (own predictions) loss
NOISE = 0.1  # uniform noise on input features, in units of their RMS
CLIP = 1.0
CHECKPOINT_EVERY = 100
VALID_EVERY_PROMPT = 20  # every 20th instruction is held out for validation


@dataclass
class TrainConfig:
    steps: int = 1500
    batch_tokens: int = 3072  # pairs per step (sequences packed up to this many rows, padded)
    vocab: int = 16384  # readout tokens (the most frequent of the data); 0 = the whole vocabulary
    seed: int = 0
    depth2: bool = True
    lr: float = LR
    recipe: str = "eagle1"  # "eagle1": last-layer feature regression (+ depth 2); "eagle3": fused layers, TTT
    ttt_steps: int = 3  # eagle3: unrolled steps on the head's own outputs, loss at every one
    device: str = "cpu"  # where the head trains (the data is moved there once)
    max_seconds: float = 0.0  # > 0: the schedule runs on max(step / steps, time / max_seconds) and ends at 1
    checkpoint_every: int = CHECKPOINT_EVERY
    init: str | None = None  # warm start: a trained head's weights and readout tokens (a checkpoint in `work` wins)
    history: list = field(default_factory=list)


def frequent_tokens(sets: list[DistillSet], size: int, vocab: int) -> torch.Tensor:
    """The `size` tokens most often in the data or the target's top-1 prediction, sorted by id."""
    counts = torch.zeros(vocab, dtype=torch.long)
    for data in sets:
        for seq in data.sequences(with_hidden=False):
            counts += torch.bincount(seq.tokens, minlength=vocab)
            counts += torch.bincount(seq.topk_ids[:, 0], minlength=vocab)
    return counts.topk(size).indices.sort().values


def split(sets: list[DistillSet], device: str = "cpu") -> tuple[list, list]:
    """(train, validation) sequences: validation = every VALID_EVERY_PROMPT-th instruction. A greedy
    response to the same instruction found in an earlier set (e.g. the corpus) is used once.
    The tensors go to `device` (fp16 states: ~3.5 kB a token for EAGLE-3)."""
    train, valid, seen = [], [], set()
    for data in sets:
        jobs = data.manifest["jobs"]
        for path in data.paths:
            t = data.shard(path)
            off = t["offsets"].tolist()
            for s in range(len(off) - 1):
                a, b = off[s], off[s + 1]
                job = jobs[int(t["job"][s])]
                key = (job["prompt"], job["temperature"])
                if job["temperature"] == 0 and key in seen:
                    continue
                seen.add(key)
                row = dict(tokens=t["tokens"][a:b].long(), hidden=t["hidden"][a:b],
                           ids=t["topk_ids"][a:b].long(), logp=t["topk_logp"][a:b].float(),
                           prompt_len=int(t["prompt_len"][s]))
                layers = [L for L in data.manifest.get("layers", []) if L != -1]
                if layers and all(f"layer{L}" in t for L in layers):  # EAGLE-3: low, middle, last
                    row["states"] = torch.cat([t[f"layer{L}"][a:b] for L in layers] + [row["hidden"]], -1)
                if device != "cpu":
                    row = {k: v.to(device) if torch.is_tensor(v) else v for k, v in row.items()}
                (valid if job["prompt"] % VALID_EVERY_PROMPT == 0 else train).append(row)
    return train, valid


def batches(seqs: list[dict], batch_tokens: int, rng: random.Random):
    """Endless batches of similar-length sequences, about batch_tokens pairs each."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]["tokens"]))
    groups, cur, longest = [], [], 0
    for i in order:
        n = len(seqs[i]["tokens"]) - 1
        if cur and max(longest, n) * (len(cur) + 1) > batch_tokens:
            groups.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    if cur:
        groups.append(cur)
    while True:
        rng.shuffle(groups)
        yield from groups


def readout_labels(s: dict, lookup: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's top-K after positions 1.. of a sequence, as readout rows and probabilities
    renormalized over the tokens the readout has."""
    sub = lookup[s["ids"][1:]]
    p = s["logp"][1:].exp() * (sub >= 0)
    return sub.clamp_min(0), p / p.sum(-1, keepdim=True).clamp_min(1e-9)


def collate(seqs: list[dict], lookup: torch.Tensor, embed: torch.Tensor):
    """Padded tensors for a list of sequences: pair j = (f_j, x_{j+1}) -> f_{j+1}, dist of x_{j+2}."""
    T = max(len(s["tokens"]) for s in seqs) - 1
    B, d, K = len(seqs), embed.shape[1], seqs[0]["ids"].shape[1]
    on = {"device": embed.device}
    feat_in = torch.zeros(B, T, d, **on)
    feat_out = torch.zeros(B, T, d, **on)
    tok = torch.zeros(B, T, dtype=torch.long, **on)
    ids = torch.zeros(B, T, K, dtype=torch.long, **on)
    probs = torch.zeros(B, T, K, **on)
    valid = torch.zeros(B, T, dtype=torch.bool, **on)
    for b, s in enumerate(seqs):
        n = len(s["tokens"]) - 1
        h = s["hidden"].float()
        feat_in[b, :n], feat_out[b, :n] = h[:-1], h[1:]
        tok[b, :n] = s["tokens"][1:]
        ids[b, :n], probs[b, :n] = readout_labels(s, lookup)
        valid[b, :n] = True
    return embed[tok], feat_in, feat_out, ids, probs, valid


def depth_losses(head: FeatureHead, readout: torch.Tensor, emb, feat_in, feat_out, ids, probs, valid):
    """(feature loss, token loss, top-1 agreement, predicted features) of one pass."""
    positions = torch.arange(emb.shape[1], device=emb.device)
    out, _, _ = head(emb, feat_in, positions, causal=True)
    m = valid
    reg = F.smooth_l1_loss(out[m], feat_out[m])
    logq = F.linear(out[m], readout).log_softmax(-1)
    ce = -(logq.gather(-1, ids[m]) * probs[m]).sum(-1).mean()
    agree = (logq.argmax(-1) == ids[m][:, 0]).float().mean()
    return reg, ce, agree, out


def step_loss(head, readout, batch, noise: float, gen: torch.Generator | None, depth2: bool):
    emb, feat_in, feat_out, ids, probs, valid = batch
    if noise and gen is not None:
        scale = feat_in.pow(2).mean().sqrt() * noise
        feat_in = feat_in + (torch.rand(feat_in.shape, generator=gen, device=gen.device) * 2 - 1) * scale
    reg1, ce1, acc1, out1 = depth_losses(head, readout, emb, feat_in, feat_out, ids, probs, valid)
    stats = {"reg1": reg1.item(), "ce1": ce1.item(), "acc1": acc1.item()}
    loss = reg1 + W_TOKEN * ce1
    if depth2:  # pair j now gets the head's own guess of f_j (its depth-1 output at pair j - 1)
        feat2 = torch.cat([feat_in[:, :1], out1[:, :-1]], 1)
        reg2, ce2, acc2, _ = depth_losses(head, readout, emb, feat2, feat_out, ids, probs, valid)
        loss = loss + W_DEPTH2 * (reg2 + W_TOKEN * ce2)
        stats.update(reg2=reg2.item(), ce2=ce2.item(), acc2=acc2.item())
    stats["loss"] = loss.item()
    return loss, stats


def collate3(seqs: list[dict], lookup: torch.Tensor, embed: torch.Tensor, steps: int):
    """EAGLE-3 batch. Pair j = (fused states at j, x_{j+1}); unrolled step k (1..steps) at base j feeds
    x_{j+k} at position j + k - 1 and is scored against the target's distribution of x_{j+k+1}.
    Returns states [B, T, n*d], tokens [B, T + steps] (x_{i+1} at i), label ids/probs [B, T + steps, K]
    (the distribution of x_{i+2} at i), and `scored` [B, T + steps]: response positions that exist."""
    T = max(len(s["tokens"]) for s in seqs) - 1
    B, K, W = len(seqs), seqs[0]["ids"].shape[1], T + steps
    on = {"device": embed.device}
    states = torch.zeros(B, T, seqs[0]["states"].shape[1], **on)
    tok = torch.zeros(B, W, dtype=torch.long, **on)
    ids = torch.zeros(B, W, K, dtype=torch.long, **on)
    probs = torch.zeros(B, W, K, **on)
    scored = torch.zeros(B, W, dtype=torch.bool, **on)
    for b, s in enumerate(seqs):
        n = len(s["tokens"]) - 1
        states[b, :n] = s["states"][:-1].float()
        tok[b, :n] = s["tokens"][1:]
        ids[b, :n], probs[b, :n] = readout_labels(s, lookup)
        # x_{i+2} is part of the response from i = prompt_len - 2 on (the first response token's prediction)
        scored[b, max(0, s["prompt_len"] - 2):n] = True
    return embed[tok], states, ids, probs, scored


def ttt_outputs(head: FeatureHead, batch, steps: int) -> list[torch.Tensor]:
    """Training-time test (EAGLE-3): the head's outputs [B, T, d] at each unrolled step. Step 1 reads
    the target's fused states; step k > 1 reads the head's own step k - 1 outputs and attends to the
    true pairs up to its base plus its own earlier steps at that base, exactly as when drafting k tokens."""
    emb, states = batch[0], batch[1]
    T = states.shape[1]
    feat = head.fuse(states)
    base = torch.arange(T, device=states.device)
    outs, keys, values = [], None, None
    for k in range(1, steps + 1):
        e = emb[:, k - 1:k - 1 + T]
        if k == 1:
            out, keys, values = head(e, feat, base, causal=True)
        else:
            allowed = torch.cat([base[None, :] <= base[:, None]]
                                + [torch.eye(T, dtype=torch.bool, device=states.device)] * (k - 1), 1)  # [T, k*T]
            out, kk, vv = head(e, feat, base + k - 1, past=(keys, values), mask=allowed)
            keys, values = torch.cat([keys, kk], 2), torch.cat([values, vv], 2)
        outs.append(out)
        feat = out  # the next step reads this step's output
    return outs


def ttt_loss(head: FeatureHead, readout: torch.Tensor, batch, steps: int, decay: float = 0.8):
    """Cross-entropy against the target's top-K at every unrolled step (weights decay^(k-1), normalized);
    top-1 agreement per step."""
    _, states, ids, probs, scored = batch
    T = states.shape[1]
    loss, stats, total_w = 0.0, {}, 0.0
    for k, out in enumerate(ttt_outputs(head, batch, steps), 1):
        m = scored[:, k - 1:k - 1 + T]
        logq = F.linear(head.readout_input(out[m]), readout).log_softmax(-1)
        lab_ids, lab_p = ids[:, k - 1:k - 1 + T][m], probs[:, k - 1:k - 1 + T][m]
        ce = -(logq.gather(-1, lab_ids) * lab_p).sum(-1).mean()
        w = decay ** (k - 1)
        loss, total_w = loss + w * ce, total_w + w
        stats[f"ce{k}"] = ce.item()
        stats[f"acc{k}"] = (logq.argmax(-1) == lab_ids[:, 0]).float().mean().item()
    loss = loss / total_w
    stats["loss"] = loss.item()
    return loss, stats


@torch.no_grad()
def evaluate(head, readout, seqs, lookup, embed, batch_tokens: int, cfg: "TrainConfig | None" = None) -> dict:
    head.eval()
    rng = random.Random(0)
    it = batches(seqs, batch_tokens, rng)
    groups = max(1, math.ceil(sum(len(s["tokens"]) for s in seqs) / batch_tokens))
    total: dict[str, float] = {}
    for _ in range(min(groups, 12)):
        group = [seqs[i] for i in next(it)]
        if cfg is not None and cfg.recipe == "eagle3":
            _, stats = ttt_loss(head, readout, collate3(group, lookup, embed, cfg.ttt_steps), cfg.ttt_steps)
        else:
            _, stats = step_loss(head, readout, collate(group, lookup, embed), 0.0, None, True)
        for k, v in stats.items():
            total[k] = total.get(k, 0.0) + v
    head.train()
    return {k: v / min(groups, 12) for k, v in total.items()}


def plot(history: list[dict], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    train = [h for h in history if "valid" not in h]
    valid = [h for h in history if "valid" in h]
    panels = [(keys, title) for keys, title in ((("reg1", "reg2"), "feature loss (smooth L1)"),
                                                (("ce1", "ce2", "ce3", "ce4"), "token loss (CE vs target top-K)"),
                                                (("acc1", "acc2", "acc3", "acc4"), "top-1 agreement with the target"))
              if any(k in h for h in history for k in keys)]  # EAGLE-3 has no feature loss: no empty panel
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    for ax, (keys, title) in zip(axes[0], panels):
        for k in keys:
            xs = [h["step"] for h in train if k in h]
            ys = [h[k] for h in train if k in h]
            if ys:
                w = max(1, len(ys) // 50)
                smooth = [sum(ys[max(0, i - w + 1): i + 1]) / len(ys[max(0, i - w + 1): i + 1]) for i in range(len(ys))]
                ax.plot(xs, smooth, label=f"train depth {k[-1]}")
            vx = [h["step"] for h in valid if k in h]
            if vx:
                ax.plot(vx, [h[k] for h in valid if k in h], "o--", label=f"valid depth {k[-1]}")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def train(target_model, data: DistillSet | list[DistillSet], cfg: TrainConfig, out: Path, work: Path, progress=None,
          log=print, intermediate: int | None = None) -> dict:
    """Train (or resume) and write the head to `out` (fp16 safetensors); checkpoints live in `work`."""
    # Adam moments and exp(top-K log-probs) underflow, and denormals are ~50x slower; the switch is
    # process-wide (it would break float code elsewhere, e.g. hypothesis), so it is undone afterwards.
    torch.set_flush_denormal(True)
    try:
        return _train(target_model, data, cfg, out, work, progress, log, intermediate)
    finally:
        torch.set_flush_denormal(False)


def _train(target_model, data, cfg: TrainConfig, out: Path, work: Path, progress, log, intermediate) -> dict:
    sets = data if isinstance(data, list) else [data]
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    dev = torch.device(cfg.device)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    vocab = int(target_model.config.vocab_size)
    ckpt = work / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=False, map_location=dev) if ckpt.exists() else None
    start_from = FeatureHead.load(cfg.init) if cfg.init and state is None else None
    if state is not None and "vocab_ids" in state:  # a resumed run keeps its readout tokens
        vocab_ids = None if state["vocab_ids"] is None else state["vocab_ids"].cpu()
    elif start_from is not None:  # a warm start keeps the readout its weights were trained for
        vocab_ids = start_from.vocab_ids
    else:
        vocab_ids = frequent_tokens(sets, cfg.vocab, vocab) if cfg.vocab else None
    train_seqs, valid_seqs = split(sets, cfg.device)
    layers = (-1,)
    if cfg.recipe == "eagle3":
        if not all("states" in q for q in train_seqs[:1]):
            raise ValueError("the eagle3 recipe needs data v2 (low and middle layer states); run the data step")
        layers = tuple(L for L in sets[-1].manifest["layers"] if L != -1) + (-1,)
        train_seqs = [q for q in train_seqs if "states" in q]
        valid_seqs = [q for q in valid_seqs if "states" in q]
    head = FeatureHead(HeadConfig.for_target(target_model.config, intermediate, layers), vocab_ids).to(dev)
    if start_from is not None:
        if start_from.config != head.config:
            raise ValueError(f"{cfg.init} is a head of another shape ({start_from.config}) than this recipe and "
                             f"target make ({head.config})")
        head.load_state_dict(start_from.state_dict())
        log(f"warm start from {cfg.init}")
    embed = target_model.get_input_embeddings().weight.detach().float().to(dev)
    readout = readout_weight(target_model, vocab_ids).float().to(dev)
    lookup = torch.full((vocab,), -1, dtype=torch.long)
    lookup[vocab_ids if vocab_ids is not None else torch.arange(vocab)] = torch.arange(readout.shape[0])
    lookup = lookup.to(dev)
    log(f"{len(train_seqs)} training / {len(valid_seqs)} validation sequences, "
        f"{sum(len(s['tokens']) for s in train_seqs)} training tokens; readout {readout.shape[0]} tokens")
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=WEIGHT_DECAY)
    clock = {"t0": time.perf_counter(), "before": 0.0}  # seconds trained, across resumed runs

    def done(s: int) -> float:  # the fraction of the run behind us, by steps or by the time budget
        spent = clock["before"] + time.perf_counter() - clock["t0"]
        return min(1.0, max(s / cfg.steps, spent / cfg.max_seconds if cfg.max_seconds else 0.0))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / WARMUP) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done(s)))))
    history: list[dict] = []
    start = 0
    if state is not None:
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        history, start = state["history"], state["step"]
        clock["before"] = state.get("seconds", 0.0)
        rng.setstate(state["rng"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        log(f"resuming from step {start}")
    it = batches(train_seqs, cfg.batch_tokens, rng)
    for _ in range(start):  # the same batch order as an uninterrupted run
        next(it)
    head.train()
    steps = range(start, cfg.steps)
    bar = progress(steps, initial=start, total=cfg.steps) if progress else steps
    t0 = clock["t0"] = time.perf_counter()
    for step in bar:
        group = [train_seqs[i] for i in next(it)]
        if cfg.recipe == "eagle3":
            loss, stats = ttt_loss(head, readout, collate3(group, lookup, embed, cfg.ttt_steps), cfg.ttt_steps)
        else:
            loss, stats = step_loss(head, readout, collate(group, lookup, embed), NOISE, gen, cfg.depth2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), CLIP)
        opt.step()
        sched.step()
        history.append({"step": step + 1, **stats})
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{stats['loss']:.3f}", acc1=f"{stats['acc1']:.2f}",
                            acc2=f"{stats.get('acc2', 0):.2f}")
        last = step + 1 == cfg.steps or done(step + 1) >= 1.0
        if (step + 1) % cfg.checkpoint_every == 0 or last:
            if valid_seqs:
                history.append({"step": step + 1, "valid": True,
                                **evaluate(head, readout, valid_seqs, lookup, embed, cfg.batch_tokens, cfg)})
                log(f"step {step + 1}: valid " + " ".join(f"{k} {v:.3f}" for k, v in history[-1].items()
                                                          if k not in ("step", "valid")))
            work.mkdir(parents=True, exist_ok=True)
            tmp = work / ".checkpoint.pt.tmp"
            torch.save({"head": head.state_dict(), "vocab_ids": vocab_ids, "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "history": history, "step": step + 1, "rng": rng.getstate(), "gen": gen.get_state(),
                        "torch_rng": torch.get_rng_state(),
                        "seconds": clock["before"] + time.perf_counter() - clock["t0"]}, tmp)
            os.replace(tmp, ckpt)
            (work / "history.json").write_text(json.dumps(history))
            head.save(out, {"steps": step + 1, "recipe": cfg.recipe, "checkpoint": True})  # usable if stopped here
            plot(history, work / "loss.png")
        if last:
            break
    seconds = time.perf_counter() - t0
    head.eval().cpu()
    meta = {"steps": history[-1]["step"] if history else cfg.steps, "batch_tokens": cfg.batch_tokens, "vocab": cfg.vocab, "seed": cfg.seed,
            "recipe": cfg.recipe, "ttt_steps": cfg.ttt_steps if cfg.recipe == "eagle3" else 0,
            "shards": "+".join(str(len(d.paths)) for d in sets), "train_seconds_this_run": round(seconds),
            **({"init": Path(cfg.init).name} if cfg.init else {})}
    head.save(out, meta)
    return {"head": head, "history": history, "seconds": seconds}
