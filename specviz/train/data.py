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
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from ..atomic import atomic_save  # noqa: F401  (re-exported)

VERSION = 2  # 2: wide instructions (train/sources.py), low and middle layer states, rows leave when done
TOP_K = 32
BATCH = 64
MAX_NEW = 192


def data_dir(target: str) -> Path:
    from ..models import cache_root

    return cache_root() / "distill" / Path(target).name / f"v{VERSION}"


def make_jobs(prompts: int | list[int], seed: int, batch: int = BATCH, sampled_every: int = 1) -> list[dict]:
    """Greedy responses for every prompt, plus a sampled one (T = 0.7 or 1.0, alternating) for every
    `sampled_every`-th prompt. Shuffled (seeded); given prompt lengths (a list), each block of 8
    batches is then sorted by length so a batch pads little, and the order stays a random sample of
    blocks, so any prefix of the shards is a fair subset."""
    lengths = list(range(prompts)) if isinstance(prompts, int) else list(prompts)
    n_prompts = len(lengths)
    rng = random.Random(seed)
    jobs = [{"prompt": i, "temperature": 0.0} for i in range(n_prompts)]
    jobs += [{"prompt": i, "temperature": (0.7, 1.0)[(i // sampled_every) % 2]}
             for i in range(0, n_prompts, sampled_every)]
    rng.shuffle(jobs)
    block = 8 * batch
    jobs = [j for k in range(0, len(jobs), block)
            for j in sorted(jobs[k:k + block], key=lambda j: (lengths[j["prompt"]], j["prompt"]))]
    for j, job in enumerate(jobs):
        job["shard"] = j // batch
    return jobs


def instruction_jobs(rows: list[dict], seed: int, batch: int = BATCH) -> list[dict]:
    """Data v2's jobs for its instruction rows (each job names its prompt's row and its shard): `build`
    makes these, and `collect` reads them to leave out what a trained head saw."""
    return make_jobs([len(r["prompt"]) for r in rows], seed, batch)


def feature_layers(n_layers: int) -> tuple[int, ...]:
    """The low and middle layers whose states data v2 records beside the final one (EAGLE-3's fused
    features: low, middle, last), as transformers' hidden_states indices."""
    return tuple(sorted({min(2, n_layers), max(1, n_layers // 2)}))


@contextmanager
def packed_linears(model):
    """Every nn.Linear of the model (LM head included) computed by oneDNN on a pre-packed copy of
    its weight, for the duration: on the CPU a 64-row step then costs about half of what MKL's
    F.linear takes (fp32, same model; outputs agree within ~1e-4). A no-op off the CPU or in
    another dtype. The original forwards come back on exit."""
    mods = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    usable = (mods and mods[0].weight.device.type == "cpu" and mods[0].weight.dtype == torch.float32
              and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))
    if not usable:
        yield
        return

    def packed(mod):
        w = torch.ops.mkldnn._reorder_linear_weight(mod.weight.detach(), None)
        bias = None if mod.bias is None else mod.bias.detach()

        def forward(x):
            y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), w, bias, "none", [], "")
            return y.reshape(*x.shape[:-1], y.shape[-1])
        return forward

    for m in mods:
        m.forward = packed(m)
    try:
        yield
    finally:
        for m in mods:
            del m.forward  # back to the class's forward


@torch.inference_mode()
def generate_batch(model, prompts: list[list[int]], temperatures: list[float], eos: set[int], pad: int,
                   max_new_tokens: int, gen: torch.Generator, top_k: int = TOP_K,
                   layers: tuple[int, ...] = ()) -> list[dict]:
    """Left-padded batched generation; returns per row tokens, hidden, topk_ids, topk_logp, prompt_len
    (and `layer{L}` fp16 states for each extra layer L asked for), on the CPU.

    One prefill for the batch, then one cached step per token for the rows still going: a row that
    stops (EOS or max_new_tokens) leaves the batch and its cache rows are dropped, so the step cost
    follows the rows that remain. Greedy rows take the argmax, sampled rows draw at their temperature
    with `gen` (on the model's device; sequentially seeded by row order, so a batch is reproducible).
    Runs on the model's device; each step's records leave it as one batched copy (per-row slicing
    on a GPU would cost a launch per row and step)."""
    from transformers import DynamicCache

    base = model.model
    dev = next(model.parameters()).device
    rows = len(prompts)
    width = max(map(len, prompts))
    ids = torch.full((rows, width), pad, dtype=torch.long)
    mask = torch.zeros(rows, width, dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p)
        mask[r, width - len(p):] = 1
    ids, mask = ids.to(dev), mask.to(dev)
    temps = torch.tensor(temperatures, dtype=torch.float32, device=dev)
    cache = DynamicCache(config=model.config)
    out: list[dict[str, list]] = [{"hidden": [], "ids": [], "logp": [], **{f"layer{L}": [] for L in layers}}
                                  for _ in range(rows)]
    steps: list[tuple] = []  # (alive rows, hidden, top ids, top logp, {L: states}) of each cached step, on the CPU
    fed: list[list[int]] = [list(p) for p in prompts]
    alive = list(range(rows))  # original row of each batch row
    feed, step = ids, 0
    while True:
        positions = (mask.cumsum(-1) - 1).clamp_min(0)[:, -feed.shape[1]:]
        res = base(input_ids=feed, attention_mask=mask, position_ids=positions, past_key_values=cache,
                   use_cache=True, output_hidden_states=bool(layers))
        h = res.last_hidden_state
        logits = model.lm_head(h[:, -1:]).float()  # [B, 1, V]: the next token of every row, one GEMM
        if feed.shape[1] == 1:
            top = logits[:, 0].log_softmax(-1).topk(top_k, dim=-1)
            steps.append((alive, h[:, 0].half().cpu(), top.indices.int().cpu(), top.values.half().cpu(),
                          {L: res.hidden_states[L][:, 0].half().cpu() for L in layers}))
        else:  # the prefill: per row, its real positions; top-K in slices (a [B, T, V] tensor would take gigabytes)
            keep = mask.bool()
            for b, r in enumerate(alive):
                kb = keep[b]
                o = out[r]
                hb = h[b][kb]
                tops = [model.lm_head(hb[i:i + 256]).float().log_softmax(-1).topk(top_k, dim=-1)
                        for i in range(0, len(hb), 256)]
                o["ids"].append(torch.cat([t.indices for t in tops]).int().cpu())
                o["logp"].append(torch.cat([t.values for t in tops]).half().cpu())
                o["hidden"].append(hb.half().cpu())
                for L in layers:
                    o[f"layer{L}"].append(res.hidden_states[L][b][kb].half().cpu())
        # a row is done once the token it was just fed is EOS or its max_new_tokens-th response token
        going = [b for b, r in enumerate(alive) if not (step > 0 and (fed[r][-1] in eos or step >= max_new_tokens))]
        if not going:
            break
        if len(going) < len(alive):
            sel = torch.tensor(going, device=dev)
            for layer in cache.layers:
                layer.batch_select_indices(sel)
            mask, logits, temps = mask[sel], logits[sel], temps[sel]
            alive = [alive[b] for b in going]
        last = logits[:, -1]
        sampled = torch.multinomial((last / temps.clamp_min(1e-6)[:, None]).softmax(-1), 1, generator=gen)[:, 0]
        nxt = torch.where(temps > 0, sampled, last.argmax(-1))
        for r, t in zip(alive, nxt.tolist()):
            fed[r].append(t)
        feed = nxt[:, None]
        mask = torch.cat([mask, torch.ones(len(alive), 1, dtype=torch.long, device=dev)], 1)
        step += 1
    for rows_alive, hid, tid, tlp, st in steps:  # scatter the batched step records to their rows
        for b, r in enumerate(rows_alive):
            o = out[r]
            o["hidden"].append(hid[b:b + 1])
            o["ids"].append(tid[b:b + 1])
            o["logp"].append(tlp[b:b + 1])
            for L in layers:
                o[f"layer{L}"].append(st[L][b:b + 1])
    result = []
    for r in range(rows):
        o = out[r]
        row = {"tokens": torch.tensor(fed[r], dtype=torch.int32), "hidden": torch.cat(o["hidden"]),
               "topk_ids": torch.cat(o["ids"]), "topk_logp": torch.cat(o["logp"]), "prompt_len": len(prompts[r])}
        for L in layers:
            row[f"layer{L}"] = torch.cat(o[f"layer{L}"])
        result.append(row)
    return result


def draw(logits: torch.Tensor, temperature: float, gen: torch.Generator) -> int:
    """One token from softmax(logits / temperature) by inverting its CDF with one uniform (float64).
    torch.multinomial draws a random number per vocabulary entry (~1 ms per draw over 49k tokens on
    this CPU, most of the sampled jobs' cost); one uniform gives the same distribution."""
    cdf = (logits.double() / temperature).softmax(-1).cumsum(-1)
    u = torch.rand((), dtype=torch.float64, generator=gen) * cdf[-1]
    return min(int(torch.searchsorted(cdf, u, right=True)), cdf.shape[0] - 1)


@torch.inference_mode()
def generate_slots(model, prompts: list[list[int]], temperatures: list[float], eos: set[int], max_new_tokens: int,
                   gens: list[torch.Generator | None], top_k: int = TOP_K, layers: tuple[int, ...] = (),
                   slots: int = BATCH) -> Iterator[tuple[int, dict]]:
    """Continuous batching on the fast path: yields (job index, record) as each job finishes, records
    as generate_batch makes them. Up to `slots` jobs decode together, one token each per forward
    (fast/slots.py: one padded KV cache, attention masked per slot); a finished job's slot takes the
    next prompt, read alone by the ordinary fast forward (no padding) and copied in. Sampled jobs draw
    with their own generator, so a job's random draws do not depend on which others share its forwards
    (its logits still do, at float rounding: a batched product sums in another order, so a draw that
    falls on a boundary, or a greedy near-tie, can go the other way)."""
    from .. import fast
    from ..fast import slots as slotted

    fm = fast.prepare(model)
    n_layers = len(fm.layers)
    want = tuple(layers) + (n_layers,)
    kv = slotted.SlotKV(fm, slots)
    live: list[dict] = []  # per slot, front-packed: the job, its tokens so far, its records
    queue = iter(range(len(prompts)))

    def admit(j: int) -> None:
        p = prompts[j]
        tmp = fast.StaticKV(n_layers, fm.n_kv_heads, fm.head_dim, fm.device, fm.dtype, capacity=len(p) + 1)
        ids = torch.tensor(p, device=fm.device)
        logits, hid = fast.forward(fm, tmp, ids, torch.arange(len(p), device=fm.device), None, len(p), want)
        kv.load(len(live), tmp)
        live.append({"job": j, "fed": list(p), "rec": [], "new": 0})
        record([live[-1]], logits, hid)

    def record(rows: list[dict], logits: torch.Tensor, hid: dict) -> None:
        """One record per row (one position each), or the prompt's positions for a single admitted row."""
        logits = logits.float()
        top = logits.topk(top_k, dim=-1)  # log-probabilities of the top K only (no [n, vocab] log-softmax)
        ids, h = top.indices.int(), hid[n_layers].half()
        logp = (top.values - logits.logsumexp(-1, keepdim=True)).half()
        extra = {L: hid[L].half() for L in layers}
        greedy = logits.argmax(-1).tolist()
        if len(rows) == 1:
            rows[0]["rec"].append((h, ids, logp, extra))
            # a copy: a view would keep the prompt's whole [n, vocab] logits alive (GBs for 64 long prompts)
            rows[0]["last"], rows[0]["greedy"] = logits[-1].clone(), greedy[-1]
            return
        for b, row in enumerate(rows):
            row["rec"].append((h[b:b + 1], ids[b:b + 1], logp[b:b + 1], {L: e[b:b + 1] for L, e in extra.items()}))
            row["last"], row["greedy"] = logits[b], greedy[b]

    def finish(row: dict) -> dict:
        recs = row["rec"]
        out = {"tokens": torch.tensor(row["fed"], dtype=torch.int32), "hidden": torch.cat([r[0] for r in recs]),
               "topk_ids": torch.cat([r[1] for r in recs]), "topk_logp": torch.cat([r[2] for r in recs]),
               "prompt_len": len(prompts[row["job"]])}
        for L in layers:
            out[f"layer{L}"] = torch.cat([r[3][L] for r in recs])
        return out

    def pick(row: dict) -> int:
        j = row["job"]
        t = temperatures[j]
        if t <= 0:
            return row["greedy"]
        return draw(row["last"], t, gens[j])

    while True:
        while len(live) < slots:
            j = next(queue, None)
            if j is None:
                break
            admit(j)
        if not live:
            return
        for row in live:
            row["fed"].append(pick(row))
            row["new"] += 1
        logits, hid = slotted.step(fm, kv, torch.tensor([row["fed"][-1] for row in live], device=fm.device), want)
        record(live, logits, hid)
        # a job is done once the token it was just fed is EOS or its max_new_tokens-th response token
        done = [b for b, row in enumerate(live) if row["fed"][-1] in eos or row["new"] >= max_new_tokens]
        for b in reversed(done):
            row = live[b]
            last = len(live) - 1
            if b != last:
                kv.move(last, b)
                live[b] = live[last]
            live.pop()
            yield row["job"], finish(row)


def build(target: str = "smollm2-135m", shards: int = 0, seed: int = 0, max_new_tokens: int = MAX_NEW,
          out: str | os.PathLike | None = None, progress=None, log=print, batch: int = BATCH,
          part: tuple[int, int] = (0, 1), device: str | None = None, group: int = 1) -> Path:
    """Generate (or continue generating) the first `shards` shards (0 = all jobs) of data v2.

    `part=(i, n)` makes only shards s with s % n == i: n single-threaded processes side by side
    use n cores without the stalls a multi-threaded one suffers whenever anything else runs.
    `device` (default: the CPU) runs the target there; `group` shards are generated as one batch
    (on a GPU, 8 x 64 rows cost about what 64 do) and written as separate shards. Shards are the
    same jobs whatever the device; sampled rows draw from that device's generator."""
    from ..api import encode_prompt, eos_ids
    from .sources import shares_material, wide_instructions

    root = Path(out) if out else data_dir(target)
    rows = wide_instructions(seed)
    if shares_material([r["prompt"] for r in rows]):
        raise ValueError("training instructions share material with the evaluation prompts")
    jobs = instruction_jobs(rows, seed, batch)
    n_shards = jobs[-1]["shard"] + 1
    shards = min(shards or n_shards, n_shards)
    from ..models import load

    model, tokenizer, _ = load(target, device=device or "cpu")
    layers = feature_layers(model.config.num_hidden_layers)
    manifest = {"version": VERSION, "target": target, "seed": seed, "top_k": TOP_K, "max_new_tokens": max_new_tokens,
                "batch": batch, "layers": list(layers), "jobs": jobs, "instructions": rows}
    root.mkdir(parents=True, exist_ok=True)
    mpath = root / "manifest.json"
    if mpath.exists():
        old = json.loads(mpath.read_text())
        if {k: old.get(k) for k in manifest} != manifest:
            raise ValueError(f"{root} holds data made with other settings; pass another --out or delete it")
    else:
        from ..atomic import atomic_write_text

        atomic_write_text(mpath, json.dumps(manifest))
    todo = [s for s in range(shards) if not (root / f"shard-{s:05d}.safetensors").exists()]
    log(f"distill data in {root}: {shards - len(todo)} of {shards} shards exist, {len(todo)} to make")
    todo = [s for s in todo if s % part[1] == part[0]]
    if not todo:
        return root
    eos = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    dev = next(model.parameters()).device
    from .. import fast

    if dev.type == "cpu" and fast.unsupported_reason(model) is None:
        _build_slotted(root, todo, jobs, rows, tokenizer, model, eos, seed, max_new_tokens, layers, progress, log)
        return root
    groups = [todo[i:i + group] for i in range(0, len(todo), group)]
    bar = progress(groups) if progress else groups
    made, t_all = 0, time.perf_counter()
    for chunk in bar:
        t0 = time.perf_counter()
        mine = {s: [j for j, job in enumerate(jobs) if job["shard"] == s] for s in chunk}
        every = [j for s in chunk for j in mine[s]]
        prompts = [encode_prompt(tokenizer, rows[jobs[j]["prompt"]]["prompt"], True) for j in every]
        gen = torch.Generator(device=dev).manual_seed(seed * 100_003 + chunk[0])
        with packed_linears(model):
            seqs = generate_batch(model, prompts, [jobs[j]["temperature"] for j in every], eos, pad, max_new_tokens,
                                  gen, layers=layers)
        at = 0
        for s in chunk:
            save_shard(root, s, seqs[at:at + len(mine[s])], mine[s], layers)
            at += len(mine[s])
        new = sum(len(q["tokens"]) - q["prompt_len"] + 1 for q in seqs)
        made += new
        rate = made / (time.perf_counter() - t_all)
        msg = dict(resp_tok_s=f"{rate:.0f}", batch_s=f"{time.perf_counter() - t0:.0f}", resp_tokens=made)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(**msg)
        else:
            log(f"shards {chunk}: {msg}")
    return root


def _build_slotted(root: Path, todo: list[int], jobs: list[dict], rows: list[dict], tokenizer, model, eos: set[int],
                   seed: int, max_new_tokens: int, layers: tuple[int, ...], progress, log) -> None:
    """build()'s CPU route: the todo shards' jobs streamed through generate_slots (continuous batching on
    the fast path); a shard is written as soon as its last job finishes. Each sampled job draws with
    a generator seeded by (seed, job), so its random draws do not depend on the batching (its logits
    do, at float rounding)."""
    from ..api import encode_prompt

    members: dict[int, list[int]] = {s: [] for s in todo}  # each shard's jobs, in job order
    for j, job in enumerate(jobs):
        if job["shard"] in members:
            members[job["shard"]].append(j)
    order = [j for s in todo for j in members[s]]
    prompts = [encode_prompt(tokenizer, rows[jobs[j]["prompt"]]["prompt"], True) for j in order]
    temps = [jobs[j]["temperature"] for j in order]
    gens = [torch.Generator().manual_seed(seed * 100_003 + j) if t > 0 else None for j, t in zip(order, temps)]
    waiting = {s: len(members[s]) for s in todo}
    done: dict[int, dict] = {}
    bar = progress(todo) if progress else None
    made, positions, t_all = 0, 0, time.perf_counter()
    for i, rec in generate_slots(model, prompts, temps, eos, max_new_tokens, gens, layers=layers):
        j = order[i]
        done[j] = rec
        made += len(rec["tokens"]) - rec["prompt_len"]
        positions += len(rec["tokens"])
        s = jobs[j]["shard"]
        waiting[s] -= 1
        if waiting[s]:
            continue
        save_shard(root, s, [done.pop(k) for k in members[s]], members[s], layers)
        secs = time.perf_counter() - t_all
        msg = dict(resp_tok_s=f"{made / secs:.0f}", positions_s=f"{positions / secs:.0f}", resp_tokens=made)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(**msg)
        else:
            log(f"shard {s}: {msg}")
    if bar is not None:
        bar.close()


def _part(args) -> None:
    target, shards, seed, max_new_tokens, part = args
    torch.set_num_threads(1)
    from tqdm import tqdm

    build(target, shards, seed, max_new_tokens, part=part,
          progress=lambda it: tqdm(it, desc=f"data part {part[0] + 1}/{part[1]}", position=part[0], mininterval=10))


def build_in_parts(target: str, shards: int, seed: int, max_new_tokens: int, parts: int, log=print) -> None:
    """build() in `parts` single-threaded processes side by side (shard s goes to part s % parts)."""
    import multiprocessing as mp

    build(target, shards, seed, max_new_tokens, log=log, part=(0, 1 << 30))  # writes or checks the manifest only
    with mp.get_context("spawn").Pool(parts) as pool:
        pool.map(_part, [(target, shards, seed, max_new_tokens, (i, parts)) for i in range(parts)])


def save_shard(root: Path, index: int, seqs: list[dict], jobs: list[int], layers: tuple[int, ...] = ()) -> int:
    """Write one shard (see the module doc) from per-sequence dicts as generate_batch returns them."""
    offsets = torch.tensor([0] + [len(q["tokens"]) for q in seqs]).cumsum(0)
    extra = {f"layer{L}": torch.cat([q[f"layer{L}"] for q in seqs]).half() for L in layers}
    atomic_save({**extra, 
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
    layers: dict = None  # data v2: layer -> fp16 [n, H] states of the low and middle layers


class DistillSet:
    """The shards that exist under `root` (or the first `shards` of them), as sequences.

        data = DistillSet(data_dir("smollm2-135m"))
        for seq in data.sequences(): seq.tokens, seq.hidden, seq.topk_ids, seq.topk_logp, ...
    """

    def __init__(self, root: str | os.PathLike, shards: int = 0):
        self.root = Path(root)
        self.manifest = json.loads((self.root / "manifest.json").read_text())
        if self.manifest.get("version") not in (1, VERSION):
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
                layers = {L: t[f"layer{L}"][a:b] for L in self.manifest.get("layers", []) if with_hidden}
                yield Sequence(t["tokens"][a:b].long(), t["hidden"][a:b] if with_hidden else None,
                               t["topk_ids"][a:b].long(), t["topk_logp"][a:b], int(t["prompt_len"][s]),
                               float(job["temperature"]), rows[job["prompt"]]["category"], layers)

    def instructions_used(self) -> list[str]:
        """The instruction texts of the sequences in these shards."""
        jobs, rows = self.manifest["jobs"], self.manifest["instructions"]
        used = {int(path.stem.split("-")[1]) for path in self.paths}
        return [rows[job["prompt"]]["prompt"] for job in jobs if job["shard"] in used]

    def token_count(self) -> int:
        return sum(int(self.shard(p)["offsets"][-1]) for p in self.paths)
