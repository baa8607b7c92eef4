"""Distillation data made by the target itself, and its loader (shared by every drafter we train).

Layout, under `specviz.models.cache_root() / "distill" / <target name> / v<VERSION>`:

    manifest.json         {"version", "target", "seed", "top_k", "max_new_tokens", "batch", "jobs": [...],
                           "instructions": [{"category", "prompt"}, ...]}
                          jobs[j] = {"prompt": index into instructions, "temperature": 0.0 (greedy) or T,
                                     "shard": s}; shard s holds jobs with "shard" == s, in job order.
    shard-00000.safetensors   one per batch of jobs, written atomically (temp file, then rename):
        tokens     int32 [N]        every sequence's tokens, concatenated: chat-templated prompt, then
                                    the target's response as it was fed (ending with EOS when it stopped)
        offsets    int64 [S + 1]    sequence s is rows offsets[s] .. offsets[s + 1] - 1
        prompt_len int32 [S]        how many of its first tokens are the prompt
        job        int32 [S]        index into manifest["jobs"]
        hidden     fp16  [N, H]     the target's hidden_states[-1] (final, normed: what the LM head reads)
                                    at each position, i.e. after reading tokens[0..i] of its sequence
        topk_ids   int32 [N, K]     the target's K most likely next tokens after position i (token i + 1)
        topk_logp  fp16  [N, K]     their log-probabilities (full-vocabulary log-softmax, temperature 1)

So row i pairs what the target knew at i (hidden) with what it predicts for i + 1 (top-K); the
tokens actually there are tokens[i + 1] (greedy or sampled at the job's temperature). hidden and
top-K come from the forward that generated the sequence (prefill for the prompt, then one
cached step per response token, batched with left padding): that forward is a teacher-forced
forward over exactly these tokens, so no second pass is needed.

Generation is resumable: the job list is a pure function of (instructions, seed), shards that
exist are skipped, so a rerun continues where the last one stopped. `DistillSet` reads any
prefix of the shards.
"""
from __future__ import annotations

import json
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

VERSION = 1
TOP_K = 32
BATCH = 32


def data_dir(target: str) -> Path:
    from ..models import cache_root

    return cache_root() / "distill" / Path(target).name / f"v{VERSION}"


def make_jobs(n_prompts: int, seed: int, batch: int = BATCH, sampled_every: int = 3) -> list[dict]:
    """Greedy responses for every prompt, plus a sampled one (T = 0.7 or 1.0, alternating) for every
    `sampled_every`-th prompt. Shuffled (seeded), then sorted by prompt index within blocks of 8
    batches (similar lengths share a batch only by chance; the order stays a random sample, so any
    prefix of the shards is a fair subset)."""
    rng = random.Random(seed)
    jobs = [{"prompt": i, "temperature": 0.0} for i in range(n_prompts)]
    jobs += [{"prompt": i, "temperature": (0.7, 1.0)[(i // sampled_every) % 2]}
             for i in range(0, n_prompts, sampled_every)]
    rng.shuffle(jobs)
    for j, job in enumerate(jobs):
        job["shard"] = j // batch
    return jobs


def atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


@torch.inference_mode()
def generate_batch(model, prompts: list[list[int]], temperatures: list[float], eos: set[int], pad: int,
                   max_new_tokens: int, gen: torch.Generator, top_k: int = TOP_K) -> list[dict]:
    """Left-padded batched generation; returns per row tokens, hidden, topk_ids, topk_logp, prompt_len."""
    from transformers import DynamicCache

    base, head = model.model, model.lm_head.weight
    rows = len(prompts)
    width = max(map(len, prompts))
    ids = torch.full((rows, width), pad, dtype=torch.long)
    mask = torch.zeros(rows, width, dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p)
        mask[r, width - len(p):] = 1
    temps = torch.tensor(temperatures, dtype=torch.float32)
    cache = DynamicCache(config=model.config)
    seq_h: list[list[torch.Tensor]] = [[] for _ in range(rows)]
    seq_i: list[list[torch.Tensor]] = [[] for _ in range(rows)]
    seq_l: list[list[torch.Tensor]] = [[] for _ in range(rows)]
    fed: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    feed, step = ids, 0
    while True:
        positions = (mask.cumsum(-1) - 1).clamp_min(0)[:, -feed.shape[1]:]
        h = base(input_ids=feed, attention_mask=mask, position_ids=positions, past_key_values=cache,
                 use_cache=True).last_hidden_state
        one = (h[:, -1] @ head.T).float() if feed.shape[1] == 1 else None  # decode: one matmul for all rows
        last = torch.empty(rows, head.shape[0])
        for r in range(rows):
            keep = mask[r, -feed.shape[1]:].bool()
            hr = h[r][keep] if not done[r] else h[r, -1:]
            logits = one[r:r + 1] if one is not None else (hr @ head.T).float()
            last[r] = logits[-1]
            if done[r]:
                continue
            top = logits.log_softmax(-1).topk(top_k, dim=-1)
            seq_h[r].append(hr.half())
            seq_i[r].append(top.indices.int())
            seq_l[r].append(top.values.half())
            fed[r] += feed[r][keep].tolist()
            if step > 0 and (fed[r][-1] in eos or step >= max_new_tokens):
                done[r] = True
        if all(done):
            break
        greedy = last.argmax(-1)
        sampled = torch.multinomial((last / temps.clamp_min(1e-6)[:, None]).softmax(-1), 1, generator=gen)[:, 0]
        nxt = torch.where(temps > 0, sampled, greedy)
        feed = nxt[:, None]
        mask = torch.cat([mask, torch.ones(rows, 1, dtype=torch.long)], 1)
        step += 1
    return [{"tokens": torch.tensor(fed[r], dtype=torch.int32), "hidden": torch.cat(seq_h[r]),
             "topk_ids": torch.cat(seq_i[r]), "topk_logp": torch.cat(seq_l[r]), "prompt_len": len(prompts[r])}
            for r in range(rows)]


def build(target: str = "smollm2-135m", shards: int = 0, seed: int = 0, max_new_tokens: int = 128,
          out: str | os.PathLike | None = None, progress=None, log=print) -> Path:
    """Generate (or continue generating) the first `shards` shards (0 = all jobs)."""
    from ..api import encode_prompt, eos_ids, load_model
    from ..prompts import overlapping
    from .instructions import instructions

    root = Path(out) if out else data_dir(target)
    rows = instructions(seed)
    if overlapping([r["prompt"] for r in rows]):
        raise ValueError("training instructions overlap the evaluation prompts")
    jobs = make_jobs(len(rows), seed)
    n_shards = jobs[-1]["shard"] + 1
    shards = min(shards or n_shards, n_shards)
    manifest = {"version": VERSION, "target": target, "seed": seed, "top_k": TOP_K, "max_new_tokens": max_new_tokens,
                "batch": BATCH, "jobs": jobs, "instructions": rows}
    root.mkdir(parents=True, exist_ok=True)
    mpath = root / "manifest.json"
    if mpath.exists():
        old = json.loads(mpath.read_text())
        if {k: old.get(k) for k in manifest} != manifest:
            raise ValueError(f"{root} holds data made with other settings; pass another --out or delete it")
    else:
        from ..trace import atomic_write_text

        atomic_write_text(mpath, json.dumps(manifest))
    todo = [s for s in range(shards) if not (root / f"shard-{s:05d}.safetensors").exists()]
    log(f"distill data in {root}: {shards - len(todo)} of {shards} shards exist, {len(todo)} to make")
    if not todo:
        return root
    model, tokenizer, _ = load_model(target)
    eos = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    bar = progress(todo) if progress else todo
    for s in bar:
        t0 = time.perf_counter()
        mine = [j for j, job in enumerate(jobs) if job["shard"] == s]
        prompts = [encode_prompt(tokenizer, rows[jobs[j]["prompt"]]["prompt"], True) for j in mine]
        gen = torch.Generator().manual_seed(seed * 100_003 + s)
        seqs = generate_batch(model, prompts, [jobs[j]["temperature"] for j in mine], eos, pad, max_new_tokens, gen)
        n = save_shard(root, s, seqs, mine)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(tokens=n, s=f"{time.perf_counter() - t0:.0f}")
    return root


def save_shard(root: Path, index: int, seqs: list[dict], jobs: list[int]) -> int:
    """Write one shard (see the module doc) from per-sequence dicts as generate_batch returns them."""
    offsets = torch.tensor([0] + [len(q["tokens"]) for q in seqs]).cumsum(0)
    atomic_save({
        "tokens": torch.cat([q["tokens"] for q in seqs]).int(),
        "offsets": offsets,
        "prompt_len": torch.tensor([q["prompt_len"] for q in seqs], dtype=torch.int32),
        "job": torch.tensor(jobs, dtype=torch.int32),
        "hidden": torch.cat([q["hidden"] for q in seqs]).half(),
        "topk_ids": torch.cat([q["topk_ids"] for q in seqs]).int(),
        "topk_logp": torch.cat([q["topk_logp"] for q in seqs]).half(),
    }, Path(root) / f"shard-{index:05d}.safetensors")
    return int(offsets[-1])


@torch.inference_mode()
def teacher_force(model, seqs: list[list[int]], prompt_lens: list[int], top_k: int = TOP_K) -> list[dict]:
    """One forward over each whole sequence (batched, right-padded): what generate_batch records."""
    base, head = model.model, model.lm_head.weight
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for r, q in enumerate(seqs):
        ids[r, :len(q)], mask[r, :len(q)] = torch.tensor(q), 1
    h = base(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    out = []
    for r, q in enumerate(seqs):
        hr = h[r, :len(q)]
        top = (hr @ head.T).float().log_softmax(-1).topk(top_k, dim=-1)
        out.append({"tokens": torch.tensor(q, dtype=torch.int32), "hidden": hr.half(), "topk_ids": top.indices.int(),
                    "topk_logp": top.values.half(), "prompt_len": prompt_lens[r]})
    return out


def build_from_corpus(target: str = "smollm2-135m", seed: int = 0, batch: int = 8, out=None, progress=None,
                      log=print) -> Path:
    """Shards from the stored corpus of the target's greedy outputs (`specviz corpus`), by teacher forcing.

    Cheap (one bulk forward per sequence, no decoding): root `data_dir(target)` + "-corpus". Its
    instructions are the same list as build()'s (the corpus prompts come first), so prompt indices agree.
    """
    from .. import corpus
    from ..api import encode_prompt, load_model
    from ..trace import atomic_write_text
    from .instructions import instructions

    stored = corpus.load(target)
    if stored is None:
        raise ValueError(f"no stored corpus for {target}")
    rows = instructions(seed)
    if [r["prompt"] for r in rows[: len(stored["prompts"])]] != [p["prompt"] for p in stored["prompts"]]:
        raise ValueError("the corpus prompts are not the first training instructions")
    root = Path(out) if out else data_dir(target).with_name(f"v{VERSION}-corpus")
    jobs = [{"prompt": i, "temperature": 0.0, "shard": i // batch, "source": "corpus"}
            for i in range(len(stored["outputs"]))]
    root.mkdir(parents=True, exist_ok=True)
    manifest = {"version": VERSION, "target": target, "seed": seed, "top_k": TOP_K,
                "max_new_tokens": stored["max_new_tokens"], "batch": batch, "jobs": jobs, "instructions": rows}
    atomic_write_text(root / "manifest.json", json.dumps(manifest))
    n_shards = jobs[-1]["shard"] + 1
    todo = [s for s in range(n_shards) if not (root / f"shard-{s:05d}.safetensors").exists()]
    log(f"corpus data in {root}: {n_shards - len(todo)} of {n_shards} shards exist")
    if not todo:
        return root
    model, tokenizer, _ = load_model(target)
    for s in progress(todo) if progress else todo:
        mine = [j for j, job in enumerate(jobs) if job["shard"] == s]
        prompts = [encode_prompt(tokenizer, rows[j]["prompt"], True) for j in mine]
        seqs = [p + list(stored["outputs"][j]) for p, j in zip(prompts, mine)]
        save_shard(root, s, teacher_force(model, seqs, [len(p) for p in prompts]), mine)
    return root


@dataclass
class Sequence:
    tokens: torch.Tensor  # int64 [n]
    hidden: torch.Tensor  # fp16 [n, H]
    topk_ids: torch.Tensor  # int64 [n, K]
    topk_logp: torch.Tensor  # fp16 [n, K]
    prompt_len: int
    temperature: float
    category: str


class DistillSet:
    """The shards that exist under `root` (or the first `shards` of them), as sequences.

        data = DistillSet(data_dir("smollm2-135m"))
        for seq in data.sequences(): seq.tokens, seq.hidden, seq.topk_ids, seq.topk_logp, ...
    """

    def __init__(self, root: str | os.PathLike, shards: int = 0):
        self.root = Path(root)
        self.manifest = json.loads((self.root / "manifest.json").read_text())
        if self.manifest.get("version") != VERSION:
            raise ValueError(f"{self.root}: distill data version {self.manifest.get('version')}, expected {VERSION}")
        paths = sorted(self.root.glob("shard-*.safetensors"))
        self.paths = paths[:shards] if shards else paths
        if not self.paths:
            raise ValueError(f"{self.root}: no shards; run `python -m specviz train-drafter eagle` (data step)")

    def shard(self, path: Path) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(path))

    def sequences(self, with_hidden: bool = True) -> Iterator[Sequence]:
        jobs, rows = self.manifest["jobs"], self.manifest["instructions"]
        for path in self.paths:
            t = self.shard(path)
            off = t["offsets"].tolist()
            for s in range(len(off) - 1):
                a, b = off[s], off[s + 1]
                job = jobs[int(t["job"][s])]
                yield Sequence(t["tokens"][a:b].long(), t["hidden"][a:b] if with_hidden else None,
                               t["topk_ids"][a:b].long(), t["topk_logp"][a:b], int(t["prompt_len"][s]),
                               float(job["temperature"]), rows[job["prompt"]]["category"])

    def instructions_used(self) -> list[str]:
        """The instruction texts of the sequences in these shards."""
        jobs, rows = self.manifest["jobs"], self.manifest["instructions"]
        used = {int(path.stem.split("-")[1]) for path in self.paths}
        return [rows[job["prompt"]]["prompt"] for job in jobs if job["shard"] in used]

    def token_count(self) -> int:
        return sum(int(self.shard(p)["offsets"][-1]) for p in self.paths)
