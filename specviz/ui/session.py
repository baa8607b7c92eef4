"""State the page keeps between clicks: per visitor (Session, in a gr.State) and per process (the
measured autoregressive references, shared by every visitor, so "measure against AR" runs once per
prompt and settings)."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterator

from .. import views
from ..events import Event
from ..metrics import Metrics
from ..policy import POLICIES, Choice, Policy, PolicyInput
from ..views.drafter_view import RunRecord

MAX_HISTORY = 500  # run records kept per session for the drafter panel and the policy
SESSION_TTL_S = 6 * 3600  # a session's runs are forgotten this long after its last use
AR_CACHE_SIZE = 64
POLICY = "user"  # the registered drafter policy the page chooses through (specviz/policy.py)


@dataclass
class Session:
    events: list = field(default_factory=list)  # the run on display: live, replayed or imported
    history: list[RunRecord] = field(default_factory=list)
    stepper: Iterator[Event] | None = None  # a live run advanced one step per click
    choice: Choice | None = None  # which drafter the run on display used, and why
    asked: PolicyInput | None = None  # what the policy was given for the run on display
    policy: Policy | None = None  # made on first use, so that a learning policy learns per visitor

    def drafter_policy(self) -> Policy:
        if self.policy is None:
            self.policy = POLICIES.get(POLICY).make()
        return self.policy

    def finish(self, events: list[Event]) -> None:
        """A run ended: remember it for the drafter panel and tell the policy how it went."""
        rec = views.record(events)
        if rec is None:
            return
        self.history = self.history[-(MAX_HISTORY - 1):] + [rec]
        if self.asked is not None and self.choice is not None and views.run_finished(events).stop_reason != "cancelled":
            self.drafter_policy().learn(self.asked, self.choice, rec.metrics)


def current(session) -> Session:
    """The visitor's session (a fresh one when gradio hands over nothing usable)."""
    return session if isinstance(session, Session) else Session()


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
        _AR_CACHE[key] = end.metrics
        _AR_CACHE.move_to_end(key)
        while len(_AR_CACHE) > AR_CACHE_SIZE:
            _AR_CACHE.popitem(last=False)
