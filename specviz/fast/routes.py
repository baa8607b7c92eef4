"""Which kernel a one-row product takes, chosen by timing both on this machine (once, cached).

A one-token step multiplies one row by every weight matrix. MKL's GEMV on the model's own matrices
streams each weight once with little per-call overhead, and on some CPUs that is the fastest route;
on others oneDNN's pre-packed copies (the route the fast path takes for several rows) are faster even
for one row (a Zen 4 with AVX-512, quiet: 25 ms against 45 ms for all of SmolLM2's products). So the first
fast-path model of a shape on a machine times one pass over all its products through each route,
interleaved (the best of REPEATS rounds), and keeps the faster; the verdict is stored per CPU model, torch
version, thread count and model shape in <cache>/measured/routes.json, so later processes read it.
$SPECVIZ_ONE_ROW_ROUTE=plain|packed skips the measurement.
"""
from __future__ import annotations

import json
import os
import threading
import time

import torch

from ..atomic import atomic_write_text
from ..machine import cpu_model
from ..paths import cache_root

ENV = "SPECVIZ_ONE_ROW_ROUTE"
ROUTES = ("plain", "packed")
REPEATS = 5
_KNOWN: dict[str, dict] = {}  # key -> the stored verdict, in this process
_LOCK = threading.Lock()


def key(fm) -> str:
    hidden = int(fm.embed.shape[1])
    return (f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads | "
            f"{len(fm.layers)} layers x {hidden} ({fm.dtype})")


def store_path():
    return cache_root() / "measured" / "routes.json"


def linears(fm) -> list:
    return [lin for layer in fm.layers for lin in (layer.qkv, layer.o, layer.gate, layer.up, layer.down)] + [fm.head]


@torch.inference_mode()
def measure(fm, repeats: int = REPEATS) -> dict[str, float]:
    """Milliseconds for one row through every product of the model, per route (best round, interleaved)."""
    x = {}
    for lin in linears(fm):
        width = lin.parts[0][0].shape[1]
        x.setdefault(width, torch.randn(1, width, dtype=fm.dtype, device=fm.device))
    times: dict[str, list[float]] = {r: [] for r in ROUTES}
    saved = [lin.min_rows for lin in linears(fm)]  # the plain route's threshold (> 1 row)
    try:
        for _ in range(repeats + 1):  # the first round warms both up and is dropped
            for route in ROUTES:
                for lin, rows in zip(linears(fm), saved):
                    lin.min_rows = 1 if route == "packed" else rows
                t0 = time.perf_counter()
                for lin in linears(fm):
                    lin.split(x[lin.parts[0][0].shape[1]])
                times[route].append(1e3 * (time.perf_counter() - t0))
    finally:
        for lin, rows in zip(linears(fm), saved):
            lin.min_rows = rows
    return {r: min(t[1:]) for r, t in times.items()}  # the least disturbed round of each


def choose(fm) -> str:
    """'packed' or 'plain' for one-row products of this model here (measured once per machine and shape)."""
    forced = os.environ.get(ENV)
    if forced in ROUTES:
        return forced
    k = key(fm)
    with _LOCK:
        if k not in _KNOWN:
            path = store_path()
            try:
                stored = json.loads(path.read_text()) if path.exists() else {}
            except (OSError, ValueError):
                stored = {}
            if k not in stored:
                ms = measure(fm)
                stored[k] = {"route": min(ms, key=ms.get), "ms": {r: round(v, 2) for r, v in ms.items()},
                             "measured": time.strftime("%Y-%m-%d %H:%M")}
                try:
                    atomic_write_text(path, json.dumps(stored, indent=1))
                except OSError:
                    pass  # a read-only cache: this process still uses its measurement
            _KNOWN[k] = stored[k]
        return _KNOWN[k]["route"]
