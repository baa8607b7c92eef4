"""The typed events the engine yields. Every view (app, CLI, bench, trace) is a function of them.

A run is: RunStarted, then per step StepStarted, Drafted, Verified, Emitted, StepFinished, and
finally RunFinished. Events are plain dataclasses and serialize to JSON losslessly.
"""
from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields

from .metrics import Metrics


@dataclass
class Node:
    """One drafted token. Verification fields stay None until the Verified event."""

    id: int
    parent: int  # -1: the last committed token
    depth: int
    token: int
    text: str
    q: float  # drafter probability of this token (the q it was drawn from)
    q_entropy: float  # drafter entropy (nats, temperature 1) where it was drawn
    p: float | None = None  # target probability of the token at that position (warped as q)
    accept_prob: float | None = None  # min(1, p/q) when it was tried (after earlier siblings' rejections)
    status: str | None = None  # accepted / rejected / unvisited
    beta: float | None = None  # sum_x min(p, q) at its parent
    source: str | None = None  # a merged tree: which drafter proposed it ("both" when both did)


@dataclass
class Token:
    """One emitted token and why it came."""

    id: int
    text: str
    kind: str  # accepted / resampled / bonus / target
    p: float  # target probability of it at its position (before any residual)
    p_entropy: float  # target entropy there (nats, temperature 1)
    q: float | None = None  # for accepted drafts
    accept_prob: float | None = None
    node: int | None = None  # the draft node it came from


@dataclass
class RunStarted:
    target: str
    drafter: str
    rule: str
    settings: dict
    prompt: str
    prompt_tokens: int
    config: dict | None = None  # the whole RunConfig (RunConfig.from_dict rebuilds it): how to reproduce the run
    policy: dict | None = None  # an `auto` run: the choosing policy, its arms and whether it re-decides online
    image: dict | None = None  # a vision-language run: its image's hash and size (vlm.image_record), never pixels


@dataclass
class StepStarted:
    step: int
    arm: str | None = None  # an `auto` run: the arm that drafts this step ("none": plain decoding)
    choice: dict | None = None  # an `auto` run, when it (re)decided before this step: probabilities and why


@dataclass
class Drafted:
    step: int
    nodes: list[Node]
    draw: str  # how siblings were drawn: iid / without_replacement
    stop: dict | None = None  # why drafting ended: rule, depth, reason and the rule's numbers
    sources: list[str] | None = None  # a merged tree: its drafters in order (what Node.source names)


@dataclass
class Verified:
    step: int
    nodes: list[Node]
    path: list[int]
    kind: str  # how the final token came: resampled / bonus / target


@dataclass
class Emitted:
    step: int
    tokens: list[Token]


@dataclass
class StepFinished:
    step: int
    draft_s: float
    verify_s: float
    overhead_s: float
    metrics: Metrics
    # wall clock since the run started, when drafting and verification began (a timeline's bars;
    # under parallel drafting/verification the two overlap)
    draft_start_s: float = 0.0
    verify_start_s: float = 0.0


@dataclass
class RunFinished:
    text: str
    token_ids: list[int]
    stop_reason: str  # eos / length / cancelled
    metrics: Metrics


@dataclass
class Prefilled:
    """Progress while a long prompt is read in chunks before the first step: `done` of its `total` tokens
    are in the target's cache. Progress only: the first step's metrics count the reading, and traces leave
    these events out (trace.dumps)."""
    done: int
    total: int


Event = RunStarted | Prefilled | StepStarted | Drafted | Verified | Emitted | StepFinished | RunFinished
EVENT_TYPES = {cls.__name__: cls for cls in (RunStarted, StepStarted, Drafted, Verified, Emitted, StepFinished, RunFinished)}
_NESTED = {"nodes": (Node, list), "tokens": (Token, list), "metrics": (Metrics, dict)}


class Recording(list):
    """A run's events as recorded in a trace (specviz.trace.loads): nothing more will come.

    Without a RunFinished the recorded run ended early; views say so rather than "running"."""

    @property
    def complete(self) -> bool:
        return any(isinstance(ev, RunFinished) for ev in reversed(self))


def to_dict(event: Event) -> dict:
    return {"event": type(event).__name__, **asdict(event)}


def from_dict(data: dict) -> Event:
    """Rebuild an event from trusted data (its own to_dict). Untrusted input goes through
    specviz.trace.loads / parse_event, which check every field; this checks only the shape."""
    if not isinstance(data, dict) or data.get("event") not in EVENT_TYPES:
        raise ValueError(f"not a specviz event: {str(data)[:80]!r}")
    cls = EVENT_TYPES[data["event"]]
    kwargs = {}
    for f in fields(cls):
        if f.name not in data and f.default is not MISSING:
            continue  # added in a later trace version
        if f.name not in data:
            raise ValueError(f"{cls.__name__} event lacks field '{f.name}'")
        value = data[f.name]
        nested, shape = _NESTED.get(f.name, (None, None))
        if nested is not None:
            if not isinstance(value, shape):
                raise ValueError(f"{cls.__name__}.{f.name} must be a{' list' if shape is list else 'n object'}")
            value = [_build(nested, v) for v in value] if shape is list else _build(nested, value)
        kwargs[f.name] = value
    return cls(**kwargs)


def _build(cls, value):
    if not isinstance(value, dict):
        raise ValueError(f"{cls.__name__} must be an object")
    names = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in value.items() if k in names})
    except TypeError as err:
        raise ValueError(f"bad {cls.__name__}: {err}") from None
