"""Running the engine for the page: the event stream in its own thread, and how often to redraw."""
from __future__ import annotations

import queue
import threading
import time
from typing import Iterator

from ..api import TextEngine
from ..events import Event

TEXT_EVERY_S = 0.1  # streamed text refresh, at most this often
FIGURES_EVERY_S = 0.5  # figure refresh, at most this often (and always at the end)


def start_stream(engine: TextEngine, prompt: str) -> Iterator[Event]:
    """Start the engine's event stream; input errors (prompt vs context, settings) surface here,
    before any output."""
    stream = engine.stream_text(prompt)
    first = next(stream)

    def chained():
        yield first
        yield from stream

    return chained()


_DONE = object()


def in_background(stream: Iterator[Event]) -> Iterator[list[Event]]:
    """Run an event stream in its own thread and yield the events as they pile up, in batches.

    Decoding then never waits for the page: while a batch is rendered and sent, the engine goes on.
    Closing this generator (Stop, or the visitor leaving) stops the engine after its current event.
    """
    box: queue.Queue = queue.Queue()
    stop = threading.Event()

    def produce():
        try:
            for ev in stream:
                box.put(ev)
                if stop.is_set():
                    break
        except BaseException as err:  # handed to the consumer, which raises it
            box.put(err)
        finally:
            getattr(stream, "close", lambda: None)()
            box.put(_DONE)

    threading.Thread(target=produce, daemon=True, name="specviz-engine").start()
    try:
        while True:
            batch = [box.get()]
            while not box.empty():
                batch.append(box.get_nowait())
            for item in batch:
                if isinstance(item, BaseException):
                    raise item
            events = [item for item in batch if item is not _DONE]
            if events:
                yield events
            if len(events) < len(batch):
                return
    finally:
        stop.set()


class Throttle:
    """Says when enough time has passed since the last refresh of the text and of the figures."""

    def __init__(self):
        self.text = self.figures = 0.0

    def due(self) -> str | None:
        now = time.perf_counter()
        if now - self.figures >= FIGURES_EVERY_S:
            self.figures = self.text = now
            return "figures"
        if now - self.text >= TEXT_EVERY_S:
            self.text = now
            return "text"
        return None
