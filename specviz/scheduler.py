"""One decoding thread for every visitor: active runs take turns, one engine step each.

A page serving many visitors cannot give each run its own thread: on a small CPU, torch calls made
from several threads at once fight over the same cores (oneDNN's one-row products stall 15-100x
under that contention; shared/NOTES.md), and runs served one after another make the last visitor
wait for everyone's whole answer. Here one thread owns every forward. Each admitted run's event
stream is advanced up to the end of its next step (StepFinished or RunFinished), then the next run
has its turn (round robin); newly admitted runs have the next round to themselves, so a visitor who
arrives while thirty others decode sees a first token after one round of someone else's steps and their
own first step, not after thirty answers.

A round takes up to `max_batch` runs from the front of the round: each advances to its verification
forward (a batched engine stream yields a TargetForward there instead of running it), those forwards
run as one (lm.forward_together: the weights' products over every run's rows at once, attention per
run over its own cache), and each run finishes its step with its own part of the result. On two cores
a few dozen rows cost little more than one, so the total speed grows with the number of visitors
(bench_serving.py).

A run's events are exactly those it produces alone (each engine has its own caches and its own
seeded generator; the models are only read; a shared forward's rows agree with a lone one's to float
rounding), and the time limit counts the run's own turns
(RunClock), not its wait. Beyond `max_active` runs, arrivals wait in order (place and expected wait
on `Ticket.place()`); beyond `max_waiting`, they are refused at once with `Busy`. Short jobs that
must not run beside a forward (a step-by-step click) go through `call`, between two turns.

The engine knows nothing of this: a run is any iterator of events.
"""
from __future__ import annotations

import queue
import statistics
import threading
import time
from collections import deque
from typing import Callable, Iterator

from .events import Prefilled, RunFinished, StepFinished


class Busy(RuntimeError):
    """Every decoding place and every waiting place is taken."""


class RunClock:
    """The seconds a run has had the decoding thread: its time limit counts these, not its wait."""

    def __init__(self):
        self.used = 0.0

    def __call__(self) -> float:
        return self.used


DONE = object()  # put in a box after a run's last event


def drain(box: queue.Queue, tick_s: float | None = None) -> Iterator[list]:
    """What a producer puts in `box`, in batches as it piles up (an empty batch every `tick_s` seconds in
    which nothing came), until DONE; an exception put there is raised here."""
    while True:
        try:
            batch = [box.get(timeout=tick_s)]
        except queue.Empty:
            yield []
            continue
        while not box.empty():
            batch.append(box.get_nowait())
        for item in batch:
            if isinstance(item, BaseException):
                raise item
        events = [item for item in batch if item is not DONE]
        if events:
            yield events
        if len(events) < len(batch):
            return


def end_of_step(item: object) -> bool:
    """An engine run's turn: one decoding step, or one chunk of a long prompt (Prefilled)."""
    return isinstance(item, (StepFinished, Prefilled))


class Ticket:
    """One submitted run, seen from the visitor's side: `batches()` yields its events as they pile up;
    `place()` says how many runs are ahead while it waits; `close()` (or leaving the loop) drops it."""

    def __init__(self, scheduler: "Scheduler", stream: Iterator, clock: RunClock | None,
                 ends_turn: Callable[[object], bool]):
        self.scheduler, self.stream, self.ends_turn = scheduler, stream, ends_turn
        self.clock = clock if clock is not None else RunClock()
        self.box: queue.Queue = queue.Queue()
        self.closed = False
        self.submitted = time.monotonic()
        self.turned_at: float | None = None  # when its first turn began (None: still waiting for it)
        self.stepped_at: float | None = None  # when its first step's events were handed over
        self.picked = False

    def place(self) -> tuple[int, float] | None:
        """(runs ahead of this one, expected seconds until it starts) while it waits; None once started."""
        return self.scheduler.place(self)

    def sending(self) -> None:
        """The visitor's handler is sending an update with the run's first step (timed for /health)."""
        if self.stepped_at is not None and not self.picked:
            self.picked = True
            self.scheduler._pickups.append(time.monotonic() - self.stepped_at)

    def batches(self, tick_s: float | None = None) -> Iterator[list]:
        """The run's events in batches as they come (an empty batch every `tick_s` s in which none came)."""
        try:
            yield from drain(self.box, tick_s)
        finally:
            self.close()

    def close(self) -> None:
        """The visitor left (Stop, a closed tab): the run's stop signal is set and the scheduler drops it
        at its next turn (an engine asked to stop ends at its next forward)."""
        self.closed = True
        stop = getattr(self.stream, "stop", None)
        if stop is not None:
            stop.set()
        self.scheduler.wake()


class Scheduler:
    def __init__(self, max_active: int = 32, max_waiting: int = 64, max_batch: int = 1, name: str = "specviz-decode"):
        # max_batch: runs per round; above 1, the verification forwards of a round's batched streams run as one
        self.max_active, self.max_waiting, self.max_batch, self.name = max_active, max_waiting, max(1, max_batch), name
        self._cond = threading.Condition()
        self._active: deque[Ticket] = deque()
        self._waiting: deque[Ticket] = deque()
        self._calls: deque = deque()
        self._durations: deque[float] = deque(maxlen=32)  # wall seconds of recent runs, for expected waits
        # where a visitor's wait for a first token goes (for /health): submission -> first turn -> first step's
        # events in the box -> the handler sending them
        self._first_turns: deque[float] = deque(maxlen=256)
        self._first_steps: deque[float] = deque(maxlen=256)
        self._pickups: deque[float] = deque(maxlen=256)
        self._call_waits: deque[float] = deque(maxlen=256)  # a call's wait for the gap between two turns
        self._round_times: deque[float] = deque(maxlen=4096)  # wall seconds of recent rounds
        self._thread: threading.Thread | None = None
        self._turning: list[Ticket] = []  # the runs having their turn (out of the round meanwhile)
        self.rounds = self.forwards_shared = 0

    # -------------------------------------------------------------- the visitors' side

    def submit(self, stream: Iterator, clock: RunClock | None = None,
               ends_turn: Callable[[object], bool] = end_of_step) -> Ticket:
        """Queue a run (its events come from `stream`; `clock`, if the engine's time limit reads one,
        is advanced by this run's turns; a turn ends after an item `ends_turn` says so, by default an
        engine step's StepFinished). Raises Busy when every place is taken."""
        ticket = Ticket(self, stream, clock, ends_turn)
        with self._cond:
            if self._decoding() >= self.max_active and len(self._waiting) >= self.max_waiting:
                raise Busy(f"the server is busy: {self._decoding()} runs decoding and {len(self._waiting)} "
                           "waiting; try again in a minute")
            self._waiting.append(ticket)
            self._ensure_thread()
            self._cond.notify()
        return ticket

    def call(self, fn: Callable[[], object]) -> object:
        """fn() on the decoding thread, between two turns (so it never runs beside a forward); its result,
        or its exception raised here."""
        if threading.current_thread() is self._thread:
            return fn()
        done, out = threading.Event(), {}
        asked = time.monotonic()
        with self._cond:
            self._calls.append((fn, done, out))
            self._ensure_thread()
            self._cond.notify()
        done.wait()
        self._call_waits.append(time.monotonic() - asked)
        if "error" in out:
            raise out["error"]
        return out.get("value")

    def place(self, ticket: Ticket) -> tuple[int, float] | None:
        with self._cond:
            if ticket not in self._waiting:
                return None
            ahead = self._waiting.index(ticket)
            typical = statistics.median(self._durations) if self._durations else 10.0
            # a place opens when an active run ends: about one run's duration per max_active runs ahead
            return ahead, typical * (ahead // max(1, self.max_active) + 1)

    def load(self) -> dict:
        """How busy the decoding thread is (for /health and the status line)."""
        with self._cond:
            out = dict(active=self._decoding(), waiting=len(self._waiting), max_active=self.max_active,
                       max_waiting=self.max_waiting, max_batch=self.max_batch, rounds=self.rounds,
                       shared_forwards=self.forwards_shared)
            for name, seconds in (("call", self._call_waits), ("first_turn", self._first_turns),
                                  ("first_step", self._first_steps), ("pickup", self._pickups),
                                  ("round", self._round_times)):
                ordered = sorted(seconds)
                for q in (50, 95):
                    out[f"{name}_p{q}_s"] = (round(ordered[min(len(ordered) - 1, q * len(ordered) // 100)], 2)
                                            if ordered else None)
            return out

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # -------------------------------------------------------------- the decoding thread

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, daemon=True, name=self.name)
            self._thread.start()

    def _next(self) -> tuple[list, list[Ticket]]:
        """Wait for work: (calls to make, the runs of this round: up to max_batch from the front of the
        round when forwards are shared, else one)."""
        with self._cond:
            while True:
                while self._waiting and self._decoding() < self.max_active:
                    ticket = self._waiting.popleft()
                    # a newcomer's first turn comes next (its prompt and first tokens), then it joins the round:
                    # the wait for a first token is one turn, not one round of everyone's steps
                    self._active.appendleft(ticket)
                calls = list(self._calls)
                self._calls.clear()
                take = min(len(self._active), self.max_batch)
                fresh = 0  # newcomers wait at the front of the round
                while fresh < take and self._active[fresh].turned_at is None:
                    fresh += 1
                # newcomers have a round of their own: their first step does not wait for fifteen others' steps
                turn = [self._active.popleft() for _ in range(fresh or take)]
                if calls or turn:
                    now = time.monotonic()
                    for ticket in turn:
                        if ticket.turned_at is None:  # how long a visitor waited for the decoding thread (health)
                            ticket.turned_at = now
                            self._first_turns.append(now - ticket.submitted)
                    self._turning = turn
                    return calls, turn
                self._cond.wait()

    def _decoding(self) -> int:
        return len(self._active) + len(self._turning)

    def _loop(self) -> None:
        while True:
            calls, tickets = self._next()
            for fn, done, out in calls:
                try:
                    out["value"] = fn()
                except BaseException as err:  # handed to the caller
                    out["error"] = err
                done.set()
            if not tickets:
                continue
            began = time.monotonic()
            try:
                going = self._round(tickets)
            except BaseException as err:  # never let the decoding thread die: this round's runs end with it
                for ticket in tickets:
                    self._fail(ticket, err)
                going = []
            with self._cond:
                self._round_times.append(time.monotonic() - began)
                self._turning = []
                for ticket in tickets:
                    if ticket in going:
                        self._active.append(ticket)  # to the back of the round
                    else:
                        self._durations.append(time.monotonic() - ticket.submitted)

    def _round(self, tickets: list[Ticket]) -> list[Ticket]:
        """One turn each: every run advances to its verification forward (TargetForward, from a batched
        stream), those forwards run as one (lm.forward_together), and every run finishes its step. The runs
        still going afterwards."""
        from .engine import TargetForward
        from .lm import forward_together

        self.rounds += 1
        asked, going = [], []
        for ticket in tickets:
            state = self._advance(ticket)
            if isinstance(state, TargetForward):
                asked.append((ticket, state))
            elif state:
                going.append(ticket)
        if asked:
            t0 = time.perf_counter()
            try:
                answers = forward_together([(c.lm, c.committed, c.tokens, c.parents, c.hidden_layers)
                                            for _, c in asked])
            except BaseException as err:  # every run of the forward ends with the error; the thread goes on
                for ticket, _ in asked:
                    self._fail(ticket, err)
                return going
            share = (time.perf_counter() - t0) / len(asked)
            for (ticket, _), answer in zip(asked, answers):
                if isinstance(answer, BaseException):  # this run's own forward failed; the others go on
                    self._fail(ticket, answer)
                    continue
                ticket.clock.used += share
                root, nodes = answer
                if self._advance(ticket, (root, nodes, share)):
                    going.append(ticket)
        self.forwards_shared += len(asked) > 1
        return going

    def _advance(self, ticket: Ticket, answer: tuple | None = None):
        """Run one stream on: to the end of its turn (True), to its end (False), or to a verification
        forward it asks for (the TargetForward; `answer` is then sent back to it on the next call)."""
        from .engine import TargetForward

        t0 = time.perf_counter()
        stream = ticket.stream
        try:
            if ticket.closed:  # nobody is reading: close the engine's generator (it frees its caches)
                getattr(stream, "close", lambda: None)()
                ticket.box.put(DONE)
                return False
            item = stream.send(answer) if answer is not None else next(stream)
            while True:
                if isinstance(item, TargetForward):
                    return item
                ticket.box.put(item)
                if ticket.stepped_at is None and isinstance(item, StepFinished) and ticket.turned_at is not None:
                    ticket.stepped_at = time.monotonic()
                    self._first_steps.append(ticket.stepped_at - ticket.turned_at)
                if isinstance(item, RunFinished):
                    break
                if ticket.ends_turn(item):
                    return True
                item = next(stream)
        except StopIteration:
            pass
        except BaseException as err:  # the visitor's handler raises it (one message, the others go on)
            self._fail(ticket, err)
            return False
        finally:
            ticket.clock.used += time.perf_counter() - t0
        getattr(stream, "close", lambda: None)()  # the stream's own clean-up, now, on this thread
        ticket.box.put(DONE)
        return False

    @staticmethod
    def _fail(ticket: Ticket, err: BaseException) -> None:
        getattr(ticket.stream, "close", lambda: None)()
        ticket.box.put(err)
        ticket.box.put(DONE)


_SHARED: Scheduler | None = None
_SHARED_LOCK = threading.Lock()


def shared(max_active: int = 32, max_waiting: int = 64, max_batch: int = 1) -> Scheduler:
    """This process's scheduler (created on first use with these bounds)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = Scheduler(max_active, max_waiting, max_batch)
        return _SHARED
