"""Fuzzing the trace loader (hypothesis): whatever a file holds, `trace.loads` either returns events
that every view renders without an exception, or raises ValueError with a one-line reason. Never
another exception type, never a hang.

Three sources of input: a real recorded trace mutated (fields dropped, types swapped, NaN and
infinities, huge numbers, deep nesting, events dropped, duplicated or swapped, wrong versions),
its JSON text damaged (truncated, bytes changed), and valid traces of random shapes generated from
scratch (which must load, round-trip and render). Deterministic (derandomize), no example database.
Run with -s to see the example counts (printed at the end of each test either way).
"""
from __future__ import annotations

import copy
import json
import math
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specviz import trace, views
from specviz.events import Drafted, Emitted, Node, RunFinished, RunStarted, StepFinished, StepStarted, Token, Verified
from specviz.metrics import Metrics
from specviz.views.tree_figure import LEVEL_WIDTH

ASSETS = Path(__file__).resolve().parent.parent / "assets"
FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=False,
                suppress_health_check=list(HealthCheck))
SLOW_S = 10.0  # one example taking longer than this is a hang for our purposes


def base_trace() -> dict:
    """A real recorded trace (version 1: drafts of Qwen 0.5B for Qwen 1.5B at T = 0.8), cut to its
    first 4 steps plus RunFinished so that each example stays fast."""
    path = next(p for p in sorted(ASSETS.glob("*.trace.json")) if "code" in p.name)
    data = json.loads(path.read_text())
    data["events"] = data["events"][: 1 + 5 * 4] + data["events"][-1:]
    return data


BASE = base_trace()
BASE_TEXT = json.dumps(BASE)


def render_all(events) -> int:
    """Every view of the run, as the app shows it (the first and the last step); returns the size."""
    n = len(views.split_steps(events))
    out = [views.tokens_html(events, focus=max(0, n - 1)), views.generated_text(events),
           views.metrics_markdown(events), views.entropy_figure(events).to_json(),
           views.metrics_figure(events).to_json()]
    record = views.record(events)
    out.append(views.drafter_markdown([record] if record else [], "d", "recorded"))
    for i in sorted({0, max(n - 1, 0)}):
        out += [views.step_tree_figure(events, i).to_json(), views.explain_run_step(events, i)]
    return sum(len(x) for x in out)


def check(text, counts: Counter) -> None:
    """The property: loads into renderable events, or a one-line ValueError; nothing else."""
    start = time.perf_counter()
    try:
        events = trace.loads(text)
    except ValueError as err:
        message = str(err)
        assert message and "\n" not in message and len(message) < 400, repr(message)
        counts["refused"] += 1
    else:
        assert isinstance(events[0], RunStarted)
        assert views.ended_early(events) == (views.run_finished(events) is None)
        assert render_all(events) > 0
        assert trace.loads(trace.dumps(events)) == events  # what loads accepts, it writes back
        counts["loaded"] += 1
    assert time.perf_counter() - start < SLOW_S


def report(name: str, counts: Counter, capsys) -> None:
    with capsys.disabled():
        print(f"\n[fuzz] {name}: {sum(counts.values())} examples "
              f"({counts['loaded']} loaded and rendered, {counts['refused']} refused with a one-line reason)")


# ---------------------------------------------------------------- mutations of a real trace

NASTY = st.one_of(
    st.sampled_from([None, True, False, 0, -1, 1, 2**31, 2**63, 10**30, -(10**30), 10**400, 0.5, -0.5, 1e308,
                     -1e308, 1e-320, math.nan, math.inf, -math.inf, "", "accepted", "rejected", "bonus", "iid",
                     "\ud800", "x" * 3000, "<img src=x onerror=alert(1)>", [], [0], [None], {}, {"a": 1},
                     {"event": "Node"}, [[[[[]]]]]]),
    st.integers(), st.floats(), st.text(max_size=8), st.lists(st.integers(-2, 5), max_size=4),
)


def _paths(doc, prefix=()):
    """Every (container, key) inside the JSON document: the places a mutation can hit."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield prefix + (key,)
            yield from _paths(value, prefix + (key,))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield prefix + (i,)
            yield from _paths(value, prefix + (i,))


PATHS = list(_paths(BASE))


def _at(doc, path):
    for key in path:
        doc = doc[key]
    return doc


@st.composite
def mutated(draw) -> str:
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["replace", "replace", "replace", "delete", "wrap", "stringify", "events",
                                     "nest", "add_field", "version"]))
        path = draw(st.sampled_from(PATHS))
        try:
            parent, key = _at(doc, path[:-1]), path[-1]
            parent[key]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation changed the shape here
        if kind == "replace":
            parent[key] = draw(NASTY)
        elif kind == "delete":
            del parent[key]
        elif kind == "wrap":
            parent[key] = [parent[key]]
        elif kind == "stringify":
            parent[key] = json.dumps(parent[key])
        elif kind == "nest":
            value = parent[key]
            for _ in range(draw(st.sampled_from([3, 30, 40, 1000]))):
                value = [value]
            parent[key] = value
        elif kind == "add_field" and isinstance(parent[key], dict):
            parent[key][draw(st.sampled_from(["bogus", "id", "step", "event", "metrics"]))] = draw(NASTY)
        elif kind == "events":
            events = doc["events"] if isinstance(doc.get("events"), list) else None
            if events:
                i, j = draw(st.integers(0, len(events) - 1)), draw(st.integers(0, len(events) - 1))
                op = draw(st.sampled_from(["drop", "duplicate", "swap", "move_last"]))
                if op == "drop":
                    del events[i]
                elif op == "duplicate":
                    events.insert(j, copy.deepcopy(events[i]))
                elif op == "swap":
                    events[i], events[j] = events[j], events[i]
                else:
                    events.append(events.pop(i))
        elif kind == "version":
            doc["version"] = draw(st.one_of(NASTY, st.sampled_from([1, 2, 3, 1.0, "1", True])))
    return json.dumps(doc)  # NaN and infinities are written as NaN / Infinity, as a hostile file may


def test_mutated_real_traces_load_and_render_or_are_refused_in_one_line(capsys):
    counts = Counter()

    @settings(FUZZ, max_examples=300)
    @given(mutated())
    def run(text):
        check(text, counts)

    run()
    report("mutated real trace", counts, capsys)
    assert counts["refused"] > 100 and counts["loaded"] > 5  # both outcomes were exercised


# ---------------------------------------------------------------- damaged JSON text

@st.composite
def damaged(draw) -> str | bytes:
    kind = draw(st.sampled_from(["truncate", "byte", "splice", "deep", "raw"]))
    if kind == "truncate":
        return BASE_TEXT[: draw(st.integers(0, len(BASE_TEXT) - 1))]
    if kind == "byte":
        data = bytearray(BASE_TEXT.encode())
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    if kind == "splice":
        i = draw(st.integers(0, len(BASE_TEXT)))
        return BASE_TEXT[:i] + draw(st.sampled_from(['"', "[", "{", "]", "}", ",", "\\", "NaN", "1e999", "\x00",
                                                     '"\\ud800"', "9" * 5000])) + BASE_TEXT[i:]
    if kind == "deep":
        depth = draw(st.sampled_from([33, 1000, 100_000]))
        opener = draw(st.sampled_from(["[", '{"a":']))
        return opener * depth + "1" + ("]" if opener == "[" else "}") * depth
    return draw(st.binary(max_size=64))


def test_damaged_json_text_is_refused_in_one_line(capsys):
    counts = Counter()

    @settings(FUZZ, max_examples=150)
    @given(damaged())
    def run(text):
        check(text, counts)

    run()
    report("damaged JSON text", counts, capsys)
    assert counts["refused"] > 100


# ---------------------------------------------------------------- valid traces of random shapes

PROB = st.floats(0.0, 1.0)
TEXT = st.text(max_size=6)
TEXTS = ["", " ", "\n", "\t", "a", " the", "`", "<b>x</b>", "&amp;", "é", "🙂", "x" * 60, "\x00", "'\""]


def valid_step(draw, rnd, index: int, metrics: Metrics, budget: list[int]) -> list:
    """One step an engine could have written: a random tree, a path of accepted nodes from the root,
    its siblings rejected or never checked, the emitted tokens (maybe cut short). The shape is drawn
    by hypothesis; the many per-node numbers and texts come from `rnd` (cheap)."""
    def prob():
        return rnd.choice([0.0, 1.0, 1e-300, rnd.random(), rnd.random()])

    wide = draw(st.booleans()) and budget[0] >= 24  # most nodes children of the root, or a random tree
    n = draw(st.integers(24, min(40, budget[0])) if wide else st.integers(0, min(40, budget[0])))
    budget[0] -= n
    parents = [-1 if wide and rnd.random() < 0.9 else rnd.randint(-1, i - 1) for i in range(n)]
    children = defaultdict(list)
    for i, par in enumerate(parents):
        children[par].append(i)
    path, cur = [], -1
    while children[cur] and draw(st.booleans()):
        cur = rnd.choice(children[cur])
        path.append(cur)
    on_path, tried_at = set(path), {-1, *path}
    depths, nodes, drafted = [], [], []
    for i, par in enumerate(parents):
        depths.append(1 if par < 0 else depths[par] + 1)
        status = ("accepted" if i in on_path else
                  rnd.choice(["rejected", "unvisited"]) if par in tried_at else "unvisited")
        node = Node(i, par, depths[i], rnd.randint(0, 50_000), rnd.choice(TEXTS), prob(), rnd.uniform(0, 12))
        drafted.append(node)
        nodes.append(Node(node.id, par, node.depth, node.token, node.text, node.q, node.q_entropy, prob(),
                          rnd.choice([None, prob()]), status, None if status == "unvisited" else prob()))
    kind = "target" if n == 0 else rnd.choice(["resampled", "bonus"])
    tokens = [Token(nodes[j].token, nodes[j].text, "accepted", prob(), rnd.uniform(0, 12), nodes[j].q,
                    nodes[j].accept_prob, j) for j in path]
    tokens.append(Token(rnd.randint(0, 50_000), rnd.choice(TEXTS), kind, prob(), rnd.uniform(0, 12)))
    tokens = tokens[: rnd.randint(1, len(tokens))]
    metrics.record_step(len(tokens), n, sum(t.kind == "accepted" for t in tokens),
                        [(nodes[c].depth, nodes[c].beta) for c in sorted({c for p in tried_at for c in children[p]})
                         if nodes[c].beta is not None])
    stop = rnd.choice([None, {"rule": "schedule", "depth": rnd.randint(0, 9), "reason": "limit", "length": 4.0}])
    return [StepStarted(index), Drafted(index, drafted, rnd.choice(["iid", "without_replacement"]), stop),
            Verified(index, nodes, path, kind), Emitted(index, tokens),
            StepFinished(index, rnd.uniform(0, 5), rnd.uniform(0, 5), rnd.uniform(0, 1), metrics.snapshot())]


@st.composite
def valid_trace(draw) -> list:
    rnd = draw(st.randoms(use_true_random=False))
    config = draw(st.none() | st.fixed_dictionaries({"target": TEXT, "draft_len": st.integers(1, 32),
                                                     "stop_params": st.dictionaries(TEXT, st.floats(0, 9))}))
    events = [RunStarted(draw(TEXT), draw(TEXT), draw(st.sampled_from(["greedy", "sampling", "typical-lossy"])),
                         {"temperature": draw(st.floats(0, 2))}, draw(st.text(max_size=40)),
                         draw(st.integers(0, 9)), config)]
    metrics, budget = Metrics(), [120]
    for i in range(draw(st.integers(0, 6))):
        events += valid_step(draw, rnd, i, metrics, budget)
    if draw(st.booleans()):
        events = events[: draw(st.integers(1, len(events)))]  # a run that ended early
    elif events:
        emitted = [t for ev in events if isinstance(ev, Emitted) for t in ev.tokens]
        events.append(RunFinished("".join(t.text for t in emitted), [t.id for t in emitted], "length", metrics))
    return events


def test_valid_traces_of_random_shapes_load_round_trip_and_render(capsys):
    counts = Counter()

    @settings(FUZZ, max_examples=60)
    @given(valid_trace())
    def run(events):
        text = trace.dumps(events)
        loaded = trace.loads(text)  # must not be refused
        assert loaded == events
        check(text, counts)
        levels = Counter((s.index, n.depth) for s in views.split_steps(loaded) for n in s.nodes)
        wide["summarized"] += bool(levels) and max(levels.values()) > LEVEL_WIDTH

    wide = Counter()
    run()
    report("valid random traces", counts, capsys)
    assert counts["loaded"] == sum(counts.values())
    with capsys.disabled():
        print(f"[fuzz] of which {wide['summarized']} had a tree level too wide to draw whole (summarized)")
    assert wide["summarized"] > 3


@pytest.mark.parametrize("path", sorted(ASSETS.glob("*.trace.json")), ids=lambda p: p.name[:12])
def test_the_recorded_examples_still_load_and_render(path):
    """The shipped examples (recorded by `python assets/make_examples.py`) are current-version traces, load
    and render; written back as version 1 (without the fields version 2 added) they load the same."""
    events = trace.load(path)
    data = json.loads(path.read_text())
    assert events.complete and data["version"] == trace.VERSION
    assert render_all(events) > 0
    data["version"] = 1
    for e in data["events"]:
        e.pop("config", None), e.pop("stop", None)
    older = trace.loads(json.dumps(data))
    assert [type(e) for e in older] == [type(e) for e in events] and older[-1].metrics == events[-1].metrics
