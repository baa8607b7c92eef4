"""What runs measured on this machine, kept per machine across restarts: the target's forward-cost
curve (seconds by new positions, metrics.CostCurve) and each drafter's decode speed against plain
decoding. The metrics table predicts from the curve; the drafter menu and the pre-run warning use
the speeds. Nothing here is a constant: an empty store says "not measured yet".

    record(events)                      after a run (finished, stopped or timed out)
    curve(target, fast_path)            -> CostCurve
    speed(target, drafter)              -> Speed | None   (decode tok/s, runs, ratio to plain decoding)

The store is $SPECVIZ_CACHE/measured/<machine>.json (models.cache_root()); a read-only or missing
cache only means nothing is remembered across restarts.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from .. import models, views
from ..machine import machine  # the store is named by it
from ..events import Event
from ..metrics import CostCurve

KEEP_SAMPLES = 48  # forwards kept per (target, path, size)
KEEP_RUNS = 24  # decode speeds kept per (target, drafter)
MIN_RUNS = 1  # runs before a drafter's speed is shown
PLAIN = "none"  # the drafter name of plain (autoregressive) decoding in a run config

_LOCK = threading.Lock()
_STORE: dict | None = None


def path() -> Path:
    return models.cache_root() / "measured" / f"{machine()}.json"


def _store() -> dict:
    global _STORE
    if _STORE is None:
        try:
            data = json.loads(path().read_text())
            _STORE = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            _STORE = {}
        _STORE.setdefault("costs", {})
        _STORE.setdefault("speeds", {})
    return _STORE


def _save(store: dict) -> None:
    target = path()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".measured.", dir=target.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(store, f)
        os.replace(tmp, target)
    except OSError:
        pass


def forget() -> None:
    """Drop what is in memory (tests; the next use reads the store again)."""
    global _STORE
    with _LOCK:
        _STORE = None


def run_keys(events: list[Event]) -> tuple[str, str, bool, bool] | None:
    """(target, drafter, fast path, parallel) of a run, from its recorded config; None without one."""
    start = views.run_started(events)
    config = start.config if start is not None and isinstance(start.config, dict) else None
    if not config or not isinstance(config.get("target"), str) or not isinstance(config.get("drafter"), str):
        return None
    return config["target"], config["drafter"], bool(config.get("fast_path", True)), bool(config.get("parallel"))


def cost_key(target: str, fast_path: bool) -> str:
    return f"{target}|{'fast' if fast_path else 'plain'}"


def record(events: list[Event]) -> None:
    """Remember a run's decode-step forwards (not the first step: it reads the prompt) and its decode speed."""
    keys = run_keys(events)
    steps = views.split_steps(events)
    if keys is None or len(steps) < 2:
        return
    target, drafter, fast, parallel = keys
    decode = views.decode_metrics(events)
    with _LOCK:
        store = _store()
        if not parallel:  # a parallel run's forwards share the cores with the drafter's
            costs = store["costs"].setdefault(cost_key(target, fast), {})
            for step in steps[1:]:
                if step.finished is not None and step.verified is not None:
                    kept = costs.setdefault(str(1 + len(step.nodes)), [])
                    kept.append(step.finished.verify_s)
                    del kept[:-KEEP_SAMPLES]
        if decode is not None and decode.tokens and decode.elapsed_s > 0:
            speeds = store["speeds"].setdefault(f"{target}|{drafter}", [])
            speeds.append(decode.tokens_per_s)
            del speeds[:-KEEP_RUNS]
        _save(store)


def curve(target: str, fast_path: bool = True) -> CostCurve:
    with _LOCK:
        costs = _store()["costs"].get(cost_key(target, fast_path), {})
        return CostCurve({int(n): list(v) for n, v in costs.items()})


def curve_of(events: list[Event]) -> CostCurve:
    """The cost curve of the run's target and path on this machine (empty for a run without a config)."""
    keys = run_keys(events)
    return curve(keys[0], keys[2]) if keys is not None else CostCurve()


@dataclass(frozen=True)
class Speed:
    tokens_per_s: float  # median decode speed (prefill excluded) over the runs kept
    runs: int
    plain: float | None  # the same for plain decoding of the same target, if measured

    @property
    def ratio(self) -> float | None:
        return self.tokens_per_s / self.plain if self.plain else None


def _median(key: str) -> tuple[float, int] | None:
    values = _store()["speeds"].get(key) or []
    return (statistics.median(values), len(values)) if len(values) >= MIN_RUNS else None


def speed(target: str, drafter: str) -> Speed | None:
    with _LOCK:
        mine, plain = _median(f"{target}|{drafter}"), _median(f"{target}|{PLAIN}")
    if mine is None:
        return None
    return Speed(mine[0], mine[1], plain[0] if plain else None)


def slower_warning(target: str, drafter: str) -> str | None:
    """One line when the drafter measured slower than plain decoding of this target on this machine."""
    if drafter == PLAIN:
        return None
    s = speed(target, drafter)
    if s is None or s.ratio is None or s.ratio >= 1.0:
        return None
    return (f"On this machine {drafter} decoded {target} at {s.ratio:.2f}× the speed of plain decoding "
            f"(median of {s.runs} run{'s' if s.runs != 1 else ''}): expect this run to be slower than no drafter.")
