"""The decoding thread shared by every visitor (specviz/scheduler.py): runs take turns one step each, and
a run's tokens and events are exactly what it produces alone, whatever runs beside it."""
import math
import threading
import time
from dataclasses import asdict

import pytest
import torch

from conftest import decode
from specviz import models
from specviz.drafters.model import ModelDrafter
from specviz.drafters.strategies import STRATEGIES
from specviz.engine import Engine, Settings
from specviz.events import RunFinished, StepFinished
from specviz.scheduler import Busy, RunClock, Scheduler

# timing fields differ between any two runs; everything else must not
TIMING = {"draft_s", "verify_s", "overhead_s", "metrics", "draft_start_s", "verify_start_s"}


def stripped(events) -> list:
    """Each event as plain data without its timings."""
    out = []
    for ev in events:
        d = {k: v for k, v in asdict(ev).items() if k not in TIMING}
        if isinstance(ev, RunFinished):
            d["metrics"] = (ev.metrics.tokens, ev.metrics.steps, ev.metrics.drafted, ev.metrics.accepted)
        out.append((type(ev).__name__, d))
    return out


def same(a, b, path="") -> None:
    """Equal, floats up to rounding: a batched product sums in another order than a one-row one (1e-7
    relative); every token, node, verdict and count must match exactly."""
    if isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6), (path, a, b)
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert len(a) == len(b), (path, len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def drain(ticket) -> list:
    return [ev for batch in ticket.batches() for ev in batch]


def engines(tiny_target, tiny_drafter):
    """Engines over the same two models (shared, as the app shares loaded models), differing drafters."""
    chain, tree = STRATEGIES.get("chain").build(3), STRATEGIES.get("beam").build(4)
    return [Engine(tiny_target, decode, ModelDrafter(tiny_drafter, chain)),
            Engine(tiny_target, decode, ModelDrafter(tiny_drafter, tree)),
            Engine(tiny_target, decode, None),
            Engine(tiny_target, decode, ModelDrafter(tiny_drafter, chain))]


CASES = [([1, 2, 3], Settings(max_new_tokens=24)),
         ([4, 5, 6, 7], Settings(max_new_tokens=30, temperature=1.0, seed=3)),
         ([9, 8], Settings(max_new_tokens=20, temperature=0.8, top_k=5, seed=1)),
         ([2, 2, 2, 5], Settings(max_new_tokens=26, temperature=1.0, seed=7))]


@pytest.mark.parametrize("batch", [1, 4])
def test_runs_taking_turns_equal_runs_alone(tiny_target, tiny_drafter, one_thread, batch):
    """batch 1: each run's forward alone; 4: the four runs' verification forwards as one batched forward."""
    alone = [stripped(e.stream(p, s)) for e, (p, s) in zip(engines(tiny_target, tiny_drafter), CASES)]
    sched, order = Scheduler(max_active=4, max_batch=batch), []

    def noting(i, stream):  # passes the scheduler's answers on to a batched stream
        answer = None
        while True:
            try:
                ev = stream.send(answer) if answer is not None else next(stream)
            except StopIteration:
                return
            if isinstance(ev, StepFinished):
                order.append(i)
            answer = yield ev

    pairs = zip(engines(tiny_target, tiny_drafter), CASES)
    streams = [noting(i, e.stream(p, s, batched=True)) for i, (e, (p, s)) in enumerate(pairs)]
    tickets = [sched.submit(s) for s in streams]
    together = [stripped(drain(t)) for t in tickets]
    same(together, alone)
    # they did take turns: the first four steps were one of each run, not one run's whole answer
    assert sorted(order[:4]) == [0, 1, 2, 3]
    assert (sched.load()["shared_forwards"] > 0) == (batch > 1)


def test_a_shared_forward_failing_for_one_run_ends_only_that_run(tiny_target, tiny_drafter, one_thread):
    """One run's part of a batched forward fails (its cache refuses to grow): that run ends with the error,
    the others in the same forward finish with exactly their tokens alone."""
    from specviz.engine import TargetForward

    alone = [stripped(e.stream(p, s)) for e, (p, s) in zip(engines(tiny_target, tiny_drafter), CASES)]
    sched = Scheduler(max_active=4, max_batch=4)

    def breaking(stream):  # run 1's cache fails at its third verification forward
        answer, seen = None, 0
        while True:
            try:
                ev = stream.send(answer) if answer is not None else next(stream)
            except StopIteration:
                return
            if isinstance(ev, TargetForward):
                seen += 1
                if seen == 3:
                    def refuse(total):
                        raise MemoryError("no room for this run's cache")
                    ev.lm.kv.reserve = refuse
            answer = yield ev

    pairs = list(zip(engines(tiny_target, tiny_drafter), CASES))
    streams = [e.stream(p, s, batched=True) for e, (p, s) in pairs]
    streams[1] = breaking(streams[1])
    tickets = [sched.submit(s) for s in streams]
    with pytest.raises(MemoryError, match="no room"):
        drain(tickets[1])
    for i in (0, 2, 3):
        same(stripped(drain(tickets[i])), alone[i])
    assert sched.load()["shared_forwards"] > 0


@pytest.mark.skipif(models.status("smollm2-135m") != "ready", reason="smollm2-135m not fetched")
@pytest.mark.parametrize("batch", [1, 3])
def test_real_drafters_taking_turns_equal_alone(batch):
    """The app's own engines (api.build, shared loaded models, the n-gram corpus table, the trained
    head): interleaved runs give each run's tokens as alone, greedy and sampled."""
    from specviz.api import build
    from specviz.config import RunConfig

    configs = [RunConfig(drafter="ngram-tree", draft_len=8, settings=Settings(max_new_tokens=24)),
               RunConfig(drafter="eagle3", shape="dynamic", draft_len=2, settings=Settings(max_new_tokens=24)),
               RunConfig(drafter="pld", settings=Settings(max_new_tokens=24, temperature=1.0, seed=5))]
    prompts = ["Write a haiku about rivers.", "def add(a, b):\n    return", "Name three colors of the sea."]
    alone = [build(c).generate(p).token_ids for c, p in zip(configs, prompts)]
    sched = Scheduler(max_active=3, max_batch=batch)
    tickets = [sched.submit(build(c).stream_text(p, batched=True)) for c, p in zip(configs, prompts)]
    together = [drain(t)[-1].token_ids for t in tickets]
    assert together == alone


def steps(n, pause_s=0.0, log=None, name=""):
    for i in range(n):
        time.sleep(pause_s)
        if log is not None:
            log.append((name, threading.current_thread().name))
        yield StepFinished(i, 0.0, 0.0, 0.0, None, 0.0, 0.0)


def test_clock_counts_only_the_runs_own_turns():
    sched = Scheduler(max_active=2)
    clocks = [RunClock(), RunClock()]
    t0 = time.perf_counter()
    tickets = [sched.submit(steps(10, 0.01), clock=c) for c in clocks]
    for t in tickets:
        drain(t)
    wall = time.perf_counter() - t0
    for c in clocks:
        assert 0.1 <= c.used < wall  # its own ten turns, not the other run's


def test_waiting_runs_know_their_place_and_a_full_scheduler_refuses():
    sched = Scheduler(max_active=1, max_waiting=1)
    release = threading.Event()

    def held():
        release.wait(5)
        yield StepFinished(0, 0.0, 0.0, 0.0, None, 0.0, 0.0)

    first = sched.submit(held())
    for _ in range(100):  # the decoding thread takes the first run
        if first.place() is None:
            break
        time.sleep(0.01)
    second = sched.submit(steps(1))
    assert first.place() is None and second.place()[0] == 0 and second.place()[1] > 0
    with pytest.raises(Busy, match="busy"):
        sched.submit(steps(1))
    release.set()
    assert len(drain(first)) == 1 and len(drain(second)) == 1
    assert sched.load()["active"] == 0 and sched.load()["waiting"] == 0


def test_an_error_or_a_visitor_leaving_ends_only_that_run():
    sched = Scheduler(max_active=3)
    closed = []

    def failing():
        yield StepFinished(0, 0.0, 0.0, 0.0, None, 0.0, 0.0)
        raise ValueError("drafter refused these settings")

    def endless():
        try:
            while True:
                yield StepFinished(0, 0.0, 0.0, 0.0, None, 0.0, 0.0)
        finally:
            closed.append(threading.current_thread().name)

    bad, left, good = sched.submit(failing()), sched.submit(endless()), sched.submit(steps(50, 0.001))
    with pytest.raises(ValueError, match="refused"):
        drain(bad)
    for _ in left.batches():  # the visitor reads a batch and leaves
        break
    assert len(drain(good)) == 50
    for _ in range(200):
        if closed:
            break
        time.sleep(0.01)
    assert closed == ["specviz-decode"]  # the abandoned run's generator was closed, on the decoding thread


def test_calls_run_on_the_decoding_thread_between_turns():
    sched, log = Scheduler(max_active=2), []
    ticket = sched.submit(steps(20, 0.002, log, "run"))
    where = sched.call(lambda: threading.current_thread().name)
    drain(ticket)
    assert where == "specviz-decode" and {t for _, t in log} == {"specviz-decode"}
    with pytest.raises(KeyError):
        sched.call(lambda: {}["missing"])
    assert len(sched._call_waits) == 2 and sched.load()["call_p95_s"] >= 0  # their waits are timed (/health)


def test_time_limit_reads_the_run_clock(tiny_target, one_thread):
    """The engine's time limit reads the scheduler's clock: a run whose clock says its time is up ends
    with "time limit" though little wall clock has passed."""
    clock = RunClock()
    clock.used = 5.0
    events = list(Engine(tiny_target, decode).stream([1, 2, 3], Settings(max_new_tokens=10), time_limit_s=1.0,
                                                       clock=clock))
    assert events[-1].stop_reason == "time limit" and events[-1].metrics.tokens == 0
    torch.manual_seed(0)


def test_the_wait_for_a_first_turn_is_measured():
    # /health reports how long visitors waited for the decoding thread: a run queued behind a 0.15 s one
    # waited at least that long
    sched = Scheduler(max_active=1)
    assert sched.load()["first_turn_p50_s"] is None
    first, second = sched.submit(steps(3, 0.05)), sched.submit(steps(1))
    assert len(drain(first)) == 3 and len(drain(second)) == 1
    load = sched.load()
    assert 0 <= load["first_turn_p50_s"] <= load["first_turn_p95_s"] and load["first_turn_p95_s"] >= 0.14
    # its first step took 0.05 s from the start of its first turn; the handler sent it some time later
    assert load["first_step_p95_s"] >= 0.04 and load["pickup_p50_s"] is None
    first.sending()
    first.sending()  # counted once
    assert sched.load()["pickup_p50_s"] >= 0 and len(sched._pickups) == 1


def test_newcomers_have_a_round_of_their_own():
    # a run that arrives while others decode has its first step in a round without them, so its first
    # token does not wait for a whole batch of other runs' steps; then it joins the round
    sched = Scheduler(max_active=8, max_batch=4)
    seen: list[tuple[str, int]] = []

    def run(name, n):
        for i in range(n):
            seen.append((name, sched.rounds))
            time.sleep(0.002)
            yield StepFinished(i, 0.0, 0.0, 0.0, None, 0.0, 0.0)

    old = [sched.submit(run(f"old{i}", 40)) for i in range(3)]
    while len(seen) < 9:  # the three are well under way
        time.sleep(0.001)
    new = sched.submit(run("new", 5))
    for ticket in old + [new]:
        drain(ticket)
    rounds = {}
    for name, r in seen:
        rounds.setdefault(r, set()).add(name)
    first = next(r for name, r in seen if name == "new")
    assert rounds[first] == {"new"}  # its first step: a round of its own
    later = [r for name, r in seen if name == "new"][1:]
    assert any(len(rounds[r]) > 1 for r in later)  # afterwards it shares rounds with the others
    assert sched.load()["round_p50_s"] > 0
