"""The HTTP API of `python app.py`, as a public Space serves it: odd prompts and out-of-range knobs sent
through gradio_client get the app's (or gradio's) one-line message or a correct run, never a raw
exception's text; and the queue tells a waiting client its place and wait, and refuses a full queue in one
line (what the page shows: specviz/ui/launch.py, queue_kwargs).

One server per module: `python app.py` on 127.0.0.1 (a free port) with a queue of 2 and the heavy presets
off (as on a CPU Space: a fuzzed name never loads a 1.5B model), stopped at the end.
tests/test_fuzz_inputs.py fuzzes the same inputs through the Python API, without HTTP.
"""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from specviz import models  # noqa: E402
from specviz.limits import APP  # noqa: E402

TARGET = "smollm2-135m"
ROOT = Path(__file__).resolve().parents[1]
QUEUE = 2  # requests waiting for a decoding place
ACTIVE = 2  # runs decoding at once, taking turns (scheduler.py)
RAW = ("Traceback", "unhashable", "TextEncodeInput", "RecursionError", "object has no attribute", "NoneType",
       "not subscriptable", "unsupported operand", "Exception", "Error(")
NAMES = ("status", "tokens", "text", "step", "tree", "explain", "entropy", "metrics", "metrics_plot", "drafter",
         "download")

pytestmark = [
    pytest.mark.skipif(models.status(TARGET) != "ready",
                       reason=f"{TARGET} is not installed (python -m specviz fetch {TARGET})"),
    pytest.mark.filterwarnings("ignore:::gradio.queueing"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python app.py` as users start it; yields its URL; stopped at the end of the module."""
    port = free_port()
    env = {**os.environ, "SPECVIZ_HOST": "127.0.0.1", "SPECVIZ_PORT": str(port), "SPECVIZ_QUEUE_SIZE": str(QUEUE),
           "SPECVIZ_ACTIVE_RUNS": str(ACTIVE), "GRADIO_ANALYTICS_ENABLED": "False", "SPECVIZ_HEAVY_PRESETS": "0"}  # as on a CPU Space
    env.pop("SPACE_ID", None)
    log = tmp_path_factory.mktemp("app") / "app.log"
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 600  # a busy shared machine starts it slowly
        while True:
            try:
                Client(url, verbose=False).predict(api_name="/health")
                break
            except Exception:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("app.py did not come up: " + log.read_text()[-2000:]) from None
                time.sleep(0.5)
        Client(url, verbose=False).predict(*run_args("Hi.", max_new_tokens=4), api_name="/run")  # model + ETA data
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def client(server):
    return Client(server, verbose=False)


def run_args(prompt, target=TARGET, drafter="pld", strategy="chain", draft_len=4, temperature=0.0, top_p=1.0, seed=0,
             max_new_tokens=4, rule="auto"):
    return (prompt, target, drafter, strategy, draft_len, temperature, top_p, seed, max_new_tokens, rule, False)


def clear(message: str) -> None:
    """The app's (or gradio's) message: one non-empty line, no exception internals."""
    text = message.strip()
    assert text and "\n" not in text, repr(message[:500])
    assert not any(r in text for r in RAW), repr(message[:500])


def attempt(client, **kw) -> str:
    """Send one /run; 'refused' with a clear message, or 'ran' with the views of a finished run."""
    try:
        out = dict(zip(NAMES, client.predict(*run_args(**kw), api_name="/run")))
    except AppError as err:
        clear(str(err))
        return "refused"
    assert isinstance(out["text"], str) and isinstance(out["status"], str), out
    assert "done" in out["status"] and not any(r in out["status"] for r in RAW), out["status"][:500]
    return "ran"


# ---------------------------------------------------------------- the queue


def test_a_waiting_client_sees_its_place_and_a_full_queue_is_refused_in_one_line(server):
    import httpx
    from gradio_client.utils import QueueError

    busy, waiting = [Client(server, verbose=False) for _ in range(ACTIVE)], [Client(server, verbose=False)
                                                                             for _ in range(QUEUE)]
    longs = [c.submit(*run_args("Write the numbers from 1 to 500 separated by commas.", drafter="none",
                                max_new_tokens=512), api_name="/run") for c in busy]

    def shows_text(job) -> bool:
        return any(str(dict(zip(NAMES, out)).get("text") or "").strip() for out in job.outputs())

    deadline = time.time() + 120
    seen, ended = [None] * ACTIVE, [None] * ACTIVE
    while not all(seen) and time.time() < deadline:  # both decoding places taken
        for i, j in enumerate(longs):
            seen[i] = seen[i] or (time.time() if shows_text(j) else None)
            ended[i] = ended[i] or (time.time() if j.done() else None)
        time.sleep(0.05)
    # they take turns: each streamed text before the other ended (not one after the other)
    assert all(seen) and all(ended[1 - i] is None or seen[i] < ended[1 - i] for i in range(ACTIVE)), (seen, ended)
    assert not all(ended), "both ended before the waiting requests were sent"
    jobs = []
    for c in waiting:  # one after the other, so their places are known
        jobs.append(c.submit(*run_args("Hi.", max_new_tokens=2), api_name="/run"))
        while jobs[-1].status().code.name != "IN_QUEUE" and time.time() < deadline:
            time.sleep(0.1)
    try:
        status = [j.status() for j in jobs]
        assert [s.code.name for s in status] == ["IN_QUEUE"] * QUEUE, status
        assert [s.rank for s in status] == list(range(QUEUE)), status  # requests ahead of each in the queue
        assert all(s.eta is not None and s.eta > 0 for s in status), status  # seconds, from past runs
        # full: refused at once, in one line, whichever way the request comes
        with pytest.raises(QueueError, match="Queue is full"):
            Client(server, verbose=False).predict(*run_args("Hi.", max_new_tokens=2), api_name="/run")
        raw = httpx.post(server + "gradio_api/queue/join", timeout=30, json=dict(  # the fullness is checked first
            data=list(run_args("Hi.", max_new_tokens=2)), fn_index=0, session_hash="full", event_data=None,
            trigger_id=None))
        assert raw.status_code == 503, raw.text
        assert raw.json()["detail"] == f"Queue is full. Max size is {QUEUE} and size is {QUEUE}.", raw.text
    finally:
        for c, j in zip(busy, longs):
            j.cancel()
            c.predict(api_name="/stop")
    for j in jobs:  # the waiting requests then run as usual
        assert "done" in dict(zip(NAMES, j.result(timeout=120)))["status"]
    assert Client(server, verbose=False).predict(api_name="/health").startswith("ok")


# ---------------------------------------------------------------- odd prompts and knobs, over HTTP

CONTROL = "".join(map(chr, range(0, 32))) + "\x7f\x85\u2028\u2029"
MIXED = "abc日本語ع١😀ж∑ξ\u200d\u200f\u0301ﬁ"
prompts = st.one_of(
    st.sampled_from(["", " ", "\t\n\r \x0b\x0c", "\x00", "\x00" * 50, "\x1b[31mred\x1b[0m", "\ufeff", "\u200b" * 8,
                     "x" * APP.max_prompt_chars, "x" * (APP.max_prompt_chars + 1),
                     (MIXED * 2000)[:APP.max_prompt_chars]]),
    st.text(alphabet=CONTROL, max_size=20),
    st.text(alphabet=MIXED + CONTROL + " ", min_size=1, max_size=40),
    st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40),  # no lone surrogates: not JSON
)
# knobs: inside the page's ranges (kept cheap: few tokens), at and beyond the bounds, and odd values (NaN and
# infinities are not JSON: gradio_client refuses to send them; tests/test_fuzz_inputs.py covers them)
draft_lens = st.one_of(st.sampled_from([1, 4, APP.max_draft_len]), st.sampled_from(
    [0, -1, APP.max_draft_len + 1, 10**9, 2.5, 1e308, -0.0, None, "4", "abc"]))
temperatures = st.one_of(st.sampled_from([0.0, 0.7, APP.max_temperature]), st.sampled_from(
    [-0.1, APP.max_temperature + 0.01, 1e308, -1e308, 5e-324, None, "hot"]))
top_ps = st.sampled_from([1.0, 0.5, 0.05, 0.0, -1.0, 1.5, 1e-300, None])
seeds = st.sampled_from([0, 7, APP.max_seed, -3, APP.max_seed + 1, 2**70, 1.5, None, "seed"])
max_tokens = st.one_of(st.sampled_from([1, 3]), st.sampled_from(
    [0, -5, APP.max_new_tokens + 1, 10**12, 1e308, 3.5, None, "many"]))
names = st.one_of(st.sampled_from(["", " ", "nope", "../../etc/passwd", TARGET + " ", "qwen2.5-coder-1.5b",
                                   "http://example.com/x"]), st.text(max_size=12, alphabet=MIXED + "ab-./"))
drafters = st.one_of(st.sampled_from(["pld", "none", "ngram-tree", "pld-tree"]), names)
strategies = st.one_of(st.sampled_from(["chain", "beam"]), names)
rules = st.one_of(st.sampled_from(["auto", "greedy", "sampling", "typical-lossy"]), names)


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(prompt=prompts, draft_len=draft_lens, temperature=temperatures, top_p=top_ps, seed=seeds,
       max_new_tokens=max_tokens, drafter=drafters, strategy=strategies, rule=rules,
       target=st.one_of(st.just(TARGET), st.just(TARGET), names))
def test_odd_prompts_and_knobs_over_http_get_a_clear_message_or_a_run(client, prompt, draft_len, temperature, top_p,
                                                                        seed, max_new_tokens, drafter, strategy, rule,
                                                                        target):
    attempt(client, prompt=prompt, target=target, drafter=drafter, strategy=strategy, draft_len=draft_len,
            temperature=temperature, top_p=top_p, seed=seed, max_new_tokens=max_new_tokens, rule=rule)


@pytest.mark.parametrize("prompt", ["Hi.", "\x00 hi \x1b", MIXED, "x" * APP.max_prompt_chars])
def test_odd_prompts_that_the_app_accepts_run_to_the_end(client, prompt):
    """Control characters, mixed scripts and a prompt of the full length are ordinary prompts."""
    assert attempt(client, prompt=prompt, max_new_tokens=2) == "ran"


def test_the_server_keeps_serving_after_the_fuzzing(client):
    assert client.predict(api_name="/health").startswith("ok")
    assert attempt(client, prompt="List three prime numbers.", max_new_tokens=3) == "ran"
