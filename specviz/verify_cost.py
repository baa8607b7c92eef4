"""What one target forward over n new positions costs on this machine, measured once and cached.

A tree of k drafted nodes is verified in one forward of 1 + k positions. On a GPU that costs about a
one-token step for any small k; on a CPU it depends on the kernels the fast path picks per row count
and is not monotone (on a Zen 4 laptop-class CPU, 2-6 positions cost the same as one, 9 cost 1.19x,
16 cost 1.55x). A drafter that sizes its tree by what verification costs (drafters/priced.py) reads
this curve. It is timed like `profile` times forwards (a chain of n - 1 nodes after a cached prefix,
interleaved repeats, medians) and cached per machine, model, path, dtype and device, because the same
tree is cheap on one machine and dear on another.
"""
from __future__ import annotations

import json
import statistics
from datetime import datetime, timezone

import torch

from .atomic import atomic_write_text
from .lm import CachedLM
from .machine import machine
from .paths import cache_root
from .stepper import Stepper

MAX_POSITIONS = 25  # 1 + the most nodes a priced tree drafts
PREFIX = 200
REPEATS = 7


def _key(lm: CachedLM) -> str:
    cfg, p = lm.model.config, next(lm.model.parameters())
    name = getattr(cfg, "_name_or_path", "") or cfg.model_type
    shape = f"{getattr(cfg, 'num_hidden_layers', '?')}x{getattr(cfg, 'hidden_size', '?')}"
    return f"{machine()}|{name}|{shape}|{'fast' if lm.fast_path else 'plain'}|{str(p.dtype).replace('torch.', '')}|{p.device}"


def _path():
    return cache_root() / "measured" / "verify-cost.json"


def measure(lm: CachedLM, positions: int = MAX_POSITIONS, repeats: int = REPEATS) -> dict[int, float]:
    """Median seconds of a forward of n = 1 .. positions new positions after PREFIX cached tokens (the
    last committed token and a chain of n - 1 nodes; stepper.Stepper), sizes interleaved."""
    prefix_len = min(PREFIX, max(1, lm.context - 2 * positions - 8))
    stepper = Stepper(lm, [(i * 7919) % lm.vocab for i in range(prefix_len)])
    times = {n: [] for n in range(1, positions + 1)}
    for r in range(repeats + 1):  # the first round warms every size up and is not kept
        for n in times:
            seconds = stepper.step(n)
            if r:
                times[n].append(seconds)
    return {n: statistics.median(v) for n, v in times.items()}


def seconds_by_positions(lm: CachedLM) -> dict[int, float]:
    """The cached curve for this machine and target (measured now, ~10 s for SmolLM2 on 2 cores, if
    there is none). An unreadable cache is measured again and replaced."""
    key, path = _key(lm), _path()
    try:
        store = json.loads(path.read_text())
        if not isinstance(store, dict):
            store = {}
    except (OSError, ValueError):
        store = {}
    entry = store.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("seconds"), dict):
        try:
            return {int(n): float(s) for n, s in entry["seconds"].items()}
        except (TypeError, ValueError):
            pass
    with torch.inference_mode():
        curve = measure(CachedLM(lm.model, lm.fast_path))  # a cache of its own: `lm` keeps its state
    store[key] = {"seconds": {str(n): s for n, s in curve.items()},
                  "measured": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(store, indent=1))
    return curve
