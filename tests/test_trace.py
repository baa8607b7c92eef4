"""Traces round-trip exactly and reject malformed input with one readable reason."""
import json

import pytest
from conftest import decode

from specviz import trace
from specviz.drafters.model import ModelDrafter, chain_builder
from specviz.engine import Engine, Settings
from specviz.events import Drafted, Emitted, RunFinished, RunStarted, StepFinished, Verified
from specviz.metrics import predicted_speedup


@pytest.fixture(scope="module")
def events(tiny_target, tiny_drafter):
    engine = Engine(tiny_target, decode, ModelDrafter(tiny_drafter, chain_builder(3)))
    return list(engine.stream([1, 5, 7, 3], Settings(max_new_tokens=20, temperature=0.9, seed=3)))


def test_event_stream_shape(events):
    assert isinstance(events[0], RunStarted) and isinstance(events[-1], RunFinished)
    emitted = [t for e in events if isinstance(e, Emitted) for t in e.tokens]
    assert [t.id for t in emitted] == events[-1].token_ids
    assert "".join(t.text for t in emitted) == events[-1].text
    for d, v in zip((e for e in events if isinstance(e, Drafted)), (e for e in events if isinstance(e, Verified))):
        assert [n.token for n in d.nodes] == [n.token for n in v.nodes]
        assert all(n.p is None for n in d.nodes) and all(n.status for n in v.nodes)
    last = [e for e in events if isinstance(e, StepFinished)][-1]
    assert last.metrics.tokens == 20 and last.metrics.steps == events[-1].metrics.steps


def test_round_trip_is_exact(events, tmp_path):
    path = trace.save(events, tmp_path / "run.json")
    assert trace.load(path) == events
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


@pytest.mark.parametrize("text, reason", [
    ("not json", "not valid JSON"),
    ("[]", "not a specviz trace"),
    (json.dumps({"format": "specviz-trace", "version": 99, "events": []}), "version 99"),
    (json.dumps({"format": "specviz-trace", "version": 1, "events": []}), "no events"),
    (json.dumps({"format": "specviz-trace", "version": 1, "events": [{"event": "Bogus"}]}), "not a specviz event"),
    (json.dumps({"format": "specviz-trace", "version": 1, "events": [{"event": "StepStarted"}]}), "lacks field"),
    (json.dumps({"format": "specviz-trace", "version": 1, "events": [{"event": "StepStarted", "step": 0}]}), "begin with"),
])
def test_malformed_traces_are_refused(text, reason):
    with pytest.raises(ValueError, match=reason):
        trace.loads(text)


STARTED = {"event": "RunStarted", "target": "t", "drafter": "d", "rule": "greedy", "settings": {}, "prompt": "p",
           "prompt_tokens": 1}
NODE = {"id": 0, "parent": -1, "depth": 1, "token": 1, "text": "a", "q": 1.0, "q_entropy": 0.0}
TOKEN = {"id": 1, "text": "a", "kind": "accepted", "p": 0.5, "p_entropy": 0.1}


@pytest.mark.parametrize("event, reason", [
    ({"event": "Drafted", "step": 0, "nodes": [{**NODE, "parent": 0}], "draw": "iid"}, "parent link"),
    ({"event": "Drafted", "step": 0, "nodes": [{**NODE, "id": 3}], "draw": "iid"}, "bad id"),
    ({"event": "Verified", "step": 0, "nodes": [NODE], "path": [1], "kind": "bonus"}, "path names nodes"),
    ({"event": "Verified", "step": 0, "nodes": [{**NODE, "status": "maybe"}], "path": [], "kind": "bonus"},
     "node status"),
    ({"event": "Emitted", "step": 0, "tokens": [{**TOKEN, "kind": "magic"}]}, "token kind"),
    ({"event": "Emitted", "step": 0, "tokens": [{**TOKEN, "p": "high"}]}, "tokens.p"),
    ({"event": "Drafted", "step": "zero", "nodes": [], "draw": "iid"}, "'step'"),
])
def test_events_no_engine_could_write_are_refused(event, reason):
    good = json.dumps({"format": "specviz-trace", "version": 1, "events": [STARTED, event]})
    with pytest.raises(ValueError, match=reason):
        trace.loads(good)


def test_huge_trace_is_refused():
    with pytest.raises(ValueError, match="limit"):
        trace.loads(" " * (trace.MAX_BYTES + 1))


def test_predicted_speedup_formula():
    assert predicted_speedup(0.0, 4, 0.0) == pytest.approx(1.0)
    assert predicted_speedup(1.0, 4, 0.0) == pytest.approx(5.0)
    # Leviathan et al.: alpha 0.8, gamma 4, c 0.05 -> (1 - 0.8^5) / (0.2 * 1.2)
    assert predicted_speedup(0.8, 4, 0.05) == pytest.approx((1 - 0.8 ** 5) / (0.2 * 1.2))
