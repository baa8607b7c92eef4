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
    assert any("▶ decoding: step" in u["status"] for u in updates)
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


def test_streamed_updates_are_at_most_five_a_second_and_figures_come_at_the_end(client):
    from specviz.ui.streaming import UPDATES_EVERY_S

    t0 = time.perf_counter()
    job = client.submit(*args(max_new_tokens=64), False, api_name="/run")
    updates = [named(out) for out in job]
    wall = time.perf_counter() - t0
    # the throttle spaces streamed updates UPDATES_EVERY_S apart; besides them: "loading", the first view, the
    # first update with text (sent at once, callbacks._streamed) and the end (a short run, 0.56 s here, had 6)
    assert len(updates) <= wall / UPDATES_EVERY_S + 4, (len(updates), wall)
    streamed = [u for u in updates if "▶ decoding" in u["status"]]
    untouched = {"__type__": "update"}  # gradio's word for "this output is left as it is"
    assert streamed and all(u["tree"] == untouched and u["entropy"] == untouched for u in streamed)  # figures: at the end
    assert updates[-1]["tree"]["type"] == "plotly"


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


def test_step_by_step_takes_two_clicks_a_step_draft_then_verify(client):
    out = named(client.predict(*args(max_new_tokens=12), api_name="/step_start"))
    seen = [out]
    for _ in range(40):  # run to the end: the live generator finishes and the trace becomes downloadable
        if "finished" in out["status"]:
            break
        out = named(client.predict(out["step"]["value"], api_name="/step_next"))
        seen.append(out)
    assert "finished" in out["status"] and out["download"]["value"].endswith(".trace.json")
    drafted = [i for i, o in enumerate(seen) if "drafted, not verified yet" in o["explain"]]
    assert drafted, "pld drafts on this summary"
    for i in drafted:  # the click after a draft verifies the same step
        step = seen[i]["step"]["value"]
        assert "Verify ▶" in seen[i]["status"] and "not checked yet" in json.dumps(seen[i]["tree"])
        assert f"### Step {step}: " in seen[i + 1]["explain"] and "not verified" not in seen[i + 1]["explain"]
        assert seen[i + 1]["step"]["value"] == step
    last = max(o["step"]["value"] for o in seen)
    back = named(client.predict(last, api_name="/step_prev"))
    assert f"Step {last - 1}:" in back["explain"]
    again = named(client.predict(last - 1, api_name="/step_next"))  # replays the recorded step
    assert f"Step {last}:" in again["explain"]


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


def test_stopping_rule_parameters_are_checked_by_the_run_config():
    from specviz.ui import read_request

    with pytest.raises(ValueError, match=r"grow must be a whole number in \[1, 8\]"):
        read_request(*args(), stop="schedule", stop_params={"grow": 99})
    with pytest.raises(ValueError, match="reads the drafter's distribution"):
        read_request(*args(), stop="adaedl")  # pld has no distribution to read
    with pytest.raises(ValueError, match="unknown stopping rule"):
        read_request(*args(), stop="no-such-rule")
    req = read_request(*args(), stop="schedule", stop_params={"grow": 3.0}, fast_path=False)
    assert req.config.stop_params == {"grow": 3, "shrink": 1} and req.config.fast_path is False


def test_every_registered_choice_is_on_the_page(client):
    from specviz.drafters.registry import DRAFTERS
    from specviz.drafters.strategies import STRATEGIES
    from specviz.rules import VERIFY_RULES
    from specviz.stop_rules import STOP_RULES
    from specviz.ui.request import stop_params

    params = {p["parameter_name"]: p for p in
              client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/run"]["parameters"]}
    assert set(DRAFTERS.names()) | set(models.PRESETS) == set(params["drafter"]["type"]["enum"])
    assert STRATEGIES.names() == params["strategy"]["type"]["enum"]
    assert ["auto"] + VERIFY_RULES.names() == params["rule"]["type"]["enum"]
    assert STOP_RULES.names() == params["stop"]["type"]["enum"]
    assert params["fast_path"]["parameter_default"] is True
    for key, _, param in stop_params():
        assert params[key]["parameter_default"] == param.default, key


def test_a_run_with_a_stopping_rule_equals_the_engine_and_says_so(client):
    from specviz.api import build
    from specviz.config import RunConfig

    out = named(client.predict(*args(), False, stop="schedule", schedule_grow=3, fast_path=False, api_name="/run"))
    config = RunConfig(TARGET, "pld", draft_len=4, stop="schedule", stop_params={"grow": 3},
                       settings=Settings(max_new_tokens=N), fast_path=False)
    assert out["text"] == build(config).generate(PROMPT).text
    assert "stopping rule schedule (grow 3, shrink 1)" in out["status"]
    assert "your pick in the drafter menu" in out["drafter"]  # the registered policy's reason


def test_a_parallel_run_equals_the_engine_and_step_by_step_refuses_it(client):
    """The PEARL mode from the page: greedy text equal to the sequential engine's (a trained model
    drafter, chains); step-by-step says why it cannot step through overlapping rounds."""
    out = named(client.predict(*args(drafter="distill-kd"), False, parallel=True, api_name="/run"))
    assert out["text"] == build_engine(TARGET, "distill-kd", 4).generate(PROMPT, Settings(max_new_tokens=N)).text
    assert "✔ done" in out["status"]
    with pytest.raises(Exception, match="untick \\*parallel\\*"):
        client.predict(*args(drafter="distill-kd"), parallel=True, api_name="/step_start")
    with pytest.raises(Exception, match="parallel decoding needs a drafter with its own model"):
        client.predict(*args(), False, parallel=True, api_name="/run")  # pld has no model to run alongside


@pytest.fixture
def page_with_a_new_stop_rule(monkeypatch):
    """The app built after one more stopping rule was registered (and nothing else changed)."""
    from specviz.registry import Param
    from specviz.stop_rules import STOP_RULES, StopEntry
    from specviz.ui import build_demo, launch_kwargs

    class Share:
        name = "share"

        def __init__(self, draft_len: int, share: float = 0.5):
            self.length = max(1, round(draft_len * share))

        def limit(self):
            return self.length

        def stop(self, depth, entropy, top_prob):
            return None

        def update(self, drafted, accepted):
            pass

        def reset(self):
            pass

        def state(self):
            return {"length": self.length}

    entry = StopEntry("share", "a share of the draft length", "Each round drafts share × draft length tokens.",
                      Share, (Param("share", 0.5, 0.1, 1.0, "share of the draft length"),))
    monkeypatch.setitem(STOP_RULES._entries, entry.name, entry)  # registered for this test only
    demo = build_demo()
    port = free_port()
    demo.queue().launch(**{**launch_kwargs(), "server_name": "127.0.0.1", "server_port": port,
                           "prevent_thread_lock": True, "quiet": True})
    yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    demo.close()


def test_a_newly_registered_stop_rule_appears_and_runs(page_with_a_new_stop_rule):
    from specviz import trace

    client = page_with_a_new_stop_rule
    params = {p["parameter_name"]: p for p in
              client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/run"]["parameters"]}
    assert "share" in params["stop"]["type"]["enum"] and params["share_share"]["parameter_default"] == 0.5
    out = named(client.predict(*args(draft_len=8), False, stop="share", share_share=0.25, api_name="/run"))
    assert "✔ done" in out["status"] and "stopping rule share (share 0.25)" in out["status"]
    events = trace.load(out["download"]["value"])
    assert events[0].config["stop"] == "share" and events[0].config["stop_params"] == {"share": 0.25}
    notes = [ev.stop for ev in events if type(ev).__name__ == "Drafted" and ev.stop]
    assert notes and all(n["rule"] == "share" and n["depth"] <= 2 and n["length"] == 2 for n in notes)


def test_the_drafter_is_chosen_by_the_registered_policy(monkeypatch):
    from specviz.policy import POLICIES, Choice, PolicyEntry
    from specviz.ui import callbacks
    from specviz.ui.session import POLICY, Session

    seen = []

    class NoDrafter:
        name, needs_features = POLICY, False

        def choose(self, given):
            seen.append(given)
            return Choice("none", "the test policy prefers no drafter")

        def learn(self, given, choice, metrics):
            seen.append(metrics)

    monkeypatch.setitem(POLICIES._entries, POLICY, PolicyEntry(POLICY, "test", NoDrafter))
    form = dict(zip(("prompt", "target", "drafter", "strategy", "draft_len", "temperature", "top_p", "seed",
                     "max_new_tokens", "rule"), args(max_new_tokens=6)))
    session = Session()
    final = list(callbacks.run(form, session))[-1]
    given = seen[0]
    assert given.requested == "pld" and given.config.drafter == "pld" and given.prompt_ids
    assert given.prompt_ids == build_engine(TARGET, "pld").encode(PROMPT)
    assert "the test policy prefers no drafter" in final["drafter_panel"]
    assert "drafter **none" in final["status"]
    assert seen[-1].tokens == 6  # the policy learned how the run went


def test_the_recorded_example_shown_matches_the_prompt_box(client):
    from specviz import trace
    from specviz.examples import LANDING_PROMPT, example_traces, landing_example

    landing = trace.load(example_traces()[landing_example()])
    assert landing[0].prompt == LANDING_PROMPT  # the box starts with the prompt of the example on display
    for name, path in example_traces().items():  # and follows whichever recorded run is shown
        out = client.predict(name, api_name="/example_trace")
        assert out[len(NAMES)] == trace.load(path)[0].prompt, name


def test_the_page_starts_on_auto_and_the_example_on_display_is_an_auto_run():
    """The page's default drafter is `auto` where a policy ships (faster than prompt lookup on the held-out
    prompts), and the recorded run a visitor lands on is one, so its controls and Run agree with it."""
    from specviz import trace
    from specviz.choice.arms import policy_path
    from specviz.examples import example_traces, landing_example
    from specviz.ui.launch import app_default
    from specviz.ui.layout import DEFAULT

    assert policy_path(TARGET).exists() and app_default(TARGET).drafter == DEFAULT.drafter == "auto"
    start = trace.load(example_traces()[landing_example()])[0]
    assert start.config["drafter"] == "auto" and start.policy and start.policy["name"] == "auto"


def test_a_drafter_with_another_vocabulary_is_refused(client):
    if models.status("qwen2.5-coder-0.5b") != "ready":
        pytest.skip("qwen2.5-coder-0.5b not installed")
    with pytest.raises(AppError, match="share one tokenizer"):
        client.predict(*args(drafter="qwen2.5-coder-0.5b"), False, api_name="/run")
    import gradio as gr

    from specviz.ui import callbacks

    form = dict(zip(("prompt", "target", "drafter", "strategy", "draft_len", "temperature", "top_p", "seed",
                     "max_new_tokens", "rule"), args(drafter="qwen2.5-coder-0.5b")))
    with pytest.raises(gr.Error, match="share one tokenizer"):  # on the page: before any model is loaded
        callbacks.check_run(form, None)


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


def test_a_bad_request_is_refused_before_the_run_and_no_view_is_touched():
    """On the page, Run, Race, Step-by-step and an upload first go through a check with no outputs: a bad
    request is one toast, and the views (none of them an output of the check) keep what they showed."""
    import gradio as gr

    from specviz.ui import build_demo, callbacks

    demo = build_demo()
    fns = {f.api_name: f for f in demo.fns.values()}
    for name, check in (("run", "check_run"), ("race", "check_race"), ("step_start", "check_step"),
                        ("import_trace", "check_trace")):
        fn = fns[name]
        before = demo.fns[fn.trigger_after]
        assert fn.trigger_only_on_success and before.fn.__name__ == check and before.outputs == []
        assert before.concurrency_limit is None  # never waits behind a decoding run
    form = dict(zip(("prompt", "target", "drafter", "strategy", "draft_len", "temperature", "top_p", "seed",
                     "max_new_tokens", "rule"), args()))
    for bad, message in ((dict(prompt="  "), "prompt is empty"), (dict(draft_len=0), "draft length"),
                         (dict(target="no-such-model"), "target")):
        with pytest.raises(gr.Error, match=message):
            callbacks.check_run(form | bad, None)
    with pytest.raises(gr.Error, match="needs a drafter"):
        callbacks.check_race(form | dict(drafter="none"), None)
    with pytest.raises(gr.Error, match="untick"):
        callbacks.check_step(form | dict(parallel=True), None)
    assert callbacks.check_run(form, None) == {}


def test_a_drafter_of_another_vocabulary_is_refused_before_loading(monkeypatch):
    import gradio as gr

    from specviz.ui import callbacks

    sizes = {TARGET: 49152, "qwen2.5-coder-0.5b": 151936}
    monkeypatch.setattr(callbacks, "vocabulary", sizes.get)
    form = dict(zip(("prompt", "target", "drafter", "strategy", "draft_len", "temperature", "top_p", "seed",
                     "max_new_tokens", "rule"), args()))
    from specviz.config import RunConfig

    other = callbacks.Request(PROMPT, RunConfig(TARGET, "qwen2.5-coder-0.5b"))  # not checked: may not be installed
    with pytest.raises(gr.Error, match="vocabulary 151936, the target 49152: they must share one tokenizer"):
        callbacks.check_vocabularies(other)
    callbacks.check_vocabularies(callbacks.read(form))  # pld: no vocabulary of its own
    monkeypatch.undo()
    assert callbacks.vocabulary(TARGET) == 49152  # read from the converted model's config.json


def test_the_status_line_tells_the_phase_while_the_prompt_is_read():
    """A long prompt takes a while to read (the first forward): the status line says so, and its clock moves."""
    import re

    from specviz.events import RunStarted
    from specviz.ui import callbacks
    from specviz.ui.session import Session

    def slow_prefill():
        yield RunStarted(TARGET, "pld", "greedy", {}, "p", 5000)
        time.sleep(2.5)  # the first step's forward, reading 5000 prompt tokens

    statuses = [out["status"] for out in callbacks.streamed(Session(), slow_prefill())]
    assert "▶ reading the prompt (5000 tokens)" in statuses[0] and "Ready" not in statuses[0]
    assert any(re.search(r"reading the prompt \(5000 tokens\).* · [12] s$", s) for s in statuses[1:]), statuses


def test_the_lossless_check_streams_progress_and_passes_for_speculative_sampling(client):
    job = client.submit(prompt=PROMPT, target=TARGET, drafter="pld", strategy="chain", draft_len=4, temperature=0.8,
                        top_p=1.0, seed=0, max_new_tokens=N, rule="auto", ll_k=1, ll_n=200, ll_broken=False,
                        api_name="/lossless_check")
    updates = list(job)
    status, plot, result = job.result()
    assert any("⏳" in u[0] for u in updates)  # a progress line while it loads and samples
    assert "The check **passes**" in result and "chi-square" in result and "200" in result
    assert plot["type"] == "plotly"


def test_a_failure_after_the_first_update_keeps_the_views():
    """After a handler's first update a failure is one toast and the status line (no panel marked failed);
    before it, the refusal stays an error (API clients see it as one)."""
    import gradio as gr

    from specviz.ui import callbacks

    def late(form, session):
        yield dict(status="loading")
        raise gr.Error("the model files are damaged")

    def early(form, session):
        raise gr.Error("the prompt is empty")
        yield {}

    out = list(callbacks.views_kept(late)({}, None))
    assert out == [dict(status="loading"), dict(status="✖ the model files are damaged")]
    with pytest.raises(gr.Error, match="the prompt is empty"):
        list(callbacks.views_kept(early)({}, None))


def test_the_first_text_goes_out_at_once_whatever_the_throttle(tiny_target, monkeypatch):
    """Thirty runs stretch the interval between one visitor's updates to 1.5 s; the first update with text
    must not wait for it (the status-line update just before it would otherwise have used the interval)."""
    from conftest import decode
    from specviz.engine import Engine
    from specviz.events import StepFinished
    from specviz.ui import callbacks
    from specviz.ui.session import Session

    monkeypatch.setattr(callbacks, "update_interval", lambda: 30.0)
    events = list(Engine(tiny_target, decode).stream([1, 2, 3], Settings(max_new_tokens=6)))
    first_step = next(i for i, ev in enumerate(events) if isinstance(ev, StepFinished))

    def paced():
        for i, ev in enumerate(events):
            if i in (1, first_step, len(events) - 1):
                time.sleep(0.3)  # separate batches: the first view, a status line, the first step, the end
            yield ev

    statuses = [out["status"] for out in callbacks.streamed(Session(), paced())]
    assert any("▶ decoding: step" in s for s in statuses), statuses


def test_a_throttled_handler_still_yields_now_and_then(tiny_target, monkeypatch):
    """gradio can cancel a streaming handler only between two yields: with thirty runs the light views wait
    1.5 s apart, but the handler still yields a status line every RESPONSIVE_S while events come."""
    from conftest import decode
    from specviz.engine import Engine
    from specviz.ui import callbacks
    from specviz.ui.streaming import RESPONSIVE_S

    monkeypatch.setattr(callbacks, "update_interval", lambda: 30.0)
    events = list(Engine(tiny_target, decode).stream([1, 2, 3], Settings(max_new_tokens=12)))

    def paced():
        for ev in events:
            time.sleep(0.05)  # a batch every 50 ms, ~3 s in all
            yield ev

    stamps = []
    for _ in callbacks.streamed(__import__("specviz.ui.session", fromlist=["Session"]).Session(), paced()):
        stamps.append(time.monotonic())
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert len(stamps) >= 4 and max(gaps) < RESPONSIVE_S + 0.5, gaps
