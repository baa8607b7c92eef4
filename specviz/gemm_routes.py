"""Which matrix-multiply route makes a forward of a few rows cheapest on this machine.

A verification forward of n positions multiplies n rows by every weight matrix of the model. At one
row that is bounded by memory bandwidth (each weight streams once); how much more n rows cost depends
on the kernel. This times every route the CPU build offers on the model's own matrices (each layer's
q, k, v, o, gate, up and down and the LM head, on random inputs), interleaved per row count:

- onednn: weights pre-packed once for oneDNN (`_reorder_linear_weight`), the fast path's route;
- mkl: plain `F.linear` on the model's weights (MKL sgemm), what transformers' eager forward does;
- mkl-packed: MKL's packed GEMM (`_mkl_reorder_linear_weight`), packed again for each row count,
  since its packed layout is made for one batch size;
- compile: `torch.compile` with freezing and max-autotune (CPP and ATen GEMM templates), compiled
  once per row count; its compile time is reported, and counts against start-up.

    python -m specviz profile --target smollm2-135m --kernels [--compile]
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

ROWS = (1, 2, 4, 9, 16)
ROUTES = ("onednn", "mkl", "mkl-packed", "compile")


def weight_matrices(model: torch.nn.Module) -> list[torch.Tensor]:
    """The model's Linear weights ([out, in], fp32), in forward order."""
    return [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Linear)]


def available_routes(model: torch.nn.Module, compile: bool = False, row_counts: int = len(ROWS)
                     ) -> tuple[list[str], dict[str, str]]:
    """(the routes to time, {route left out: why}). All are prepared before timing: oneDNN holds one more
    copy of the weights, MKL-packed and compile one per row count, so routes are added only while the
    machine has room for their copies with one copy to spare."""
    from .fast.weights import available_memory

    param = next(model.parameters())
    cpu32 = param.device.type == "cpu" and param.dtype == torch.float32
    copies = sum(w.numel() * w.element_size() for w in weight_matrices(model))
    free = available_memory()
    room = float("inf") if free is None else free - copies
    wanted = {"onednn": cpu32 and torch.backends.mkldnn.is_available(),
              "mkl": True,
              "mkl-packed": cpu32 and torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear"),
              "compile": compile}
    routes, skipped = [], {}
    for route, ok in wanted.items():
        if not ok:
            if route != "compile":
                skipped[route] = "not in this torch build / device"
        else:
            need = {"mkl": 0, "onednn": copies}.get(route, copies * row_counts)
            if need > room:
                skipped[route] = f"not enough free memory for {need / 1e9:.1f} GB of weight copies"
                continue
            routes.append(route)
            room -= need
    return routes, skipped


class _AllLinears(torch.nn.Module):
    """Every weight applied to the input of its width: the graph torch.compile sees for the compile route."""

    def __init__(self, weights: list[torch.Tensor]):
        super().__init__()
        self.weights = torch.nn.ParameterList([torch.nn.Parameter(w, requires_grad=False) for w in weights])

    def forward(self, inputs: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        return [F.linear(inputs[w.shape[1]], w) for w in self.weights]


def _compiled(weights: list[torch.Tensor], example: dict[int, torch.Tensor]) -> tuple[Callable, float]:
    """torch.compile(freezing, max-autotune) of all the products at one row count; (function, compile seconds)."""
    import torch._dynamo.config as dynamo
    import torch._inductor.config as inductor

    module = _AllLinears(weights).eval()
    # one graph per row count, all from the same forward: raise dynamo's per-function recompile limit (8),
    # past which it would silently run the rest eagerly
    with inductor.patch(freezing=True, max_autotune=True, max_autotune_gemm_backends="CPP,ATEN"), \
            dynamo.patch(recompile_limit=1024):
        fn = torch.compile(module, dynamic=False)
        start = time.perf_counter()
        with torch.no_grad():
            fn(example)
        seconds = time.perf_counter() - start
    return fn, seconds


def _route(name: str, weights: list[torch.Tensor], m: int, inputs: dict[int, torch.Tensor], packed: dict):
    """(a no-argument function running all products at m rows, seconds spent preparing it)."""
    x = {width: t[:m].contiguous() for width, t in inputs.items()}
    start = time.perf_counter()
    if name == "onednn":
        if "onednn" not in packed:
            packed["onednn"] = [torch.ops.mkldnn._reorder_linear_weight(w, None) for w in weights]
        ws = packed["onednn"]
        fn = lambda: [torch.ops.mkldnn._linear_pointwise(x[w.shape[1]], p, None, "none", [], "")  # noqa: E731
                      for w, p in zip(weights, ws)]
    elif name == "mkl":
        fn = lambda: [F.linear(x[w.shape[1]], w) for w in weights]  # noqa: E731
    elif name == "mkl-packed":
        ws = [torch.ops.mkl._mkl_reorder_linear_weight(w, m) for w in weights]
        fn = lambda: [torch.ops.mkl._mkl_linear(x[w.shape[1]], p, w, None, m) for w, p in zip(weights, ws)]  # noqa: E731
    elif name == "compile":
        compiled, seconds = _compiled(weights, x)
        run = lambda: compiled(x)  # noqa: E731
        return run, seconds
    else:
        raise ValueError(f"unknown GEMM route {name!r}; known: {', '.join(ROUTES)}")
    return fn, time.perf_counter() - start


@torch.no_grad()
def compare_routes(model: torch.nn.Module, rows: Iterable[int] = ROWS, repeats: int = 7, compile: bool = False,
                   progress: Callable[[Iterable, str], Iterable] = lambda items, desc: items) -> dict:
    """ms for all of the model's products at each row count, per route (medians of `repeats` runs, all
    row counts and routes interleaved), with each route's cost relative to its own 1 row and
    to the fastest route at 1 row, and the largest output difference from plain F.linear."""
    weights = weight_matrices(model)
    nbytes = sum(w.numel() * w.element_size() for w in weights)
    rows = sorted({int(m) for m in rows})
    routes, skipped = available_routes(model, compile, len(rows))
    gen = torch.Generator().manual_seed(0)
    param = weights[0]
    inputs = {w.shape[1]: torch.randn(max(rows), w.shape[1], generator=gen).to(param.device, param.dtype)
              for w in weights}
    ms: dict[str, dict[int, float]] = {r: {} for r in routes}
    prepare_s: dict[str, dict[int, float]] = {r: {} for r in routes}
    max_diff: dict[str, float] = {r: 0.0 for r in routes}
    packed: dict = {}
    fns = {}  # every (route, rows) prepared first, so all of them are timed side by side
    for m in progress(rows, "GEMM routes: preparing"):
        for r in routes:
            fns[r, m], prepare_s[r][m] = _route(r, weights, m, inputs, packed)
        reference = fns["mkl", m]()
        for r in routes:
            out = fns[r, m]()
            max_diff[r] = max(max_diff[r], max(float((a - b).abs().max()) for a, b in zip(out, reference)))
            fns[r, m]()  # a second warm-up: first calls allocate and pick kernels
    times = {key: [] for key in fns}
    for _ in progress(range(repeats), "GEMM routes: timing"):
        for key, fn in fns.items():  # interleaved over row counts and routes: a slower spell hits all alike
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    for (r, m), t in times.items():
        ms[r][m] = statistics.median(t) * 1e3
    del fns
    first = rows[0]
    best_first = min(ms[r][first] for r in routes)
    return {
        "weights_mb": nbytes / 1e6,
        "rows": rows,
        "routes": routes,
        "skipped": skipped,
        "repeats": repeats,
        "ms": ms,
        "ratio_to_own_first": {r: {m: ms[r][m] / ms[r][first] for m in rows} for r in routes},
        "ratio_to_best_first": {r: {m: ms[r][m] / best_first for m in rows} for r in routes},
        "best": {m: min(routes, key=lambda r: ms[r][m]) for m in rows},
        "prepare_seconds": prepare_s,
        "max_abs_diff_vs_mkl": max_diff,
        "gb_per_s_at_first": {r: nbytes / ms[r][first] / 1e6 for r in routes},
    }


def format_routes(g: dict) -> str:
    rows, routes = g["rows"], g["routes"]
    lines = [f"all {g['weights_mb']:.0f} MB of weight matrices times n random rows, by GEMM route "
             f"(ms, median of {g['repeats']} interleaved runs; in brackets: x the fastest route at {rows[0]} row)"]
    lines.append(f"{'rows':>6}" + "".join(f"{r:>22}" for r in routes) + f"{'fastest':>14}")
    for m in rows:
        lines.append(f"{m:>6}" + "".join(f"{g['ms'][r][m]:>13.1f} ({g['ratio_to_best_first'][r][m]:>5.2f}x)"
                                         for r in routes) + f"{g['best'][m]:>14}")
    lines.append(f"{'GB/s':>6}" + "".join(f"{g['gb_per_s_at_first'][r]:>22.1f}" for r in routes)
                 + f"   (weights streamed per second at {rows[0]} row)")
    lines.append(f"{'diff':>6}" + "".join(f"{g['max_abs_diff_vs_mkl'][r]:>22.1e}" for r in routes)
                 + "   (largest |output - F.linear|)")
    for route, why in g["skipped"].items():
        lines.append(f"{route}: not timed ({why})")
    if "compile" in routes:
        lines.append("compile: " + ", ".join(f"{m} rows {s:.0f} s" for m, s in g["prepare_seconds"]["compile"].items())
                     + " to compile (paid once per shape per process)")
    return "\n".join(lines)
