"""State the page keeps between clicks: per visitor (Session, in a gr.State) and per process (the
measured autoregressive references, shared by every visitor, so "measure against AR" runs once per
prompt and settings)."""
from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterator

from .. import memory, views
from ..events import Event
from ..limits import budgets
from ..metrics import Metrics
from ..policy import POLICIES, Choice, Policy, PolicyInput
from ..views.acceptance_map import category_of
from ..views.drafter_view import RunRecord
from . import measured

MAX_HISTORY = 500  # run records kept per session for the drafter panel and the policy
SESSION_TTL_S = 6 * 3600  # a session's runs are forgotten this long after its last use
AR_CACHE_SIZE = 64
POLICY = "user"  # the registered drafter policy the page chooses through (specviz/policy.py)


@dataclass(eq=False)  # by identity: the idle reaper keeps a weak set of sessions
class Session:
    events: list = field(default_factory=list)  # the run on display: live, replayed or imported
    history: list[RunRecord] = field(default_factory=list)
    stepper: Iterator[Event] | None = None  # a live run advanced one step per click
    choice: Choice | None = None  # which drafter the run on display used, and why
    asked: PolicyInput | None = None  # what the policy was given for the run on display
    policy: Policy | None = None  # made on first use, so that a learning policy learns per visitor
    live: object = None  # the stop signal (streaming.Stop) of the run this session is decoding, if any
    used: float = field(default_factory=time.monotonic)  # last click, for releasing an idle step-by-step run
    released: str = ""  # why a step-by-step run's engine was let go ("" while it holds one)
    show_rejected: bool = False  # the text shows rejected drafts inline (the visitor's toggle)
    pending: tuple | None = None  # (path, views) of an uploaded trace checked and not yet shown
    acceptance: list = field(default_factory=list)  # (prompt category, drafter, Metrics) per run, for the acceptance map
    image: object = None  # the visitor's image (a PIL image), read by a vision-language target only

    def touch(self) -> None:
        self.used = time.monotonic()

    def release(self, why: str) -> None:
        """Let go of the live run's engine and caches (Stop, tab closed, idle); the events stay on display."""
        stepper, self.stepper = self.stepper, None
        if self.live is not None:
            self.live.set(why)
        if stepper is not None:
            self.released = why
            getattr(stepper, "close", lambda: None)()

    def release_stepper(self, why: str) -> None:
        """Let go of an idle step-by-step run only: a run the visitor started since (its own stop signal in
        `live`) goes on (the reaper checks, then releases; a new run may start in between)."""
        stepper, self.stepper = self.stepper, None
        if stepper is not None:
            self.released = why
            getattr(stepper, "close", lambda: None)()

    def drafter_policy(self) -> Policy:
        if self.policy is None:
            self.policy = POLICIES.get(POLICY).make()
        return self.policy

    def finish(self, events: list[Event]) -> None:
        """A run ended: remember it for the drafter panel and tell the policy how it went."""
        measured.record(events)  # this machine's forward costs and drafter speeds, for every visitor
        rec = views.record(events)
        if rec is None:
            return
        self.history = self.history[-(MAX_HISTORY - 1):] + [rec]
        self.acceptance = self.acceptance[-(MAX_HISTORY - 1):] + [
            (category_of(str(views.run_started(events).prompt)), rec.drafter, rec.metrics)]
        if self.asked is not None and self.choice is not None and views.run_finished(events).stop_reason != "cancelled":
            self.drafter_policy().learn(self.asked, self.choice, rec.metrics)


def current(session) -> Session:
    """The visitor's session (a fresh one when gradio hands over nothing usable), marked as used."""
    session = session if isinstance(session, Session) else Session()
    session.touch()
    _SESSIONS.add(session)
    return session


# ---------------------------------------------------------------- idle step-by-step runs, per process

_SESSIONS: "weakref.WeakSet[Session]" = weakref.WeakSet()
_REAPER_LOCK = threading.Lock()
_reaper: threading.Thread | None = None


def release_idle(now: float | None = None, idle_s: float | None = None) -> int:
    """Release the engine of every step-by-step run idle longer than the budget; how many were released."""
    now = time.monotonic() if now is None else now
    idle_s = budgets().step_idle_s if idle_s is None else idle_s
    n = 0
    for session in list(_SESSIONS):
        if session.stepper is not None and now - session.used > idle_s:
            session.release_stepper(f"idle for more than {idle_s:g} s")
            n += 1
    return n


def start_reaper(every_s: float = 10.0) -> None:
    """A daemon thread that runs release_idle every few seconds (once per process)."""
    global _reaper
    with _REAPER_LOCK:
        if _reaper is not None and _reaper.is_alive():
            return

        def loop():
            while True:
                time.sleep(min(every_s, max(1.0, budgets().step_idle_s / 4)))
                try:
                    release_idle()
                    memory.trim_if_held()  # freed memory back to the system (memory.py)
                except Exception:  # never let the reaper die
                    pass

        _reaper = threading.Thread(target=loop, daemon=True, name="specviz-idle-reaper")
        _reaper.start()


def closed(session) -> None:
    """gr.State's delete callback: the tab closed (or the state expired); stop and release its run."""
    if isinstance(session, Session):
        session.release("tab closed")


# ---------------------------------------------------------------- AR references, per process

_AR_CACHE: OrderedDict[tuple, Metrics] = OrderedDict()
_AR_LOCK = threading.Lock()


def reference_key(events: list[Event]) -> tuple | None:
    start = views.run_started(events)
    if start is None or not isinstance(start.settings, dict):
        return None
    try:
        settings = tuple(sorted((str(k), repr(v)) for k, v in start.settings.items()))
        return str(start.target), str(start.prompt), settings
    except TypeError:
        return None


def ar_reference(events: list[Event]) -> Metrics | None:
    key = reference_key(events)
    with _AR_LOCK:
        return _AR_CACHE.get(key) if key is not None else None


def remember_ar(events: list[Event]) -> None:
    end, key = views.run_finished(events), reference_key(events)
    if end is None or key is None or end.stop_reason == "cancelled":
        return
    with _AR_LOCK:
        _AR_CACHE[key] = views.decode_metrics(events) or end.metrics  # decoding, the prompt's prefill apart
        _AR_CACHE.move_to_end(key)
        while len(_AR_CACHE) > AR_CACHE_SIZE:
            _AR_CACHE.popitem(last=False)


def live_runs() -> tuple[int, int]:
    """(sessions decoding right now, step-by-step runs holding an engine), for the health line."""
    sessions = list(_SESSIONS)
    live = sum(1 for s in sessions if s.live is not None and not s.live.is_set())
    return live, sum(1 for s in sessions if s.stepper is not None)

