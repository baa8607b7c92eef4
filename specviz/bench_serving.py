"""`python -m specviz bench-serving`: what the shared decoding thread gives N visitors at once.

For each N (say 1, 2, 4, 8, 16) and each mode, N runs of one configuration on N different prompts go
through a fresh Scheduler together, as the app's visitors do: `turns` (each run's forwards alone, in
turn) and `batched` (a round's verification forwards as one). Reported per (N, mode): total decoded
tokens/s, each run's own tokens/s as its visitor sees it (tokens / wall time from submit to its end),
time to the first token (p50, max), and whether every run's tokens equal the same run decoded alone.
Speed is compared as ratios within one invocation, never asserted.
"""
from __future__ import annotations

import json
import statistics
import threading
import time
from dataclasses import replace

from .config import RunConfig
from .engine import Settings
from .events import Emitted, RunFinished
from .scheduler import Scheduler

MODES = ("turns", "batched")


def serve(configs: list[RunConfig], prompts: list[str], batched: bool) -> dict:
    """All runs through one fresh scheduler at once: per run (tokens, seconds to first token, seconds)."""
    from .api import build

    engines = [build(c) for c in configs]  # built (and models loaded) before the clock starts
    sched = Scheduler(max_active=len(engines), max_waiting=0, max_batch=len(engines) if batched else 1)
    out: list = [None] * len(engines)

    def read(i, ticket, t0):
        first = None
        for batch in ticket.batches():
            for ev in batch:
                if first is None and isinstance(ev, Emitted):
                    first = time.perf_counter() - t0
                if isinstance(ev, RunFinished):
                    out[i] = (ev.token_ids, first, time.perf_counter() - t0)

    t0 = time.perf_counter()
    tickets = [sched.submit(e.stream_text(p, batched=batched)) for e, p in zip(engines, prompts)]
    readers = [threading.Thread(target=read, args=(i, t, t0)) for i, t in enumerate(tickets)]
    for r in readers:
        r.start()
    for r in readers:
        r.join()
    wall = time.perf_counter() - t0
    return dict(wall_s=wall, runs=out, shared_forwards=sched.load()["shared_forwards"])


def run(target: str, drafter: str, shape: str, draft_len: int, counts: list[int], max_new_tokens: int,
        prompts: list[str], modes=MODES, log=print) -> dict:
    from .api import build

    base = RunConfig(target, drafter, shape, draft_len, settings=Settings(max_new_tokens=max_new_tokens)).checked()
    need = max(counts)
    prompts = (prompts * (need // len(prompts) + 1))[:need]
    log(f"bench-serving: {target} <- {drafter} {shape}:{draft_len}, {max_new_tokens} new tokens, N = "
        f"{', '.join(map(str, counts))}, modes {', '.join(modes)}")
    alone = [build(base).generate(p).token_ids for p in prompts]  # each run by itself: the reference
    rows = []
    for n in counts:
        for mode in modes:
            r = serve([replace(base) for _ in range(n)], prompts[:n], mode == "batched")
            tokens = sum(len(ids) for ids, _, _ in r["runs"])
            firsts = [f for _, f, _ in r["runs"] if f is not None]
            row = dict(runs=n, mode=mode, total_tok_s=round(tokens / r["wall_s"], 1),
                       per_visitor_tok_s=round(statistics.median(len(ids) / s for ids, _, s in r["runs"]), 2),
                       first_token_p50_s=round(statistics.median(firsts), 3), first_token_max_s=round(max(firsts), 3),
                       wall_s=round(r["wall_s"], 2), tokens=tokens,
                       identical_to_alone=all(ids == alone[i] for i, (ids, _, _) in enumerate(r["runs"])),
                       shared_forwards=r["shared_forwards"])
            rows.append(row)
            log(f"  N={n:2d} {mode:8s} total {row['total_tok_s']:6.1f} tok/s · per visitor "
                f"{row['per_visitor_tok_s']:5.2f} tok/s · first token p50 {row['first_token_p50_s']:.2f} s, max "
                f"{row['first_token_max_s']:.2f} s · identical to alone: {row['identical_to_alone']}")
    one = {r["mode"]: r["total_tok_s"] for r in rows if r["runs"] == min(counts)}
    for r in rows:
        r["total_vs_one_alone"] = round(r["total_tok_s"] / one.get("turns", r["total_tok_s"]), 2)
    return dict(target=target, drafter=f"{drafter}:{shape}:{draft_len}", max_new_tokens=max_new_tokens, rows=rows)


def add_parser(sub) -> None:
    p = sub.add_parser("bench-serving", help="N concurrent runs through the shared decoding thread: turns vs "
                                             "batched forwards, total and per-visitor tokens/s")
    p.add_argument("--target", default="smollm2-135m")
    p.add_argument("--drafter", default="pld")
    p.add_argument("--shape", default="chain")
    p.add_argument("--draft-len", type=int, default=4)
    p.add_argument("--runs", default="1,2,4,8,16", help="comma-separated numbers of concurrent runs")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--json", help="write the results here")
    p.set_defaults(func=cmd)


def cmd(args) -> int:
    from .atomic import atomic_write_text
    from .machine import cpu_model, machine
    from .prompts import HELDOUT_PROMPTS, read_prompts

    try:
        counts = [int(x) for x in args.runs.split(",") if x.strip()]
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        if not counts or min(counts) < 1 or any(m not in MODES for m in modes):
            raise ValueError
    except ValueError:
        print(f"bench-serving: --runs takes whole numbers >= 1 (e.g. 1,2,4,8), --modes some of {', '.join(MODES)}")
        return 2
    prompts = [r["prompt"] for r in read_prompts(HELDOUT_PROMPTS)]
    report = run(args.target, args.drafter, args.shape, args.draft_len, counts, args.max_new_tokens, prompts, modes)
    import torch

    report["machine"] = f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__} ({machine()})"
    report["date"] = time.strftime("%Y-%m-%d")
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=1))
    return 0 if all(r["identical_to_alone"] for r in report["rows"]) else 1
