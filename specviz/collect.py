"""`python -m specviz collect`: logged outcomes for the drafter-choice policy (issue 18).

Every arm (choice/arms.py: AR, the copying drafters, the trained drafters) runs every training prompt
(a seeded sample of train/sources.wide_instructions(), which never shares material with the
evaluation prompts), greedy, one prompt at a time and every arm in the same order, so a slow spell
of a shared machine hits all arms of a prompt alike. Per (prompt, arm) a row keeps the decode-only
counters (tau, acceptance, beta by depth, c, verification cost, tokens/s: Metrics.summary()) and
each decode step's verification forward (positions, seconds) for this machine's cost curve; per
prompt the pooled prefill states (fp16) and the text statistics.

The reward is computed when the policy is trained (choice/train.py): the speedup expected from tau
and the cost curve pooled over the whole collection (metrics.expected_speedup, load-independent),
with wall-clock tokens/s kept beside it.

Resumable: outcomes.jsonl gains one line per finished prompt (flushed and synced); a rerun skips the
prompts already there, runs only the missing arms of a prompt logged before an arm's weights existed
(eagle3 while it trains), and ignores a torn last line. card.json says what was logged and how long
it took.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

from .choice.arms import DEFAULT_ARMS, arm_label, parse_arm
from .choice.features import prefill_states, text_stats

FORMAT = "specviz-policy-outcomes/1"


def default_dir(target: str) -> Path:
    from .models import cache_root

    return cache_root() / "policy" / Path(target).name


def prompt_key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()[:16]


def training_prompts(limit: int, seed: int = 0, seen_shards: int = 0) -> list[dict]:
    """A seeded sample of the wide instruction set (rows: category, prompt, source); checked once more
    against every evaluation prompt. `seen_shards`: the instructions whose responses fill the first
    that many shards of data v2 are left out (a trained arm learned from them: see v2_shards_seen)."""
    from .prompts import overlapping
    from .train.sources import shares_material, wide_instructions

    rows = unseen_instructions(wide_instructions(seed), seed, seen_shards)
    random.Random(seed).shuffle(rows)
    rows = rows[:limit] if limit else rows
    clash = set(shares_material([r["prompt"] for r in rows])) | set(overlapping([r["prompt"] for r in rows]))
    return [r for r in rows if r["prompt"] not in clash]


def unseen_instructions(rows: list[dict], seed: int, shards: int) -> list[dict]:
    """The rows none of whose data-v2 jobs lies in the first `shards` shards."""
    if shards <= 0:
        return list(rows)
    from .train.data import instruction_jobs

    seen = {job["prompt"] for job in instruction_jobs(rows, seed) if job["shard"] < shards}
    return [r for i, r in enumerate(rows) if i not in seen]


def v2_shards_seen(target: str, arms: list[str]) -> int:
    """How many shards of data v2 the arms' trained heads learned from (their weights' metadata names
    the shards of each data set, v2 last). Logged on those instructions, a head's arms would score its
    training accuracy (top-1 ~0.7 against ~0.5 on new text) and the policy would learn to overrate them."""
    from safetensors import safe_open

    from .drafters.feature_head import default_weights

    seen = 0
    for kind in sorted({k for a in arms for k in parse_arm(a)[0].split("+")} & {"eagle", "eagle3"}):
        path = default_weights(target, kind)
        if not path.exists():
            continue
        with safe_open(str(path), "pt") as f:
            shards = (f.metadata() or {}).get("shards", "0").split("+")[-1]
        seen = max(seen, int(shards) if shards.isdigit() else 0)
    return seen


def encode_states(states: torch.Tensor) -> str:
    return base64.b64encode(states.to(torch.float16).numpy().tobytes()).decode()


def decode_states(text: str) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype=np.float16).astype("float32"))


def read_outcomes(path: Path) -> list[dict]:
    """The finished prompts' rows, one per prompt: a later line for the same prompt (arms added when
    their weights appeared) adds its arms to the earlier one. A torn last line is skipped."""
    rows: dict[str, dict] = {}
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict) or row.get("format") != FORMAT:
            continue
        if row["key"] in rows:
            rows[row["key"]]["arms"].update(row["arms"])
            rows[row["key"]]["seconds"] += row["seconds"]
        else:
            rows[row["key"]] = row
    return list(rows.values())


def arm_outcome(events, seconds: float) -> dict:
    from . import views

    decode = views.decode_metrics(events)
    end = views.run_finished(events)
    forwards = [(1 + len(s.nodes), s.finished.verify_s) for s in views.split_steps(events)[1:]
                if s.finished is not None and s.verified is not None]
    return {"metrics": decode.summary() if decode is not None else None, "tokens": end.token_ids,
            "stop_reason": end.stop_reason, "forwards": [[n, round(t, 6)] for n, t in forwards],
            "wall_s": round(seconds, 4)}


def collect(target: str, arms: list[str], limit: int, max_new_tokens: int, out: Path, seed: int = 0,
            fast_path: bool = True, progress=None, log=print) -> Path:
    from .api import build
    from .config import RunConfig
    from .engine import Settings

    out.mkdir(parents=True, exist_ok=True)
    path = out / "outcomes.jsonl"
    done = {row["key"]: row for row in read_outcomes(path)}
    seen = v2_shards_seen(target, arms)
    prompts = training_prompts(limit, seed, seen)
    if not prompts:
        raise ValueError(f"no training prompt is left: the arms' heads learned from the first {seen} shards of data v2, "
                         f"which hold every instruction")
    settings = Settings(max_new_tokens=max_new_tokens)
    engines, skipped = {}, []
    for label in arms:
        name, shape, length = parse_arm(label)
        try:
            engines[arm_label(name, shape, length)] = build(RunConfig(target, name, shape, max(1, length),
                                                                      settings=settings, fast_path=fast_path))
        except (ValueError, OSError) as err:
            skipped.append(f"skipped {label}: {err}")
            log(f"note: skipped arm {label}: {err}")
    if "none" not in engines:
        raise ValueError("the arms must include 'none' (plain decoding): every reward is relative to it")
    first = engines["none"]
    # a prompt is to do when it is new, or when an arm that can run now was not logged for it (its weights came later)
    todo = [p for p in prompts if set(engines) - set(done.get(prompt_key(p["prompt"]), {}).get("arms", {}))]
    log(f"collect: {len(prompts)} training prompts ({len(done)} already logged, {len(todo)} to go), "
        f"arms: {', '.join(engines)}; writing {path}")
    started = time.perf_counter()
    bar = progress(todo) if progress else todo
    if path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        with open(path, "a") as f:  # a torn last line (an interrupted write) stays on its own line
            f.write("\n")
    try:
        _log_prompts(bar, engines, first, done, settings, max_new_tokens, path)
    finally:  # stopped (Ctrl-C) or done: the card says what was logged so far
        write_card(out, target, list(engines), skipped, max_new_tokens, seed, limit, time.perf_counter() - started,
                   seen)
    return path


def _log_prompts(bar, engines: dict, first, done: dict, settings, max_new_tokens: int, path: Path) -> None:
    """One line per prompt into outcomes.jsonl: every arm not logged yet for it, and plain decoding."""
    model = first.engine.target.model
    with open(path, "a") as f:
        for p in bar:
            ids = first.encode(p["prompt"])
            if len(ids) + max_new_tokens + 128 > first.engine.target.context:
                continue
            t0 = time.perf_counter()
            key = prompt_key(p["prompt"])
            logged = done.get(key, {}).get("arms", {})
            states = prefill_states(model, ids, first.engine.target.fast_path)
            outcomes = {}
            for label, spec in engines.items():
                if label in logged and label != "none":
                    continue
                t1 = time.perf_counter()
                events = list(spec.engine.stream(ids, settings, p["prompt"]))
                outcomes[label] = arm_outcome(events, time.perf_counter() - t1)
            ar_tokens = outcomes["none"]["tokens"]
            for o in outcomes.values():
                o["same_as_ar"] = o.pop("tokens") == ar_tokens
            if "none" in logged:
                del outcomes["none"]  # plain decoding ran again only as the reference of the new arms
            row = {"format": FORMAT, "key": key, "category": p["category"],
                   "source": p.get("source", ""), "prompt_tokens": len(ids), "prompt": p["prompt"][:200],
                   "stats": [round(x, 6) for x in text_stats(ids, first.engine.decode(ids))],
                   "states": encode_states(states), "arms": outcomes, "seconds": round(time.perf_counter() - t0, 3)}
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


def write_card(out: Path, target: str, arms: list[str], skipped: list[str], max_new_tokens: int, seed: int,
               limit: int, elapsed: float, seen_shards: int = 0) -> None:
    from .atomic import atomic_write_text
    from .ui.measured import machine

    rows = read_outcomes(out / "outcomes.jsonl")
    old = {}
    try:
        old = json.loads((out / "card.json").read_text())
    except (OSError, ValueError):
        pass
    card = {
        "target": target, "arms": arms, "skipped": skipped, "max_new_tokens": max_new_tokens, "seed": seed,
        "limit": limit, "left_out_v2_shards": seen_shards, "prompts": len(rows), "machine": machine(),
        "torch_threads": torch.get_num_threads(),
        "seconds": round(old.get("seconds", 0.0) + elapsed, 1),
        "prompt_seconds": round(sum(r["seconds"] for r in rows), 1),
        "categories": {c: sum(r["category"] == c for r in rows) for c in sorted({r["category"] for r in rows})},
        "not_identical_to_ar": {a: sum(not r["arms"][a]["same_as_ar"] for r in rows if a in r["arms"]) for a in arms},
        "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(["python -m specviz"] + sys.argv[1:]) if sys.argv and "specviz" in sys.argv[0] else "",
    }
    atomic_write_text(out / "card.json", json.dumps(card, indent=1))


def cmd_collect(a) -> int:
    from tqdm import tqdm

    import signal

    def stopped(signum, frame):  # `kill` (a background job ignores Ctrl-C): end like Ctrl-C, card written
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stopped)
    arms = [s.strip() for s in a.arms.split(",") if s.strip()] if a.arms else list(DEFAULT_ARMS)
    out = Path(a.out) if a.out else default_dir(a.target)
    path = collect(a.target, arms, a.limit, a.max_new_tokens, out, a.seed, not a.no_fast_path,
                   progress=lambda rows: tqdm(rows, desc="collect", unit="prompt", file=sys.stderr),
                   log=lambda s: print(s, file=sys.stderr))
    print(f"outcomes in {path} (card: {path.parent / 'card.json'})")
    return 0


def add_parser(sub) -> None:
    c = sub.add_parser("collect", help="run every drafter arm on training prompts and log the outcomes "
                       "(data for train-policy; resumable)")
    c.add_argument("--target", default="smollm2-135m")
    c.add_argument("--arms", help=f"comma-separated drafter:shape:length (default: {','.join(DEFAULT_ARMS)})")
    c.add_argument("--limit", type=int, default=2000, help="training prompts (a seeded sample; 0 = all)")
    c.add_argument("--max-new-tokens", type=int, default=64)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", help="directory (default: <cache>/policy/<target>)")
    c.add_argument("--no-fast-path", action="store_true")
    c.set_defaults(func=cmd_collect)
