"""Fine-tune a distilled drafter LM (specviz.drafters.distilled) on the target's own outputs: KD or TVD++.

    python -m specviz train-drafter distill-kd --shards 8 --steps 200 --batch-tokens 2048 --vocab 8192 --threads 1
    python -m specviz train-drafter distill-tvd ...   # the same options; TVD++ (specviz/train/tvd.py) instead of KD

Both start from the same init: `LAYERS` of the target's decoder layers, its final norm and the
head rows of the VOCAB most frequent tokens of the training data (tokens and the target's top-1
predictions). Data: the distillation shards of specviz.train.data (instructions from
specviz.train.instructions, the target's own responses, its teacher-forced top-K log-probs at
every position); every VALID_EVERY-th instruction is held out for validation (the same split as
the EAGLE head's). The loss covers every position of every sequence (prompt and response: the
target's predictions over the instruction text are distillation data too).

Seeded, resumable (an atomic checkpoint every CHECKPOINT_EVERY steps; a rerun continues from it
with the same batch order), progress bar, loss curve PNG beside the checkpoint, fp16 weights and a
model card (JSON) at the end. No evaluation prompt is ever read: `check_no_evaluation_prompts`.
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

from ..drafters import distilled
from . import tvd
from .data import DistillSet

KINDS = {"distill-kd": "kd", "distill-tvd": "tvd"}
LAYERS = (0, 10, 19, 29)  # evenly spaced; vs the first four: same top-1 after 40 KD steps, lower KL (assets/drafters/distilled.md)
VOCAB = 8192
VALID_EVERY = 20
CHECKPOINT_EVERY = 40
WARMUP = 30


@dataclass
class TrainConfig:
    kind: str = "distill-kd"
    steps: int = 600
    batch_tokens: int = 2048
    lr: float = 2e-4
    seed: int = 0
    shards: int = 0  # 0 = every shard that exists when training starts (recorded)
    layers: tuple = LAYERS
    vocab: int = VOCAB
    samples: int = tvd.SAMPLES  # TVD++ draft samples per position
    threads: int = 0  # 0 = leave torch's default


def loss_name(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown distilled drafter kind '{kind}'; one of {', '.join(KINDS)}")
    return KINDS[kind]


def check_no_evaluation_prompts(texts: list[str]) -> None:
    from ..prompts import overlapping

    bad = overlapping(texts)
    if bad:
        raise ValueError(f"{len(bad)} training instructions overlap the evaluation prompts, e.g. {bad[0][:80]!r}")


def as_sets(data: DistillSet | list[DistillSet]) -> list[DistillSet]:
    return list(data) if isinstance(data, (list, tuple)) else [data]


def load_sequences(data: DistillSet | list[DistillSet]) -> tuple[list[dict], list[dict]]:
    """(train, validation) sequences as dicts: tokens [n], ids [n, K], logp [n, K] (fp32), from one or
    several sets (e.g. the teacher-forced corpus and the generated shards; prompt indices agree)."""
    train, valid = [], []
    for one in as_sets(data):
        t, v = _sequences(one)
        train += t
        valid += v
    return train, valid


def _sequences(data: DistillSet) -> tuple[list[dict], list[dict]]:
    jobs = data.manifest["jobs"]
    train, valid = [], []
    for path in data.paths:
        t = data.shard(path)
        off = t["offsets"].tolist()
        for s in range(len(off) - 1):
            a, b = off[s], off[s + 1]
            if b - a < 2:
                continue
            job = jobs[int(t["job"][s])]
            row = {"tokens": t["tokens"][a:b].long(), "ids": t["topk_ids"][a:b].long(),
                   "logp": t["topk_logp"][a:b].float(), "prompt": job["prompt"]}
            (valid if job["prompt"] % VALID_EVERY == 0 else train).append(row)
    return train, valid


def frequent_tokens(seqs: list[dict], size: int, vocab: int, always: set[int] = frozenset()) -> torch.Tensor:
    """The `size` tokens most often in the sequences or the target's top-1 prediction (plus `always`), sorted."""
    counts = torch.zeros(vocab, dtype=torch.long)
    for s in seqs:
        counts += torch.bincount(s["tokens"], minlength=vocab)
        counts += torch.bincount(s["ids"][:, 0], minlength=vocab)
    for t in always:
        counts[t] = counts.max() + 1
    return counts.topk(min(size, vocab)).indices.sort().values


def batches(seqs: list[dict], batch_tokens: int, rng: random.Random):
    """Endless batches of similar-length sequences, about batch_tokens (padded) positions each."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]["tokens"]))
    groups, cur, longest = [], [], 0
    for i in order:
        n = len(seqs[i]["tokens"])
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


def collate(seqs: list[dict], lookup: torch.Tensor) -> dict[str, torch.Tensor]:
    """Right-padded batch. Row i of a sequence predicts token i + 1: p_full [B, T, K] holds the target's
    top-K probabilities on the kept tokens (not renormalized), ids [B, T, K] their kept-vocab index."""
    T = max(len(s["tokens"]) for s in seqs)
    B, K = len(seqs), seqs[0]["ids"].shape[1]
    tokens = torch.zeros(B, T, dtype=torch.long)
    ids = torch.zeros(B, T, K, dtype=torch.long)
    probs = torch.zeros(B, T, K)
    top1 = torch.full((B, T), -1, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, s in enumerate(seqs):
        n = len(s["tokens"])
        tokens[b, :n] = s["tokens"]
        sub = lookup[s["ids"][: n - 1]]
        ids[b, : n - 1] = sub.clamp_min(0)
        probs[b, : n - 1] = s["logp"][: n - 1].exp() * (sub >= 0)
        top1[b, : n - 1] = sub[:, 0]  # -1 when the target's top token is outside the kept vocabulary
        mask[b, : n - 1] = True
    return {"tokens": tokens, "ids": ids, "probs": probs, "top1": top1, "mask": mask}


def drafter_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """[B, T, K] reduced-vocabulary logits (the shared embedding is read, never trained)."""
    emb = model.get_input_embeddings()(tokens).detach()
    hidden = model.model(inputs_embeds=emb, use_cache=False).last_hidden_state
    return model.lm_head(hidden)


def scatter_p(batch: dict, kept: int) -> torch.Tensor:
    """[N, K_kept] the target's top-K probabilities on the kept vocabulary, at the masked positions."""
    m = batch["mask"]
    p = torch.zeros(int(m.sum()), kept)
    p.scatter_add_(-1, batch["ids"][m], batch["probs"][m])
    return p


def step_loss(model, batch: dict, kind: str, gen: torch.Generator | None, samples: int = tvd.SAMPLES
              ) -> tuple[torch.Tensor, dict]:
    """(loss to minimize, stats) for one batch. stats always hold kl, tv, top1 (agreement with the target)."""
    logits = drafter_logits(model, batch["tokens"])[batch["mask"]].float()  # [N, K_kept]
    logq = logits.log_softmax(-1)
    p = scatter_p(batch, logits.shape[-1])
    mass = p.sum(-1, keepdim=True)
    p_norm = p / mass.clamp_min(1e-9)  # renormalized over the kept tokens of the target's top-K
    kl = (p_norm * (p_norm.clamp_min(1e-12).log() - logq)).sum(-1).mean()
    stats = {}
    if kind == "kd":
        loss = kl
    else:
        loss, extra = tvd.tvdpp_loss(logits, p, gen, samples)
        stats["sigma"] = extra["sigma"]
    with torch.no_grad():
        q = logq.exp()
        stats["tv"] = float((0.5 * (p - q).abs().sum(-1) + 0.5 * (1 - mass[:, 0])).mean())
        top1 = batch["top1"][batch["mask"]]
        stats["top1"] = float((logq.argmax(-1) == top1).float().mean())
    stats["kl"] = float(kl.detach())
    stats["loss"] = float(loss.detach())
    return loss, stats


@torch.no_grad()
def evaluate(model, seqs: list[dict], lookup: torch.Tensor, batch_tokens: int, limit: int = 6) -> dict:
    """Mean kl / tv / top1 over up to `limit` validation batches (deterministic)."""
    rng = random.Random(0)
    it = batches(seqs, batch_tokens, rng)
    groups = min(limit, max(1, math.ceil(sum(len(s["tokens"]) for s in seqs) / batch_tokens)))
    total: dict[str, float] = {}
    for _ in range(groups):
        _, stats = step_loss(model, collate([seqs[i] for i in next(it)], lookup), "kd", None)
        for k in ("kl", "tv", "top1"):
            total[k] = total.get(k, 0.0) + stats[k]
    return {k: v / groups for k, v in total.items()}


def plot(history: list[dict], path: Path, title: str, objective: str = "kl") -> Path:
    """The loss curve as a PNG (PIL only): the training objective (smoothed; KD: KL, TVD++: TV, not the
    surrogate) and validation KL / TV / top-1."""
    from PIL import Image, ImageDraw

    W, H, pad = 1100, 360, 46
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    train = [h for h in history if "valid" not in h]
    valid = [h for h in history if "valid" in h]
    panels = [(f"training {objective.upper()} (smoothed)", [(objective, train, (31, 119, 180))]),
              ("validation KL (nats)", [("kl", valid, (214, 39, 40)), ("kl", train, (255, 170, 170))]),
              ("validation TV and top-1 agreement", [("tv", valid, (44, 160, 44)), ("top1", valid, (148, 103, 189))])]
    pw = (W - pad) // len(panels)
    steps_max = max([h["step"] for h in history] or [1])
    for n, (name, series) in enumerate(panels):
        x0, x1, y0, y1 = n * pw + pad, (n + 1) * pw - 10, 30, H - 40
        d.rectangle([x0, y0, x1, y1], outline="black")
        d.text((x0, 8), name, fill="black")
        values = [h[k] for k, rows, _ in series for h in rows if k in h]
        if not values:
            continue
        lo, hi = min(values), max(values)
        hi = hi if hi > lo else lo + 1
        d.text((x0 - 40, y0), f"{hi:.3g}", fill="black")
        d.text((x0 - 40, y1 - 10), f"{lo:.3g}", fill="black")
        d.text((x1 - 60, y1 + 8), f"step {steps_max}", fill="black")
        for k, rows, color in series:
            pts = [(h["step"], h[k]) for h in rows if k in h]
            if rows is train and len(pts) > 10:
                w = max(1, len(pts) // 40)
                pts = [(pts[i][0], sum(v for _, v in pts[max(0, i - w + 1): i + 1]) / len(pts[max(0, i - w + 1): i + 1]))
                       for i in range(len(pts))]
            xy = [(x0 + (x1 - x0) * s / steps_max, y1 - (y1 - y0) * (v - lo) / (hi - lo)) for s, v in pts]
            if len(xy) > 1:
                d.line(xy, fill=color, width=2)
            for x, y in xy if rows is valid else ():
                d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
            if xy:
                d.text((xy[-1][0] - 30, xy[-1][1] - 14), k, fill=color)
    d.text((pad, H - 18), title, fill="black")
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def train(target_model, data: DistillSet, cfg: TrainConfig, out: Path, work: Path, eos: set[int] = frozenset(),
          progress=None, log=print) -> dict:
    """Train (or resume) one kind; write fp16 weights to `out` and a card beside them. Returns a summary."""
    kind = loss_name(cfg.kind)
    objective = "kl" if kind == "kd" else "tv"
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    sets = as_sets(data)
    for one in sets:
        check_no_evaluation_prompts(one.instructions_used())
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_seqs, valid_seqs = load_sequences(data)
    vocab = int(target_model.config.vocab_size)
    vocab_ids = frequent_tokens(train_seqs, cfg.vocab, vocab, set(eos))
    lookup = torch.full((vocab,), -1, dtype=torch.long)
    lookup[vocab_ids] = torch.arange(len(vocab_ids))
    model = distilled.new_model(target_model, list(cfg.layers), vocab_ids)
    params = distilled.own_parameters(model)
    n_train = sum(len(s["tokens"]) for s in train_seqs)
    log(f"{cfg.kind}: {len(train_seqs)} training / {len(valid_seqs)} validation sequences, {n_train} training "
        f"positions from {sum(len(one.paths) for one in sets)} shards; {distilled.param_count(model) / 1e6:.1f} M own parameters, "
        f"layers {list(cfg.layers)}, head {len(vocab_ids)} tokens")
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / WARMUP) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps)))))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "checkpoint.pt"
    history: list[dict] = []
    start, seconds_before = 0, 0.0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        if state["config"] != asdict(cfg) | {"threads": state["config"].get("threads")}:
            raise ValueError(f"{ckpt} was written with other settings; delete {work} to start over")
        model.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        history, start, seconds_before = state["history"], state["step"], state.get("seconds", 0.0)
        rng.setstate(state["rng"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        log(f"resuming from step {start}")
    else:
        history.append({"step": 0, "valid": True, **evaluate(model, valid_seqs, lookup, cfg.batch_tokens)})
        log("init: valid " + " ".join(f"{k} {v:.3f}" for k, v in history[-1].items() if k not in ("step", "valid")))
    it = batches(train_seqs, cfg.batch_tokens, rng)
    for _ in range(start):  # the same batch order as an uninterrupted run
        next(it)
    model.train()
    steps = range(start, cfg.steps)
    bar = progress(steps, initial=start, total=cfg.steps) if progress else steps
    t0 = time.perf_counter()
    for step in bar:
        batch = collate([train_seqs[i] for i in next(it)], lookup)
        loss, stats = step_loss(model, batch, kind, gen, cfg.samples)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        history.append({"step": step + 1, **stats})
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{stats['loss']:.3f}", kl=f"{stats['kl']:.3f}", tv=f"{stats['tv']:.3f}",
                            top1=f"{stats['top1']:.2f}")
        if (step + 1) % CHECKPOINT_EVERY == 0 or step + 1 == cfg.steps:
            model.eval()
            history.append({"step": step + 1, "valid": True,
                            **evaluate(model, valid_seqs, lookup, cfg.batch_tokens)})
            model.train()
            log(f"step {step + 1}: valid " + " ".join(f"{k} {v:.3f}" for k, v in history[-1].items()
                                                      if k not in ("step", "valid")))
            tmp = work / ".checkpoint.pt.tmp"
            torch.save({"model": distilled.own_state(model), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "history": history, "step": step + 1, "rng": rng.getstate(), "gen": gen.get_state(),
                        "torch_rng": torch.get_rng_state(), "config": asdict(cfg),
                        "seconds": seconds_before + time.perf_counter() - t0}, tmp)
            os.replace(tmp, ckpt)
            (work / "history.json").write_text(json.dumps(history))
            plot(history, work / "loss.png", f"{cfg.kind}: {len(train_seqs)} sequences, {cfg.steps} steps", objective)
    model.eval()
    seconds = seconds_before + time.perf_counter() - t0
    valid = [h for h in history if "valid" in h]
    train_tail = [h for h in history if "valid" not in h][-20:]
    summary = {
        "kind": cfg.kind, "loss": KINDS[cfg.kind], "config": asdict(cfg), "init_layers": list(cfg.layers),
        "own_parameters": distilled.param_count(model), "head_tokens": len(vocab_ids),
        "data": {"sets": [{"dir": str(one.root), "shards": len(one.paths)} for one in sets],
                 "train_sequences": len(train_seqs), "valid_sequences": len(valid_seqs),
                 "train_positions": n_train, "valid_every_instruction": VALID_EVERY},
        "train_seconds": round(seconds),
        "init_valid": valid[0], "final_valid": valid[-1],
        "final_train": {k: sum(h[k] for h in train_tail) / len(train_tail) for k in ("loss", "kl", "tv", "top1")}
        if train_tail else {},
    }
    distilled.save(model, out, {k: summary[k] for k in ("kind", "loss", "train_seconds", "head_tokens")})
    png = out.with_suffix(".loss.png")
    plot(history, png, f"{cfg.kind}: {len(train_seqs)} sequences, {cfg.steps} steps", objective)
    if work != out.parent:
        plot(history, work / "loss.png", f"{cfg.kind}: {len(train_seqs)} sequences, {cfg.steps} steps", objective)
    return {"model": model, "summary": summary, "history": history, "png": png}


def run_from_cli(a, roots: list[Path]) -> int:
    """`python -m specviz train-drafter distill-kd|distill-tvd` after the shared data step (specviz/train/cli.py):
    roots = [corpus set, generated set] as that step made them; a.shards generated shards are used."""
    from ..api import eos_ids, load_model
    from ..models import cache_root
    from .card import log, progress_bar, write_card

    loss_name(a.kind)
    sets = [DistillSet(r, shards=a.shards if r == roots[-1] else 0) for r in roots]
    model, tokenizer, _ = load_model(a.target)
    cfg = TrainConfig(kind=a.kind, steps=a.steps, batch_tokens=a.batch_tokens, vocab=a.vocab or VOCAB, seed=a.seed,
                      shards=len(sets[-1].paths), threads=a.threads)
    out = Path(a.out) if a.out else distilled.default_weights(a.kind, a.target)
    work = Path(a.work) if a.work else cache_root() / "train" / f"{a.kind}-{Path(a.target).name}"
    result = train(model, sets, cfg, out, work, eos_ids(model, tokenizer),
                   progress=progress_bar(a.kind, mininterval=10), log=log)
    write_card(a, cfg.vocab, result, out, log)
    return 0
