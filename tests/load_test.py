"""Load test: start `python app.py` on 127.0.0.1 and drive concurrent gradio_client sessions.

    .venv/bin/python tests/load_test.py                 # 8 sessions (what CI runs, via tests/test_load.py)
    .venv/bin/python tests/load_test.py --sessions 30 --seconds 600   # the classroom case
    .venv/bin/python tests/load_test.py --heavy          # + the heaviest request the app accepts (Qwen 1.5B)

Each session, until the time is up: a run with the default target (its text must equal the engine's own
output for that request), a run cancelled midway, a step-by-step run abandoned midway; one session also
imports a trace at every trace limit (tests/test_trace.py's maximal_trace, ~16 MB: the upload size limit)
`--imports` times, each of which must be shown; another request is long and the per-run time limit
(SPECVIZ_RUN_SECONDS) must end it. With --heavy (both Qwen presets installed and heavy presets allowed), the
heaviest request as well: Qwen2.5-Coder 1.5B verifying a 0.5B beam of draft length 32, 512 new tokens, which
the time limit must end too. Reports completed runs, errors (must be 0), mismatched texts (must be 0),
p50/p95 of time to first update, p50/max of a trace import (upload to views shown), the limited requests'
stop reasons, and RSS before/after (must return within RSS_BOUND_MB of the start after the sessions end,
step-by-step engines released by SPECVIZ_STEP_IDLE_S). Asserts correctness and bounds, never speed
(absolute times depend on the machine's load).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

TARGET = "smollm2-135m"
PROMPTS = ["Summarize in one sentence: The quick brown fox jumps over the lazy dog.",
           "Write a haiku about the sea.", "List three prime numbers.", "def fibonacci(n):"]
NAMES = ("status", "tokens", "text", "step", "tree", "explain", "entropy", "metrics", "metrics_plot", "drafter",
         "download")
LONG_PROMPT = "Write the numbers from 1 to 500 separated by commas."
RSS_BOUND_MB = 400  # after the sessions end, RSS stays within this of the RSS after warm-up
RUN_SECONDS = 15  # the deployment's per-run limit for this test
N_TOKENS = 16
IMPORTS = 3  # trace imports at the size limit, by session 0
HEAVY = dict(target="qwen2.5-coder-1.5b", drafter="qwen2.5-coder-0.5b", strategy="beam", draft_len=32)
HEAVY_SLACK_S = 90  # the time limit is checked between forwards: one beam-32 step may run past it


DRAFTER = {"name": None}  # the page's default drafter unless --drafter names one


def drafter() -> str:
    if DRAFTER["name"] is None:
        from specviz.ui.launch import app_default

        DRAFTER["name"] = app_default(TARGET).drafter
    return DRAFTER["name"]


def args(prompt, max_new_tokens=N_TOKENS, seed=0):
    return (prompt, TARGET, drafter(), "chain", 4, 0.0, 1.0, seed, max_new_tokens, "auto")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def heavy_args(max_new_tokens=512):
    return (LONG_PROMPT, HEAVY["target"], HEAVY["drafter"], HEAVY["strategy"], HEAVY["draft_len"], 0.0, 1.0, 0,
            max_new_tokens, "auto", False)


def heavy_available() -> str:
    """'' when the heavy request's models are installed here, else why not (whether the app offers them,
    SPECVIZ_HEAVY_PRESETS, is read from its /health once it runs)."""
    from specviz import models

    missing = [p for p in (HEAVY["target"], HEAVY["drafter"]) if models.status(p) != "ready"]
    return f"not installed: {', '.join(missing)} (python -m specviz fetch NAME)" if missing else ""


def limit_trace(directory: str) -> str:
    """A trace at every trace limit at once (tests/test_trace.py), as a file to upload."""
    from test_trace import maximal_trace

    path = Path(directory) / "at-every-limit.json"
    path.write_text(maximal_trace())
    return str(path)


def expected_texts() -> dict:
    from specviz.api import build_engine
    from specviz.engine import Settings

    engine = build_engine(TARGET, drafter(), 4)
    return {p: engine.generate(p, Settings(max_new_tokens=N_TOKENS)).text for p in PROMPTS}


def main(sessions: int = 8, seconds: float = 60.0, python: str = sys.executable, imports: int = IMPORTS,
         heavy: bool = False, scheduler: bool = True) -> dict:
    import tempfile

    from gradio_client import Client, handle_file

    if heavy and (why := heavy_available()):
        raise RuntimeError(f"--heavy: {why}")
    tmp = tempfile.TemporaryDirectory(prefix="specviz-load-")
    big = limit_trace(tmp.name) if imports else None

    port = free_port()
    env = {**os.environ, "SPECVIZ_HOST": "127.0.0.1", "SPECVIZ_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False",
           "SPECVIZ_RUN_SECONDS": str(RUN_SECONDS), "SPECVIZ_STEP_IDLE_S": "5", "SPECVIZ_QUEUE_SIZE": "64",
           "SPECVIZ_SCHEDULER": "1" if scheduler else "0"}
    env.pop("SPACE_ID", None)
    server = subprocess.Popen([python, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    stats = dict(completed=0, cancelled=0, abandoned=0, errors=0, mismatches=0, first=[], token=[], run=[], cancel=[],
                 error_text=[], imports=[])
    rss_log: list[tuple[float, float]] = []  # (seconds since the sessions began, RSS MB)
    lock = threading.Lock()
    try:
        deadline = time.time() + 600  # a busy shared machine starts it slowly
        while True:
            try:
                Client(f"http://127.0.0.1:{port}/", verbose=False).predict(api_name="/health")
                break
            except Exception:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("the app did not start: " + (server.stderr.read()[-2000:] if server.poll()
                                                                      is not None else "timeout"))
                time.sleep(1)
        expected = expected_texts()
        url = f"http://127.0.0.1:{port}/"
        warm = Client(url, verbose=False)
        if heavy and "heavy presets on" not in warm.predict(api_name="/health"):
            raise RuntimeError("--heavy: the app does not offer the heavy presets (SPECVIZ_HEAVY_PRESETS=1)")
        warm.predict(*args(PROMPTS[0]), False, api_name="/run")  # loads the default target
        if heavy:  # loads both Qwen models before RSS is taken (they stay, within the memory budget)
            warm.predict(*heavy_args(max_new_tokens=1), api_name="/run")
        rss_start = rss_mb(server.pid)
        health_start = warm.predict(api_name="/health")

        def import_trace(client):
            t0 = time.perf_counter()
            out = dict(zip(NAMES, client.predict(handle_file(big), api_name="/import_trace")))
            took = time.perf_counter() - t0
            if "Imported trace" not in out["status"]:
                raise AssertionError(f"import not shown: {out['status'][:200]}")
            with lock:
                stats["imports"].append(took)

        def session(k: int):
            client = Client(url, verbose=False)
            end = time.time() + seconds
            i = 0
            while time.time() < end:
                if k == 0 and len(stats["imports"]) < imports:  # session 0: an import before each request
                    try:
                        import_trace(client)
                    except Exception as err:  # noqa: BLE001 - counted and reported
                        with lock:
                            stats["errors"] += 1
                            stats["error_text"].append(f"import {type(err).__name__}: {str(err)[:200]}")
                kind = i % 3
                what = ("run", "cancelled run", "step-by-step")[kind]
                prompt = PROMPTS[(k + i) % len(PROMPTS)]
                i += 1
                try:
                    if kind == 0:  # a full run: its text must be the engine's
                        t0 = time.perf_counter()
                        job = client.submit(*args(prompt), False, api_name="/run")
                        first = token = None
                        for update in job:
                            now = time.perf_counter() - t0
                            first = now if first is None else first
                            text = str(update[NAMES.index("text")] or "") if update else ""
                            if token is None and text.strip() and expected[prompt].startswith(text):
                                token = now  # the first update that shows this run's text (not the last view's)
                        out = dict(zip(NAMES, job.result()))
                        took = time.perf_counter() - t0
                        with lock:
                            stats["completed"] += 1
                            stats["first"].append(first or 0.0)
                            stats["token"].append(token if token is not None else took)
                            stats["run"].append(took)
                            if out["text"] != expected[prompt]:
                                stats["mismatches"] += 1
                                stats["error_text"].append(f"mismatch on {prompt[:30]!r}: {str(out['text'])[:80]!r} "
                                                           f"vs {expected[prompt][:80]!r}; {str(out['status'])[:200]}")
                    elif kind == 1:  # cancelled midway
                        job = client.submit(*args(prompt, max_new_tokens=200), False, api_name="/run")
                        t = time.time()
                        while len(job.outputs()) < 3 and time.time() - t < 60 and not job.done():
                            time.sleep(0.05)
                        t = time.time()
                        job.cancel()  # gradio_client's POST /cancel: it waits for the run's handler to yield
                        took_cancel = time.time() - t
                        client.predict(api_name="/stop")
                        with lock:
                            stats["cancelled"] += 1
                            stats["cancel"].append(took_cancel)
                    else:  # step-by-step, abandoned midway
                        client.predict(*args(prompt, max_new_tokens=64), api_name="/step_start")
                        client.predict(0, api_name="/step_next")
                        with lock:
                            stats["abandoned"] += 1
                except Exception as err:  # noqa: BLE001 - counted and reported
                    with lock:
                        stats["errors"] += 1
                        where = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
                        at = f" (raised in {Path(where.filename).name}:{where.lineno} {where.name})" if where else ""
                        stats["error_text"].append(f"{what}: {type(err).__name__}: {str(err)[:200]}{at}")

        limited = {}

        def long_request():
            client = Client(url, verbose=False)
            # greedy SmolLM2 counts on to the 512-token cap (no early EOS): >= 17 s of decoding even alone
            out = dict(zip(NAMES, client.predict(LONG_PROMPT, TARGET, "none", "chain", 4, 0.0, 1.0, 0, 512, "auto",
                                                 False, api_name="/run")))
            limited["status"] = out["status"]

        def heaviest():
            client = Client(url, verbose=False)
            job = client.submit(*heavy_args(), api_name="/run")
            started = None
            try:
                for _ in job:
                    if started is None:
                        started = time.perf_counter()  # dequeued: its first update ("preparing")
                limited["heavy_status"] = dict(zip(NAMES, job.result()))["status"]
            except Exception as err:  # noqa: BLE001 - reported; check() fails on it
                limited["heavy_status"] = f"{type(err).__name__}: {str(err)[:300]}"
            limited["heavy_run_s"] = round(time.perf_counter() - (started or time.perf_counter()), 1)

        threads = [threading.Thread(target=session, args=(k,)) for k in range(sessions)]
        threads.append(threading.Thread(target=long_request))
        if heavy:
            threads.append(threading.Thread(target=heaviest))
        t0 = time.time()
        sampling = threading.Event()

        def sample_rss():
            while not sampling.wait(5.0):
                rss_log.append((round(time.time() - t0), round(rss_mb(server.pid))))

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        cpu0 = (cpu_s(server.pid), cpu_s(os.getpid()))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.time() - t0
        cpu = (cpu_s(server.pid) - cpu0[0], cpu_s(os.getpid()) - cpu0[1])  # the app's, and this process's (clients)
        sampling.set()
        time.sleep(12)  # idle step-by-step runs are released (SPECVIZ_STEP_IDLE_S=5, reaper every ~1.25 s)
        health = warm.predict(api_name="/health")
        rss_end = rss_mb(server.pid)
    finally:
        tmp.cleanup()
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    report = dict(sessions=sessions, seconds=seconds, drafter=drafter(), wall_s=round(wall, 1),
                  completed=stats["completed"],
                  cancelled=stats["cancelled"], abandoned=stats["abandoned"], errors=stats["errors"],
                  mismatches=stats["mismatches"], cancel_p50_s=round(pct(stats["cancel"], .5), 2),
                  cancel_p95_s=round(pct(stats["cancel"], .95), 2), cancel_max_s=round(max(stats["cancel"], default=0), 2),
                  first_update_p50_s=round(pct(stats["first"], .5), 2),
                  first_update_p95_s=round(pct(stats["first"], .95), 2),
                  first_token_p50_s=round(pct(stats["token"], .5), 2),
                  first_token_p95_s=round(pct(stats["token"], .95), 2),
                  run_p50_s=round(pct(stats["run"], .5), 2),
                  # full runs' tokens only (cancelled and step-by-step runs decode more, uncounted)
                  tokens_per_s_total=round(stats["completed"] * N_TOKENS / wall, 1),
                  scheduler=scheduler,
                  imports_asked=imports, imports=len(stats["imports"]),
                  import_p50_s=round(pct(stats["imports"], .5), 2),
                  import_max_s=round(max(stats["imports"], default=float("nan")), 2),
                  limited_status=limited.get("status", ""), rss_start_mb=round(rss_start), rss_end_mb=round(rss_end),
                  rss_2min_mb=next((mb for s, mb in rss_log if s >= 120), None),
                  rss_max_mb=max((mb for _, mb in rss_log), default=None), rss_log=rss_log,
                  rss_bound_mb=RSS_BOUND_MB, health_start=health_start, health=health, error_text=stats["error_text"][:10],
                  uptime=os.popen("uptime").read().strip(),
                  # where the two cores went while the sessions ran: the app, and the clients in this process
                  app_cpu_s=round(cpu[0], 1), clients_cpu_s=round(cpu[1], 1),
                  clients_cpu_share=round(cpu[1] / max(1e-9, cpu[0] + cpu[1]), 2))
    for name, label in (("call", "calls between turns waited"), ("first_turn", "first turn"), ("first_step", "first step done"),
                        ("pickup", "sent by the handler"), ("round", "rounds took")):  # the app's own view of a first token's wait
        found = re.search(label + r" p50 ([\d.]+|None) s, p95 ([\d.]+|None) s", health or "")
        if found:
            report.update({f"{name}_p50_s": found[1], f"{name}_p95_s": found[2]})
    if heavy:
        report.update(heavy_status=limited.get("heavy_status", ""), heavy_run_s=limited.get("heavy_run_s"))
    return report


def check(report: dict) -> None:
    assert report["errors"] == 0, report["error_text"]
    assert report["mismatches"] == 0, report["error_text"]
    assert report["completed"] > 0
    assert "time limit" in report["limited_status"], report["limited_status"]
    assert report["imports"] > 0 or not report["imports_asked"], "no trace was imported"
    if "heavy_status" in report:
        assert "time limit" in report["heavy_status"], report["heavy_status"]
        assert report["heavy_run_s"] <= RUN_SECONDS + HEAVY_SLACK_S, report
    assert report["rss_end_mb"] - report["rss_start_mb"] <= RSS_BOUND_MB, report


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--imports", type=int, default=IMPORTS, help="trace imports at the size limit (session 0)")
    ap.add_argument("--no-scheduler", action="store_true",
                    help="one run at a time, each in its own thread (SPECVIZ_SCHEDULER=0): the before")
    ap.add_argument("--json", help="write the report here too")
    ap.add_argument("--drafter", help="the drafter every run uses (default: the page's default)")
    ap.add_argument("--heavy", action="store_true",
                    help="also send the heaviest request (Qwen 1.5B + 0.5B beam, draft length 32, 512 tokens)")
    a = ap.parse_args()
    DRAFTER["name"] = a.drafter
    if a.heavy and (why := heavy_available()):
        ap.error(f"--heavy: {why}")
    rep = main(a.sessions, a.seconds, imports=a.imports, heavy=a.heavy, scheduler=not a.no_scheduler)
    for key, value in rep.items():
        if key != "rss_log":
            print(f"{key}: {value}")
    if a.json:
        from specviz.atomic import atomic_write_text

        atomic_write_text(a.json, json.dumps(rep, indent=1))
    check(rep)
    print("OK")
