"""What a target forward costs: n new tokens after a cached prefix, plain vs fast path, and where a
one-token step's time goes.

    python -m specviz profile --target smollm2-135m           # both paths side by side
    python -m specviz profile --target smollm2-135m --no-fast-path

`profile(model)` returns a dict (the bench records it in its JSON); `format_profile` prints it.
Timings interleave the two paths (plain, fast, plain, fast, ... for every size and repeat) and report
medians, so a machine shared with other jobs slows both alike; ratios are steadier than times.
The breakdown runs a few one-token steps under torch.profiler and sums the time of the operators
the step calls directly, by kind; "Python and dispatch" is the rest of the step's wall time.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Iterable

import torch

from . import fast
from .lm import CachedLM
from .stepper import Stepper

SIZES = (1, 2, 4, 8, 9, 16, 32)  # 9 = verifying 8 drafted tokens
PREFIX = 200  # cached tokens before the timed forward
REPEATS = 7
BREAKDOWN_STEPS = 5

# What the step's top-level operators do (torch.profiler names); anything else is "other ops".
KINDS = {
    "GEMMs": {"aten::linear", "aten::addmm", "aten::mm", "aten::matmul", "aten::bmm", "mkldnn::_linear_pointwise",
              "mkl::_mkl_linear"},
    "attention": {"aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention_for_cpu",
                  "aten::_scaled_dot_product_attention_math", "aten::softmax", "aten::_softmax"},
    "norms, rotary, elementwise": {"aten::rms_norm", "aten::_fused_rms_norm", "aten::pow", "aten::mean",
                                   "aten::rsqrt", "aten::mul", "aten::mul_", "aten::add", "aten::add_", "aten::neg",
                                   "aten::silu", "aten::cos", "aten::sin", "aten::complex", "aten::div", "aten::sub",
                                   "aten::addcmul", "aten::flip", "aten::sum"},
    "KV cache writes, concatenation, copies": {"aten::cat", "aten::copy_", "aten::index_select", "aten::index_copy_",
                                               "aten::index_put_", "aten::contiguous", "aten::clone", "aten::to",
                                               "aten::_to_copy"},
}
OTHER_OPS, PYTHON = "other ops (embedding, views, masks, ...)", "Python and dispatch (between ops)"


def wait_for_quiet(limit: float, timeout: float = 1800.0) -> float:
    """Sleep until the machine's CPU is less than `limit` busy (other jobs); returns the busy share seen."""
    start = time.monotonic()
    busy = cpu_busy()
    while busy >= limit and time.monotonic() - start < timeout:
        time.sleep(1.0)
        busy = cpu_busy()
    return busy


def cpu_busy(seconds: float = 0.3) -> float:
    """Share of the machine's CPU time used by anything during `seconds` (we sleep): a noise indicator."""
    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + values[4]

    try:
        total0, idle0 = read()
        time.sleep(seconds)
        total1, idle1 = read()
    except OSError:
        return float("nan")
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def _breakdown(stepper: Stepper, steps: int, quiet: float | None = None) -> dict[str, float]:
    """ms per one-token step by kind of work, from torch.profiler's top-level operators."""
    from torch.profiler import ProfilerActivity, profile, record_function

    stepper.step(1)
    if quiet is not None:
        wait_for_quiet(quiet)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            with record_function("specviz_step"):
                stepper.step(1)
    events = prof.events()
    step_ids = {e.id for e in events if e.name == "specviz_step"}
    wall = sum(e.cpu_time_total for e in events if e.name == "specviz_step")
    out = {kind: 0.0 for kind in KINDS} | {OTHER_OPS: 0.0}
    for e in events:
        if e.cpu_parent is None or e.cpu_parent.id not in step_ids:
            continue
        kind = next((k for k, names in KINDS.items() if e.name in names), OTHER_OPS)
        out[kind] += e.cpu_time_total
    out[PYTHON] = max(0.0, wall - sum(out.values()))
    out["total (under the profiler)"] = wall
    return {k: v / 1e3 / steps for k, v in out.items()}


def gemm_floor(model: torch.nn.Module, rows: Iterable[int] = (1, 9), repeats: int = REPEATS) -> dict:
    """The fast path's matrix products alone (every layer's and the LM head's, with the kernels the fast
    path picks for that many rows, on random inputs): what a forward cannot go below. At one row it is
    the time to stream the weights once, so weight bytes / time is the memory bandwidth achieved."""
    fm = fast.prepare(model)
    linears = [lin for layer in fm.layers for lin in (layer.qkv, layer.o, layer.gate, layer.up, layer.down)]
    linears.append(fm.head)
    nbytes = sum(lin.nbytes() for lin in linears)
    gen = torch.Generator().manual_seed(0)
    inputs = {}
    for lin in linears:
        width = lin.parts[0][0].shape[1]
        inputs.setdefault(width, torch.randn(max(rows), width, generator=gen).to(fm.device, fm.dtype))

    def run(m: int) -> float:
        start = time.perf_counter()
        for lin in linears:
            x = inputs[lin.parts[0][0].shape[1]][:m]
            lin.split(x) if len(lin.parts) > 1 else lin(x)
        return time.perf_counter() - start

    rows = list(rows)
    for m in rows:
        run(m)
    times = {m: [] for m in rows}
    for _ in range(repeats):
        for m in rows:
            times[m].append(run(m))
    ms = {m: statistics.median(t) * 1e3 for m, t in times.items()}
    return {"weights_mb": nbytes / 1e6, "ms": ms, "packed": fm.packed,
            "gb_per_s_at_one_row": nbytes / ms[rows[0]] / 1e6 if rows[0] == 1 else None}


def profile(model: torch.nn.Module, paths: Iterable[str] = ("plain", "fast"), sizes: Iterable[int] = SIZES,
            prefix: int = PREFIX, repeats: int = REPEATS, breakdown_steps: int = BREAKDOWN_STEPS,
            progress: Callable[[Iterable, str], Iterable] = lambda items, desc: items, name: str = "",
            quiet: float | None = None) -> dict:
    """Forward cost of each size in `sizes` after `prefix` cached tokens, per path ("plain": transformers'
    forward with a DynamicCache, "fast": specviz.fast), medians of `repeats` interleaved runs, plus the
    one-token step's breakdown. A path the model cannot take is left out (the reason is recorded).
    quiet: on a shared machine, time a (repeat, size) group only while other jobs keep the CPU less than
    this busy, and time it again if they got busier meanwhile (waits as long as it takes)."""
    sizes, paths = [int(n) for n in sizes], list(paths)
    reason = fast.unsupported_reason(model)
    if reason and "fast" in paths:
        paths.remove("fast")
    gen = torch.Generator().manual_seed(0)
    vocab = int(model.config.vocab_size)
    prefix_ids = torch.randint(0, vocab, (prefix,), generator=gen).tolist()
    busy = cpu_busy()
    setup_s, steppers = {}, {}
    for path in paths:
        start = time.perf_counter()
        steppers[path] = Stepper(CachedLM(model, fast_path=path == "fast"), prefix_ids)
        setup_s[path] = time.perf_counter() - start
    for stepper in steppers.values():  # warm-up: every size once
        for n in sizes:
            stepper.step(n)
    times = {path: {n: [] for n in sizes} for path in paths}
    retimed = 0
    for _, n in progress([(r, n) for r in range(repeats) for n in sizes], "forwards"):
        while True:
            if quiet is not None:
                wait_for_quiet(quiet)
            group = {path: steppers[path].step(n) for path in paths}
            if quiet is None or cpu_busy(0.1) < 2 * quiet:
                break
            retimed += 1
        for path, seconds in group.items():
            times[path][n].append(seconds)
    cost = {path: {n: statistics.median(times[path][n]) * 1e3 for n in sizes} for path in paths}
    base = sizes[0]
    result = {
        "model": name or getattr(model.config, "_name_or_path", "") or model.config.model_type,
        "architecture": model.config.model_type,
        "device": str(next(model.parameters()).device),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "prefix_tokens": prefix,
        "repeats": repeats,
        "paths": paths,
        "fast_path_unsupported": reason,
        "cpu_busy_before": busy,
        "quiet_limit": quiet,
        "groups_retimed": retimed,
        "setup_seconds": setup_s,  # CachedLM construction + prefill (the fast path's packing, once per model)
        "cost_ms": cost,
        "ratio_to_first_size": {path: {n: cost[path][n] / cost[path][base] for n in sizes} for path in paths},
        "breakdown_ms": {path: _breakdown(steppers[path], breakdown_steps, quiet)
                         for path in progress(paths, "breakdown")} if breakdown_steps else {},
    }
    if "plain" in paths and "fast" in paths:
        result["fast_speedup"] = {n: cost["plain"][n] / cost["fast"][n] for n in sizes}
    if "fast" in paths and breakdown_steps:  # the detail of a full profile, not of the bench's short one
        if quiet is not None:
            wait_for_quiet(quiet)
        result["gemm_floor"] = gemm_floor(model, (1, 9) if 9 in sizes else (1,), repeats)
    result["cpu_busy_after"] = cpu_busy()
    return result


def ar_speed(model, tokenizer, prompts: list[str], max_new_tokens: int = 64, paths: Iterable[str] = ("plain", "fast"),
             progress: Callable[[Iterable, str], Iterable] = lambda items, desc: items, chat: bool = True,
             quiet: float | None = None) -> dict:
    """Greedy autoregressive decoding of each prompt on each path (interleaved per prompt): tokens/s
    (the engine's own measure: decoding wall time including the prompt's prefill) and whether the
    paths wrote the same tokens."""
    from .api import encode_prompt, eos_ids
    from .engine import Engine, Settings

    paths = list(paths)
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    engines = {p: Engine(model, decode, None, eos_ids(model, tokenizer), fast_path=p == "fast") for p in paths}
    settings = Settings(max_new_tokens=max_new_tokens)
    for engine in engines.values():  # warm-up
        engine.run(encode_prompt(tokenizer, prompts[0], chat), Settings(max_new_tokens=4))
    rows = []
    for text in progress(prompts, "AR decoding"):
        ids = encode_prompt(tokenizer, text, chat)
        while True:
            if quiet is not None:
                wait_for_quiet(quiet)
            runs = {p: engines[p].run(ids, settings) for p in paths}
            if quiet is None or cpu_busy(0.1) < 2 * quiet:
                break
        rows.append({"prompt": text[:60], "prompt_tokens": len(ids),
                     "tokens": {p: r.metrics.tokens for p, r in runs.items()},
                     "seconds": {p: r.metrics.elapsed_s for p, r in runs.items()},
                     "identical": len({tuple(r.token_ids) for r in runs.values()}) == 1})
    total = {p: sum(r["tokens"][p] for r in rows) / sum(r["seconds"][p] for r in rows) for p in paths}
    return {"max_new_tokens": max_new_tokens, "prompts": rows, "tokens_per_s": total,
            "identical": sum(r["identical"] for r in rows)}


def profile_target(name: str, fast: bool = True, ar_prompts: int = 0, max_new_tokens: int = 64, repeats: int = REPEATS,
                   progress: Callable[[Iterable, str], Iterable] = lambda items, desc: items, load=None,
                   quiet: float | None = None, kernels: bool = False, compile: bool = False) -> dict:
    """`profile` of a named target (preset, directory or hub id); with ar_prompts, also `ar_speed` on the
    first ar_prompts prompts of the evaluation set; with kernels, also the GEMM routes compared
    (`gemm_routes.compare_routes`, torch.compile among them when compile)."""
    from . import models
    from .prompts import read_prompts

    model, tokenizer, preset = (load or models.load_cached)(name)
    paths = ("plain", "fast") if fast else ("plain",)
    result = profile(model, paths, repeats=repeats, progress=progress, name=name, quiet=quiet)
    if ar_prompts:
        prompts = [p["prompt"] for p in read_prompts()[:ar_prompts]]
        chat = preset.chat if preset else bool(getattr(tokenizer, "chat_template", None))
        result["ar"] = ar_speed(model, tokenizer, prompts, max_new_tokens, result["paths"], progress, chat, quiet)
    if kernels:
        from .fast import forget
        from .gemm_routes import compare_routes

        forget(model)  # the fast path's packed copies; the onednn route makes its own
        if quiet is not None:
            wait_for_quiet(quiet)
        result["gemm_routes"] = compare_routes(model, repeats=repeats, compile=compile, progress=progress)
    return result


def format_profile(r: dict) -> str:
    paths, sizes = r["paths"], list(next(iter(r["cost_ms"].values())))
    lines = [f"{r['model']} ({r['architecture']}, {r['dtype']}, {r['device']}, {r['threads']} threads): one forward of "
             f"n new tokens after {r['prefix_tokens']} cached tokens, median of {r['repeats']} interleaved runs"]
    if r["fast_path_unsupported"]:
        lines.append(f"fast path: not available ({r['fast_path_unsupported']})")
    head = f"{'new tokens':>10}" + "".join(f"{p + ' ms':>12}{'x 1 token':>10}" for p in paths)
    if "fast_speedup" in r:
        head += f"{'fast speedup':>14}"
    lines.append(head)
    for n in sizes:
        row = f"{n:>10}" + "".join(f"{r['cost_ms'][p][n]:>12.1f}{r['ratio_to_first_size'][p][n]:>9.2f}x" for p in paths)
        if "fast_speedup" in r:
            row += f"{r['fast_speedup'][n]:>13.2f}x"
        lines.append(row)
    lines.append("")
    lines.append("one-token step, where the time goes (ms per step, under torch.profiler):")
    kinds = list(next(iter(r["breakdown_ms"].values())))
    lines.append(f"{'':42}" + "".join(f"{p:>10}" for p in paths))
    for kind in kinds:
        lines.append(f"{kind:42}" + "".join(f"{r['breakdown_ms'][p][kind]:>10.2f}" for p in paths))
    if "gemm_floor" in r:
        g = r["gemm_floor"]
        lines.append("")
        lines.append(f"the fast path's matrix products alone ({g['weights_mb']:.0f} MB of weights, "
                     f"{'packed for several rows' if g['packed'] else 'not packed'}): "
                     + ", ".join(f"{m} row{'s' if m > 1 else ''} {ms:.1f} ms" for m, ms in g["ms"].items())
                     + (f"; one row streams {g['gb_per_s_at_one_row']:.1f} GB/s" if g["gb_per_s_at_one_row"] else ""))
    if "ar" in r:
        ar = r["ar"]
        lines.append("")
        lines.append(f"greedy autoregressive decoding, {len(ar['prompts'])} prompts x {ar['max_new_tokens']} new tokens "
                     f"(tokens/s incl. prefill; same tokens on every path: {ar['identical']}/{len(ar['prompts'])}):")
        lines.append("  " + "   ".join(f"{p} {v:.1f} tok/s" for p, v in ar["tokens_per_s"].items()))
    if "gemm_routes" in r:
        from .gemm_routes import format_routes

        lines += ["", format_routes(r["gemm_routes"])]
    busy = max(r["cpu_busy_before"], r["cpu_busy_after"])
    if r.get("quiet_limit") is not None:
        lines.append(f"timed only while other jobs kept the CPU under {r['quiet_limit']:.0%} busy "
                     f"({r['groups_retimed']} groups timed again)")
    elif busy > 0.1:
        lines.append(f"note: other processes kept the CPU {busy:.0%} busy around this run; times are noisy, "
                     "ratios less so")
    return "\n".join(lines)
