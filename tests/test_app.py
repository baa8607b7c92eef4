"""Drive the running app through gradio_client: streaming, Stop, trace export/import, bad input.

The app is launched in-process on 127.0.0.1 (a free port) and closed at the end; the model is the
real smollm2-135m preset (`python -m specviz fetch smollm2-135m`).
"""
import json
import os
import socket
import threading
import time

import pytest

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from specviz import models  # noqa: E402
from specviz.api import build_engine  # noqa: E402
from specviz.engine import Settings  # noqa: E402

TARGET = "smollm2-135m"
PROMPT = ("Summarize in one sentence: The quick brown fox jumps over the lazy dog. The dog was not amused, "
          "and the fox ran back into the forest.")
N = 24
# outputs of /run, /step_*, /import_trace, /example_trace, in order
NAMES = ("status", "tokens", "text", "step", "tree", "explain", "entropy", "metrics", "metrics_plot", "drafter",
         "download")

pytestmark = [
    pytest.mark.skipif(models.status(TARGET) != "ready",
                       reason=f"{TARGET} is not installed (python -m specviz fetch {TARGET})"),
    pytest.mark.filterwarnings("ignore:::gradio.queueing"),  # pandas deprecations inside gradio
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app():
    from specviz.ui import build_demo, launch_kwargs

    demo = build_demo()
    port = free_port()
    kwargs = {**launch_kwargs(), "server_name": "127.0.0.1", "server_port": port, "prevent_thread_lock": True,
              "quiet": True}
    demo.queue().launch(**kwargs)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture
def client(app):
    return Client(app, verbose=False)


def args(prompt=PROMPT, drafter="pld", temperature=0.0, max_new_tokens=N, draft_len=4, top_p=1.0, seed=0):
    return (prompt, TARGET, drafter, "chain", draft_len, temperature, top_p, seed, max_new_tokens, "auto")


def named(outputs) -> dict:
    return dict(zip(NAMES, outputs))


@pytest.fixture(scope="module")
def engine_text():
    return build_engine(TARGET, "pld", 4).generate(PROMPT, Settings(max_new_tokens=N)).text


def test_api_names(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name in ("/run", "/race", "/step_start", "/step_next", "/step_prev", "/show_step", "/import_trace",
                 "/example_trace", "/stop"):
        assert name in endpoints


def test_run_streams_and_ends_with_the_engines_text(client, engine_text):
    job = client.submit(*args(), False, api_name="/run")
    updates = [named(out) for out in job]
    final = named(job.result())
    assert len(updates) >= 3, "the run should stream intermediate updates"
    assert any("▶ running" in u["status"] for u in updates)
    assert final["text"] == engine_text
    assert "✔ done" in final["status"]
    assert 'class="tok tok-' in final["tokens"]
    assert final["tree"]["type"] == "plotly" and final["entropy"]["type"] == "plotly"
    assert "τ: tokens per target forward" in final["metrics"]
    assert final["download"]["value"].endswith(".trace.json")


def test_an_ngram_tree_run_draws_trees_and_equals_the_engine(client):
    job = client.submit(*args(drafter="ngram-tree", draft_len=8), False, api_name="/run")
    final = named(job.result())
    assert final["text"] == build_engine(TARGET, "ngram-tree", 8).generate(PROMPT, Settings(max_new_tokens=N)).text
    assert "ngram-tree" in final["status"] and final["tree"]["type"] == "plotly"


def test_stop_cancels_mid_stream_and_the_next_run_is_correct(client, engine_text):
    job = client.submit(*args(prompt="Write a long story about a lighthouse keeper.", max_new_tokens=400), False,
                        api_name="/run")
    seen = 0
    deadline = time.time() + 120
    while seen < 3 and time.time() < deadline:  # wait for a few streamed updates, then stop
        seen = len(job.outputs())
        time.sleep(0.05)
    assert seen >= 3
    job.cancel()
    time.sleep(1.0)
    assert not job.status().success
    stopped_at = len(job.outputs())
    time.sleep(1.0)
    assert len(job.outputs()) == stopped_at, "a cancelled run must stop streaming"
    last = named(job.outputs()[-1])
    assert "✔ done" not in last["status"]
    deadline = time.time() + 10
    while any(t.name == "specviz-engine" for t in threading.enumerate()) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(t.name == "specviz-engine" for t in threading.enumerate()), "Stop must stop the engine"
    assert named(client.predict(*args(), False, api_name="/run"))["text"] == engine_text


def test_exported_trace_imports_to_the_same_views(client, tmp_path):
    run = named(client.predict(*args(), False, api_name="/run"))
    path = run["download"]["value"]
    events = json.loads(open(path).read())["events"]
    assert events[0]["event"] == "RunStarted" and events[-1]["event"] == "RunFinished"
    other = Client(client.src, verbose=False)  # a fresh session: nothing but the file
    imported = named(other.predict(handle_file(path), api_name="/import_trace"))
    for name in ("tokens", "text", "step", "tree", "explain", "entropy", "metrics", "metrics_plot"):
        assert imported[name] == run[name], name
    assert "Imported trace" in imported["status"]
    # the step explorer works on the imported run
    tree, explain, tokens = other.predict(1, api_name="/show_step")
    assert "Step 1" in explain and tree["type"] == "plotly" and "outline" in tokens


def test_example_traces_load_without_a_model(client):
    from specviz.examples import example_traces

    names = list(example_traces())
    assert len(names) >= 2
    out = named(client.predict(names[-1], api_name="/example_trace"))
    assert "recorded example" in out["status"] and 'class="tok tok-' in out["tokens"]


def test_step_by_step_explains_each_step(client):
    first = named(client.predict(*args(max_new_tokens=12), api_name="/step_start"))
    assert "Step 0" in first["explain"] and first["step"]["value"] == 0
    second = named(client.predict(0, api_name="/step_next"))
    assert "Step 1" in second["explain"] and second["step"]["value"] == 1
    back = named(client.predict(1, api_name="/step_prev"))
    assert "Step 0" in back["explain"]
    again = named(client.predict(0, api_name="/step_next"))  # replays the recorded step 1
    assert again["explain"] == second["explain"]
    for _ in range(12):  # run to the end: the live generator finishes and the trace becomes downloadable
        out = named(client.predict(out["step"]["value"] if _ else again["step"]["value"], api_name="/step_next"))
        if "finished" in out["status"]:
            break
    assert "finished" in out["status"] and out["download"]["value"].endswith(".trace.json")


def test_race_runs_both_sides_and_measures_the_speedup(client):
    job = client.submit(*args(max_new_tokens=16), api_name="/race")
    outs = list(job)
    spec_html, ar_html, score = job.result()[:3]
    assert len(outs) >= 2
    assert "Speculative:" in score and "Autoregressive:" in score and "finished" in score
    assert 'tok tok-target' in ar_html and 'tok tok-accepted' not in ar_html
    final = named(job.result()[3:])
    assert "AR reference:" in final["metrics"]  # the race filled the AR cache for this prompt


def test_measure_against_ar_fills_the_measured_speedup(client):
    prompt = PROMPT + " Be brief."
    job = client.submit(*args(prompt=prompt, max_new_tokens=8), True, api_name="/run")
    statuses = [named(out)["status"] for out in job]
    final = named(job.result())
    assert any("measuring the AR reference" in s for s in statuses)
    assert "AR reference:" in final["metrics"] and "×**" in final["metrics"]
    again = named(client.predict(*args(prompt=prompt, max_new_tokens=8), False, api_name="/run"))
    assert "AR reference:" in again["metrics"]  # cached per (target, prompt, settings)


@pytest.mark.parametrize("bad, message", [
    (dict(prompt="   "), "prompt is empty"),
    (dict(prompt="x" * 20_001), "20,000"),
    # knobs out of range: gradio's own bound check answers first, naming value and bound
    (dict(temperature=9.0), "9.0 is greater than maximum value 2"),
    (dict(draft_len=0), "0 is less than minimum value 1"),
    (dict(top_p=0.0), "less than minimum value 0.05"),
    (dict(max_new_tokens=100_000), "greater than maximum value 512"),
    (dict(seed=-3), "less than minimum value 0"),
    (dict(prompt="ж∑ξ" * 6_600), "context"),  # under the character limit, beyond the model's context
])
def test_bad_inputs_give_clear_errors_and_the_app_keeps_serving(client, bad, message):
    with pytest.raises(AppError, match=message):
        client.predict(*args(**bad), False, api_name="/run")
    assert client.predict(0, api_name="/show_step")[0]["type"] == "plotly"  # still serving


def test_read_request_names_the_bad_knob():
    from specviz.ui import read_request

    for bad, message in [(dict(temperature=float("nan")), "temperature must be a finite number"),
                         (dict(temperature=9), "temperature must be in"), (dict(draft_len=2.5), "draft length must be"),
                         (dict(top_p="x"), "top-p must be a number"), (dict(seed=-1), "seed must be"),
                         (dict(max_new_tokens=0), "max new tokens must be")]:
        with pytest.raises(ValueError, match=message):
            read_request(*args(**bad))
    with pytest.raises(ValueError, match="unknown strategy"):
        read_request(PROMPT, TARGET, "pld", "no-such-shape", 4, 0.0, 1.0, 0, 8)
    with pytest.raises(ValueError, match="unknown drafter"):
        read_request(PROMPT, TARGET, "no-such-drafter", "chain", 4, 0.0, 1.0, 0, 8)
    with pytest.raises(ValueError, match="unknown verification rule"):
        read_request(PROMPT, TARGET, "pld", "chain", 4, 0.0, 1.0, 0, 8, "made-up")
    assert read_request(PROMPT, TARGET, "pld", "chain", 4, 0.5, 1.0, 0, 8, "typical-lossy").rule == "typical-lossy"
    assert read_request(*args()).settings == Settings(max_new_tokens=N)
    from specviz.drafters import strategies

    for name in getattr(strategies, "GREEDY_ONLY", ()):  # tree shapes that refuse sampling are refused up front
        with pytest.raises(ValueError, match="greedy decoding only"):
            read_request(PROMPT, TARGET, TARGET, name, 4, 0.8, 1.0, 0, 8)


def test_a_drafter_with_another_vocabulary_is_refused(client):
    if models.status("qwen2.5-coder-0.5b") != "ready":
        pytest.skip("qwen2.5-coder-0.5b not installed")
    with pytest.raises(AppError, match="share one tokenizer"):
        client.predict(*args(drafter="qwen2.5-coder-0.5b"), False, api_name="/run")


def hostile_traces(tmp_path):
    good = {"format": "specviz-trace", "version": 1}
    started = {"event": "RunStarted", "target": "t", "drafter": "d", "rule": "greedy", "settings": {},
               "prompt": "p", "prompt_tokens": 1}
    node = {"id": 0, "parent": 5, "depth": 1, "token": 1, "text": "a", "q": 1.0, "q_entropy": 0.0}
    cases = {
        "not-json.json": (b"\x00\xff definitely not json", "not valid JSON"),
        "wrong-schema.json": (json.dumps({"hello": "world"}).encode(), "not a specviz trace"),
        "bad-event.json": (json.dumps({**good, "events": [started, {"event": "Nope"}]}).encode(),
                           "not a specviz event"),
        "bad-parent.json": (json.dumps({**good, "events": [started, {"event": "Drafted", "step": 0, "nodes": [node],
                                                                     "draw": "iid"}]}).encode(), "parent link"),
        "bad-types.json": (json.dumps({**good, "events": [started, {"event": "Emitted", "step": 0, "tokens": [
            {"id": 1, "text": "a", "kind": "accepted", "p": "high", "p_entropy": None}]}]}).encode(), "tokens.p"),
        "huge.json": (b" " * (50 * 1024 * 1024 + 10), "size|large|limit|MB"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        yield tmp_path / name, message


def test_malformed_or_hostile_traces_are_refused_and_the_app_keeps_serving(client, tmp_path):
    shown = named(client.predict(*args(max_new_tokens=8), False, api_name="/run"))
    for path, message in hostile_traces(tmp_path):
        with pytest.raises(Exception, match=message):
            client.predict(handle_file(str(path)), api_name="/import_trace")
        assert client.predict(0, api_name="/show_step")[0]["type"] == "plotly", path.name
    # the run on display was kept
    assert client.predict(0, api_name="/step_prev")[2] == shown["text"]


@pytest.fixture
def app_process(tmp_path):
    """`python app.py` as users start it, on a free local port."""
    import subprocess
    import sys
    from pathlib import Path

    port = free_port()
    env = {**os.environ, "SPECVIZ_HOST": "127.0.0.1", "SPECVIZ_PORT": str(port)}
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, str(root / "app.py")], cwd=root, env=env,
                            stdout=open(tmp_path / "app.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            try:
                client = Client(url, verbose=False)
                break
            except Exception:
                if proc.poll() is not None:
                    raise RuntimeError((tmp_path / "app.log").read_text()[-2000:]) from None
                time.sleep(0.5)
        else:
            raise RuntimeError("app.py did not come up")
        yield client
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_ui_cost(app_process):
    """Tokens/s of one run: the engine alone vs the same run streamed through `python app.py`."""
    from specviz.bench import read_prompts

    prompt, n = read_prompts(None)[1]["prompt"], 96  # a code edit: pld drafts, the output is long
    engine = build_engine(TARGET, "pld", 4)
    engine.generate(prompt, Settings(max_new_tokens=8))  # warm, as the app is after its first run
    app_process.predict(*args(prompt=prompt, max_new_tokens=8), False, api_name="/run")
    t0 = time.perf_counter()
    alone = engine.generate(prompt, Settings(max_new_tokens=n))
    alone_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    job = app_process.submit(*args(prompt=prompt, max_new_tokens=n), False, api_name="/run")
    updates = sum(1 for _ in job)
    out = named(job.result())
    ui_wall = time.perf_counter() - t0
    assert out["text"] == alone.text
    tokens = alone.metrics.tokens
    print(f"\nUI cost: engine alone {tokens / alone_wall:.1f} tok/s wall ({alone.metrics.tokens_per_s:.1f} decoding);"
          f" through app.py {tokens / ui_wall:.1f} tok/s wall, {updates} streamed updates")
    # a measurement, printed for the README (`pytest -s -k ui_cost`); speed is never asserted in a test
    assert updates > 2


def test_binding_and_space_settings(monkeypatch):
    from specviz.ui import launch as app

    for name in ("SPACE_ID", "SPECVIZ_HOST", "SPECVIZ_PORT", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert app.server_address() == ("127.0.0.1", 7860)
    monkeypatch.setenv("SPECVIZ_HOST", "0.0.0.0")
    monkeypatch.setenv("SPECVIZ_PORT", "9000")
    assert app.server_address() == ("0.0.0.0", 9000)
    monkeypatch.delenv("SPECVIZ_HOST")
    monkeypatch.setenv("SPACE_ID", "someone/specviz")
    # setenv first so that teardown restores the variable's original state (absent, usually)
    monkeypatch.setenv("SPECVIZ_FROM_HUB", "")
    monkeypatch.delenv("SPECVIZ_FROM_HUB")
    app.prepare_environment()
    assert app.server_address()[0] == "0.0.0.0" and os.environ["SPECVIZ_FROM_HUB"] == "1"
    os.environ.pop("SPECVIZ_FROM_HUB")  # set by prepare_environment, not by monkeypatch
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    try:
        import spaces  # noqa: F401
    except ImportError:
        assert app.gpu(test_binding_and_space_settings) is test_binding_and_space_settings  # a no-op here
