"""Launching the page: where it listens, gradio's launch() arguments, the environment of a Hugging
Face Space, the GPU decorator of a ZeroGPU Space, the page's default configuration, and a warm-up that
loads it."""
from __future__ import annotations

import os
import threading

from .. import memory, models, trace
from ..config import RunConfig
from ..examples import ASSETS
from ..limits import budgets
from .texts import CSS

try:  # on a Hugging Face ZeroGPU Space, decoding functions borrow a GPU; elsewhere a no-op
    import spaces

    gpu = spaces.GPU
except ImportError:
    def gpu(fn):
        return fn


def server_address() -> tuple[str, int]:
    """127.0.0.1:7860 by default; SPECVIZ_HOST/PORT or GRADIO_SERVER_NAME/PORT override; a Space binds 0.0.0.0."""
    if os.environ.get("SPACE_ID"):
        host = "0.0.0.0"
    else:
        host = os.environ.get("SPECVIZ_HOST") or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    port = int(os.environ.get("SPECVIZ_PORT") or os.environ.get("GRADIO_SERVER_PORT") or 7860)
    return host, port


def launch_kwargs() -> dict:
    host, port = server_address()
    # a worker thread per streaming visitor (each waits on the decoding thread), and room for the rest
    return dict(server_name=host, server_port=port, css=CSS, max_file_size=trace.MAX_BYTES, show_error=True,
                allowed_paths=[str(ASSETS)], max_threads=2 * budgets().active_runs + 16)  # the example traces are offered for download as they are


def prepare_environment() -> None:
    """On a Hugging Face Space presets load from their hub ids; analytics stay off everywhere."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    if os.environ.get("SPACE_ID"):
        os.environ.setdefault("SPECVIZ_FROM_HUB", "1")


def app_default(target: str = RunConfig().target) -> RunConfig:
    """The page's starting configuration: `auto` where a trained drafter policy ships for the target (on
    the held-out prompts it ran 1.76x AR, prompt lookup 1.37x: docs/benchmarks.md), else prompt lookup."""
    from ..choice.arms import policy_path

    return RunConfig(target, "auto") if policy_path(target).exists() else RunConfig(target)


def warm_up(target: str = RunConfig().target) -> threading.Thread | None:
    """In the background: load the default target and drafter, and measure what verifying n positions
    costs here (priced trees read it; ~10 s on 2 cores, cached) while the machine is still quiet, so
    the first Run starts at once and no visitor's run measures it under load."""
    if os.environ.get("SPECVIZ_FROM_HUB") != "1" and models.status(target) != "ready":
        return None
    thread = threading.Thread(target=lambda: _quiet(_warm, target), daemon=True, name="specviz-warm-up")
    thread.start()
    return thread


def _warm(target: str) -> None:
    from .. import verify_cost
    from ..api import build

    engine = build(app_default(target)).engine  # loads the target and the drafter's weights
    if hasattr(engine.drafter, "price"):
        verify_cost.seconds_by_positions(engine.target)


def _quiet(fn, *args):
    try:
        fn(*args)
    except Exception:  # a failed warm-up only means the first run loads the model itself
        pass


# ---------------------------------------------------------------- budgets, memory, health


def queue_kwargs() -> dict:
    """demo.queue() arguments: decoding requests up to `decode_slots()` at once (taking turns on one
    decoding thread, scheduler.py), at most `queue_size` more waiting.

    What a visitor sees (gradio 6.31's own queue, checked against `python app.py`; tests/test_http_api.py):
    - waiting behind other runs: every output of the request shows `queue: k/n | t/ETA s` in its corner
      (place k among n waiting, seconds waited / expected wait from past run times); API clients get the
      same in `job.status()` (`rank` = requests ahead in the queue, 0 = next; `queue_size`; `eta` seconds);
    - queue full (`queue_size` waiting): refused at once, one line. The page shows a toast "This application
      is currently busy. Please try again."; gradio_client raises QueueError("Queue is full! Please try
      again."); plain HTTP (POST /gradio_api/queue/join) gets 503 {"detail": "Queue is full. Max size is N and
      size is N."}. Nothing is queued, so the visitor simply tries again later.
    The landing view (a recorded example) is served outside the queue, so a full queue never blanks the page."""
    return dict(default_concurrency_limit=1, max_size=budgets().queue_size)


def rss_bytes() -> int:
    """This process's resident memory (Linux /proc; 0 where unknown)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def health() -> str:
    """One status line for the deployment: memory, loaded models, live runs, budgets (the /health API)."""
    from .session import live_runs

    b = budgets()
    loaded = ", ".join(models.loaded()) or "none"
    from .streaming import decoder, scheduling

    live, stepping = live_runs()
    turns = decoder().load() if scheduling() else None
    taking = ""
    if turns:
        timed = (f"; calls between turns waited p50 {turns['call_p50_s']} s, p95 {turns['call_p95_s']} s"
                 f"; first turn p50 {turns['first_turn_p50_s']} s, p95 {turns['first_turn_p95_s']} s; first step "
                 f"done p50 {turns['first_step_p50_s']} s, p95 {turns['first_step_p95_s']} s after it; sent by the "
                 f"handler p50 {turns['pickup_p50_s']} s, p95 {turns['pickup_p95_s']} s later; rounds took p50 "
                 f"{turns['round_p50_s']} s, p95 {turns['round_p95_s']} s"
                 if turns["pickup_p50_s"] is not None else "")  # once a run's first tokens went out
        taking = f" ({turns['active']} taking turns, {turns['waiting']} waiting, {turns['max_active']} at most{timed})"
    from ..lm import live_caches

    heap = memory.describe()
    caches, kv_bytes = live_caches()
    return (f"ok · RSS {rss_bytes() / 2**20:.0f} MB{f' ({heap})' if heap else ''} · models loaded: {loaded} "
            f"({models.loaded_bytes() / 2**30:.2f} of {b.model_memory_gb:g} GB budget) · "
            f"decoding {live}{taking}, step-by-step runs holding an engine {stepping}, "
            f"KV caches alive {caches} ({kv_bytes / 2**20:.0f} MB) · "
            f"budgets: {b.run_seconds:g} s per run, queue {b.queue_size}, {b.tree_nodes} draft nodes per step, "
            f"step-by-step idle release {b.step_idle_s:g} s, heavy presets {'on' if b.heavy_presets else 'off'}")


def start_housekeeping() -> None:
    """The model cache's memory budget and the idle step-by-step reaper, for a launched app."""
    from .session import start_reaper

    models.set_memory_budget(int(budgets().model_memory_gb * 2**30), keep=(RunConfig().target,))
    start_reaper()
