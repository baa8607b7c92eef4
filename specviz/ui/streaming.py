"""Running the engine for the page: every run's events through the process's one decoding thread
(scheduler.py: runs take turns, one step each), and how often to redraw."""
from __future__ import annotations

import importlib.util
import os
import queue
import threading
import time
from typing import Callable, Iterator

from .. import scheduler
from ..api import TextEngine
from ..events import Drafted, Event
from ..limits import budgets

UPDATES_EVERY_S = 0.2  # streamed updates (status, text, metrics table): at most 5 a second
TICK_S = 1.0  # while nothing comes (the prompt is being read), the status line's clock still moves
RESPONSIVE_S = 0.75  # a streaming handler yields at least this often while events come (see callbacks.streamed)
# The figures (tree, entropy, timeline, lengths, metrics charts) are drawn once, after the run, and on
# demand (the step explorer): a streamed update is only the light views.


class Stop:
    """One run's stop signal, asked by the engine before every target forward: set by Stop, a closed
    tab (the streaming generator is closed), an idle step-by-step run, or a draft tree larger than
    this deployment's budget. `why` says which, for the status line."""

    def __init__(self):
        self._flag = threading.Event()
        self.why = ""

    def set(self, why: str = "cancelled") -> None:
        if not self._flag.is_set():
            self.why = why
        self._flag.set()

    def is_set(self) -> bool:
        return self._flag.is_set()

    __call__ = is_set


def start_stream(engine: TextEngine, prompt: str, stop: Stop | None = None, batched: bool = True,
                 image=None) -> Iterator[Event]:
    """Start the engine's event stream under this deployment's budgets (wall clock per run; draft
    nodes per step); input errors (prompt vs context, settings) surface here, before any output."""
    limits = budgets()
    stop = stop if stop is not None else Stop()
    clock = scheduler.RunClock() if scheduling() else None  # the time limit counts the run's own turns
    shared = dict(cancel=stop, time_limit_s=limits.run_seconds, clock=clock,
                  batched=batched and clock is not None)  # its forwards shared with other runs
    if image is not None:  # a vision-language target (vlm.VisionEngine): the image goes into its prompt
        if not hasattr(engine, "stream_image"):
            raise ValueError(f"an image needs a vision-language target; {engine.config.target} reads text only")
        stream = engine.stream_image(prompt, image, **shared)
    else:
        stream = engine.stream_text(prompt, **shared)
    # here, on the visitor's thread: the first event is checks and the caches' allocation (big buffers are
    # mmapped, memory.configure_for_server), no forward; waiting for a gap between two rounds of the decoding
    # thread for it was a second or two of a first token's wait with thirty visitors. A bad prompt still
    # raises here, before any output.
    first = next(stream)

    def chained():
        try:
            yield first
            answer = None
            while True:  # by hand, not a for loop: a batched stream is sent its forwards' answers
                try:
                    ev = stream.send(answer) if answer is not None else next(stream)
                except StopIteration:
                    return
                if isinstance(ev, Drafted) and len(ev.nodes) > limits.tree_nodes:
                    stop.set(f"tree size: {len(ev.nodes)} draft nodes in one step, "
                             f"the limit here is {limits.tree_nodes}")  # ends before the target forward
                answer = yield ev
        finally:
            stop.set()  # a closed stream: the engine, if still mid-step, ends at its next forward
            stream.close()

    return Stream(chained(), stop, clock)


class Stream:
    """An event stream with its stop signal (`stop`) and the clock its time limit reads (`clock`, None:
    wall clock); closing it stops the run."""

    def __init__(self, events: Iterator[Event], stop: Stop, clock: scheduler.RunClock | None = None):
        self.events, self.stop, self.clock = events, stop, clock

    def __iter__(self):
        return self

    def __next__(self) -> Event:
        return next(self.events)

    def send(self, value) -> Event:
        return self.events.send(value)

    def close(self) -> None:
        self.stop.set()
        try:
            self.events.close()
        except ValueError:  # being iterated by the engine thread right now: it ends at its next forward
            pass


# a ZeroGPU Space (the `spaces` package, as launch.gpu reads it): decoding functions borrow the GPU there
ZERO_GPU = importlib.util.find_spec("spaces") is not None


def scheduling() -> bool:
    """Whether runs go through the shared decoding thread: everywhere but a ZeroGPU Space (where each
    decoding function borrows the GPU in its own process) or with SPECVIZ_SCHEDULER=0 (one thread per
    run, the way to measure what the scheduler changes)."""
    return not ZERO_GPU and os.environ.get("SPECVIZ_SCHEDULER", "1") != "0"


def decoder() -> scheduler.Scheduler:
    b = budgets()
    return scheduler.shared(b.active_runs, b.active_runs, b.batch_runs)


def decode_slots() -> int:
    """Decoding requests gradio lets in at once: every one the decoding thread can take in turns (more
    wait in gradio's queue, their place shown), or one where each run decodes in a thread of its own."""
    return budgets().active_runs if scheduling() else 1


def on_decoder(fn: Callable[[], object]) -> object:
    """fn() where forwards run: between two turns of the decoding thread (a step-by-step click)."""
    return decoder().call(fn) if scheduling() else fn()


def waiting(ticket) -> str:
    """The status line of a run waiting for a decoding place: its place and expected wait."""
    place = ticket.place() if ticket is not None else None
    if place is None:
        return ""
    ahead, wait = place
    return f"⏳ waiting for a decoding place: {ahead} run{'s' if ahead != 1 else ''} ahead, about {wait:.0f} s"


def in_background(stream: Iterator[Event], tick_s: float | None = None,
                  on_ticket: Callable[[object], None] | None = None,
                  ends_turn: Callable[[object], bool] = scheduler.end_of_step) -> Iterator[list[Event]]:
    """The events of a stream as they pile up, in batches (an empty batch every `tick_s` seconds in which
    none came, if given), decoded on the shared decoding thread (`on_ticket` gets its Ticket, whose
    place() says how many runs are ahead while it waits; a turn ends after an item `ends_turn` says
    so), or where that is off, in a thread of its own.

    Decoding then never waits for the page: while a batch is rendered and sent, the engine goes on.
    Closing this generator (Stop, or the visitor leaving) stops the engine after its current event.
    """
    if scheduling():
        try:
            ticket = decoder().submit(stream, getattr(stream, "clock", None), ends_turn)
        except scheduler.Busy:
            getattr(stream, "close", lambda: None)()
            raise
        if on_ticket is not None:
            on_ticket(ticket)
        yield from ticket.batches(tick_s)
        return
    box: queue.Queue = queue.Queue()
    stop = getattr(stream, "stop", None) or Stop()

    def produce():
        try:
            for ev in stream:  # after a stop the engine ends by itself at its next forward (RunFinished)
                box.put(ev)
        except BaseException as err:  # handed to the consumer, which raises it
            box.put(err)
        finally:
            getattr(stream, "close", lambda: None)()
            box.put(scheduler.DONE)

    threading.Thread(target=produce, daemon=True, name="specviz-engine").start()
    try:
        yield from scheduler.drain(box, tick_s)
    finally:
        stop.set()


def update_interval() -> float:
    """Seconds between one visitor's streamed updates: UPDATES_EVERY_S, stretched when many runs decode at
    once (rendering a view costs the server's CPU too: thirty visitors at 5 updates a second would spend
    two cores on drawing), so the whole server renders about 20 updates a second at most."""
    if not scheduling():
        return UPDATES_EVERY_S
    return UPDATES_EVERY_S * max(1.0, decoder().load()["active"] / 4)


class Throttle:
    """Says when enough time has passed since the last streamed update (UPDATES_EVERY_S, or a function
    giving the interval now)."""

    def __init__(self, every_s: float | Callable[[], float] = UPDATES_EVERY_S):
        self.every_s, self.last = every_s, 0.0

    def due(self) -> bool:
        now = time.perf_counter()
        every = self.every_s() if callable(self.every_s) else self.every_s
        if now - self.last >= every:
            self.last = now
            return True
        return False
