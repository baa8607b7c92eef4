"""Versioned JSON traces: a whole run's events, saved atomically, loaded back with validation.

A trace is untrusted input (the public app imports uploads), so `loads` checks it in order of cost
and refuses anything no engine run could have written with a one-line ValueError that names the
event, the step and the field:

1. size in bytes, UTF-8, and JSON nesting depth (a scan of the raw text, before any parsing);
2. JSON syntax, the header (format, version), and counts: events, nodes per step, nodes, tokens;
3. every field of every event: its type (a bool is no number), its range, finite numbers only,
   strings without lone surrogates, no unknown fields;
4. the run's structure: RunStarted first, steps in increasing order each made of StepStarted,
   Drafted, Verified, Emitted, StepFinished; node ids, parent links and depths; Drafted and
   Verified naming the same nodes; the verified path a chain of accepted nodes from the root; the
   emitted tokens that path's tokens plus the target's own; only the last step may be cut short
   (a cancelled run); RunFinished, if any, last.

A trace without RunFinished (a run that ended early) loads, as an incomplete `Recording`.
Format versions: 1, and 2 = 1 + RunStarted.config (the run's description) + Drafted.stop (why
drafting ended); both optional, so version 1 traces read unchanged. An `auto` run's RunStarted.policy,
StepStarted.arm and StepStarted.choice (which drafter drafted each step, and why) are optional fields
of version 2: traces without them read unchanged; so is a vision-language run's RunStarted.image (the
image's hash and size: the trace replays without the pixels).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import types
import typing
from pathlib import Path

from .atomic import atomic_write_text  # noqa: F401  (re-exported: callers use trace.atomic_write_text)

import numpy as np

from .events import (EVENT_TYPES, Drafted, Emitted, Event, Node, Prefilled, Recording, RunFinished, RunStarted, StepFinished,
                     StepStarted, Token, Verified, to_dict)
from .metrics import Metrics

FORMAT = "specviz-trace"
VERSION = 2  # what `dumps` writes
READABLE = (1, 2)  # what `loads` reads

# Limits, defined once (the app imports them). This engine's runs stay within them: at most 4096
# new tokens (specviz.limits), 128 draft nodes per step; an app run (512 tokens) far within. A
# trace at every limit at once loads and renders in a few seconds on 2 CPU cores
# (tests/test_trace.py::test_a_trace_at_every_limit_loads_and_renders_cheaply).
MAX_BYTES = 16_000_000
MAX_NESTING = 32  # brackets deep; a trace needs 6, a run's config a few more
MAX_STEPS = 4096
MAX_EVENTS = 5 * MAX_STEPS + 2
MAX_NODES_PER_STEP = 256
MAX_NODES = 32_768  # draft nodes over all steps (each step's tree counted once)
MAX_TOKENS = 4096  # emitted tokens
MAX_TEXT = 200_000  # characters of the prompt or of the final text
MAX_TOKEN_TEXT = 1000  # characters of one token's text
MAX_NAME = 1000  # characters of a model, drafter, rule or other name
MAX_ID = 2**31 - 1  # token ids
MAX_COUNT = 2**53  # counters in metrics
MAX_SECONDS = 1e7
MAX_NUMBER = 1e15  # any other number (free-form settings, config, stop notes)
P_SLACK = 1e-3  # float32 rounding: a probability or sum of probabilities may exceed 1 by a hair

NODE_STATUS = (None, "accepted", "rejected", "unvisited")
TOKEN_KINDS = ("accepted", "resampled", "bonus", "target")
FINAL_KINDS = ("resampled", "bonus", "target")
DRAWS = ("iid", "without_replacement")


def dumps(events: list[Event]) -> str:
    """The trace of a run: every event but the prompt-reading progress (Prefilled), which records nothing."""
    kept = [to_dict(e) for e in events if not isinstance(e, Prefilled)]
    return json.dumps({"format": FORMAT, "version": VERSION, "events": kept})


def save(events: list[Event], path: str | os.PathLike) -> Path:
    return atomic_write_text(path, dumps(events))


def load(path: str | os.PathLike) -> Recording:
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ValueError(_too_big(size))
    return loads(path.read_bytes())


def loads(text: str | bytes) -> Recording:
    """Parse and check a trace (see the module docstring); any problem raises ValueError with a
    one-line reason. Returns the events as a Recording (`.complete` False without RunFinished)."""
    if not isinstance(text, (str, bytes, bytearray)):
        raise ValueError(f"a trace is text, not {type(text).__name__}")
    if len(text) > MAX_BYTES:
        raise ValueError(_too_big(len(text)))
    if not isinstance(text, str):
        try:
            text = bytes(text).decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise ValueError(f"trace is not valid JSON (not UTF-8 text: byte {err.start})") from None
    depth = nesting(text)
    if depth > MAX_NESTING:
        raise ValueError(f"trace is not a specviz trace: JSON nested {depth} deep (at most {MAX_NESTING})")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, or an integer of over 4300 digits
        raise ValueError(f"trace is not valid JSON ({err.__class__.__name__}: {_line(err, 80)})") from None
    raw = _header(data)
    _check_counts(raw)
    out = Recording()
    state = _Structure()
    for k, item in enumerate(raw):
        event = parse_event(item, k)
        state.add(event, k)
        out.append(event)
    return out


def _too_big(size: int) -> str:
    return f"trace is {size / 1e6:.1f} MB; the limit is {MAX_BYTES / 1e6:.0f} MB"


def _line(value, limit: int = 40) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _show(value) -> str:
    """A value for an error message: short, one line, with its JSON type when that is the problem."""
    if isinstance(value, (dict, list)):
        return f"a{'n object' if isinstance(value, dict) else ' list'}"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int) and abs(value) > 10**12:
        return f"an integer of {len(str(abs(value)))} digits"
    return _line(repr(value))


# ---------------------------------------------------------------- 1. before parsing

# A string, or what is left of the text after an unterminated one: every part after the opening quote
# is optional, so a match never fails and the scan never restarts (a failing pattern here would make
# a file of escaped quotes cost quadratic time).
_STRING = re.compile(r'"[^"\\]*(?:\\[\s\S]?[^"\\]*)*"?')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def nesting(text: str) -> int:
    """How deep JSON text nests brackets, strings skipped, without parsing it (the C parser
    recurses and a hostile file can nest 100,000 deep). Where the scan and a JSON parser would
    read a string differently the text is invalid JSON, and the parser stops there anyway."""
    outside = _STRING.sub("", text).encode("utf-8", "surrogatepass")
    brackets = np.frombuffer(outside.translate(None, _NOT_BRACKETS), dtype=np.uint8)
    if not len(brackets):
        return 0
    steps = np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1).astype(np.int32)
    return max(0, int(np.cumsum(steps).max()))


# ---------------------------------------------------------------- 2. header and counts


def _header(data) -> list:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not a specviz trace (expected \"format\": \"{FORMAT}\")")
    version = data.get("version")
    if type(version) is not int or version not in READABLE:  # noqa: E721 (true is no version)
        readable = " and ".join(map(str, READABLE))
        raise ValueError(f"trace version {_show(version)} is not supported (this specviz reads {readable})")
    extra = sorted(set(data) - {"format", "version", "events"})
    if extra:
        raise ValueError(f"trace has an unknown top-level field {_line(extra[0])!r}")
    raw = data.get("events")
    if not isinstance(raw, list) or not raw:
        raise ValueError("trace has no events")
    return raw


def _check_counts(raw: list) -> None:
    """The sizes that drive the cost of checking and drawing, before any event is looked at closely."""
    if len(raw) > MAX_EVENTS:
        raise ValueError(f"trace has {len(raw)} events; at most {MAX_EVENTS} are allowed ({MAX_STEPS} steps)")
    nodes = {"Drafted": 0, "Verified": 0}
    tokens = 0
    for k, item in enumerate(raw):
        if not isinstance(item, dict):
            continue  # parse_event names it
        kind = item.get("event")
        kind = kind if isinstance(kind, str) else None  # a list here is no event (parse_event says so)
        value = item.get("nodes")
        if kind in nodes and isinstance(value, list):
            if len(value) > MAX_NODES_PER_STEP:
                raise ValueError(f"{_where(k, item)}: {len(value)} draft nodes; at most {MAX_NODES_PER_STEP} "
                                 "per step are allowed")
            nodes[kind] += len(value)
        value = item.get("tokens") if kind == "Emitted" else item.get("token_ids") if kind == "RunFinished" else None
        if isinstance(value, list):
            tokens += len(value) if kind == "Emitted" else 0
            if len(value) > MAX_TOKENS:
                raise ValueError(f"{_where(k, item)}: {len(value)} tokens; at most {MAX_TOKENS} are allowed")
    total = max(nodes.values())
    if total > MAX_NODES:
        raise ValueError(f"trace has {total} draft nodes; at most {MAX_NODES} are allowed")
    if tokens > MAX_TOKENS:
        raise ValueError(f"trace has {tokens} emitted tokens; at most {MAX_TOKENS} are allowed")


def _where(k: int, item) -> str:
    """'event 12 (Verified, step 3)': how every message names its place."""
    kind = item.get("event") if isinstance(item, dict) else None
    kind = kind if isinstance(kind, str) and kind in EVENT_TYPES else None
    step = item.get("step") if kind else None
    if type(step) is int and 0 <= step < MAX_STEPS:  # noqa: E721
        return f"event {k} ({kind}, step {step})"
    return f"event {k} ({kind})" if kind else f"event {k}"


# ---------------------------------------------------------------- 3. fields


class _Bad(Exception):
    """A field's problem: `field` (dotted, e.g. 'nodes.q'), `item` (e.g. 'node 2'), `problem`."""

    def __init__(self, field: str, problem: str, item: str = ""):
        super().__init__(field, problem, item)
        self.field, self.problem, self.item = field, problem, item


def _integer(lo: int, hi: int):
    def check(v):
        if type(v) is not int or not lo <= v <= hi:  # noqa: E721 (a bool is no integer)
            return f"must be an integer in [{lo}, {hi}], got {_show(v)}"
    return check


def _number(lo: float, hi: float):
    def check(v):
        # NaN fails both comparisons and infinities the finite bounds, so this also means finite
        if type(v) not in (float, int) or not lo <= v <= hi:
            return f"must be a finite number in [{lo:g}, {hi:g}], got {_show(v)}"
    return check


def _text(limit: int):
    def check(v):
        if type(v) is not str:  # noqa: E721
            return f"must be a string, got {_show(v)}"
        if len(v) > limit:
            return f"is {len(v)} characters long; at most {limit} are allowed"
        if _SURROGATE.search(v):
            return "contains a lone surrogate (not encodable text)"
    return check


def _choice(values: tuple, what: str):
    def check(v):
        if v not in values or type(v) not in (str, type(None)):
            shown = ", ".join(str(x) for x in values if x is not None)
            return f"is an unknown {what} {_show(v)} (known: {shown})"
    return check


def _optional(inner):
    def check(v):
        return None if v is None else inner(v)
    return check


def _list_of(inner, limit: int):
    def check(v):
        if type(v) is not list:  # noqa: E721
            return f"must be a list, got {_show(v)}"
        if len(v) > limit:
            return f"has {len(v)} items; at most {limit} are allowed"
        for i, x in enumerate(v):
            problem = inner(x)
            if problem:
                return f"item {i} {problem}"
    return check


def _free_json(v, path: str = "", depth: int = 0) -> tuple[str, str] | None:
    """A free-form JSON value (settings, config, stop note): finite numbers, encodable strings."""
    if isinstance(v, dict):
        for key, x in v.items():
            if _SURROGATE.search(key):
                return path, "has a key with a lone surrogate"
            bad = _free_json(x, f"{path}.{_line(key, 30)}", depth + 1)
            if bad:
                return bad
    elif isinstance(v, list):
        for i, x in enumerate(v):
            bad = _free_json(x, f"{path}.{i}", depth + 1)
            if bad:
                return bad
    elif isinstance(v, str):
        problem = _text(MAX_TEXT)(v)
        if problem:
            return path, problem
    elif type(v) in (int, float):
        problem = _number(-MAX_NUMBER, MAX_NUMBER)(v)
        if problem:
            return path, problem
    elif v is not None and type(v) is not bool:  # noqa: E721
        return path, f"is not a JSON value ({type(v).__name__})"
    return None


def _json_object(v):
    if type(v) is not dict:  # noqa: E721
        return f"must be an object, got {_show(v)}"
    bad = _free_json(v)
    if bad:
        return f"{bad[0].lstrip('.')} {bad[1]}" if bad[0] else bad[1]


_SURROGATE = re.compile("[\ud800-\udfff]")
PROB = _number(0.0, 1.0 + P_SLACK)
ENTROPY = _number(-P_SLACK, 1000.0)  # nats (log of any vocabulary is < 20)
SECONDS = _number(0.0, MAX_SECONDS)
STEP = _integer(0, MAX_STEPS - 1)
NAME = _text(MAX_NAME)

# Every field's rule, by "Class.field". Fields not listed (added later) get a rule from their type
# hint (see _rule_from_hint); nested dataclasses are checked field by field.
RULES = {
    "Node.id": _integer(0, MAX_NODES_PER_STEP - 1),
    "Node.parent": _integer(-1, MAX_NODES_PER_STEP - 2),
    "Node.depth": _integer(1, MAX_NODES_PER_STEP),
    "Node.token": _integer(0, MAX_ID),
    "Node.text": _text(MAX_TOKEN_TEXT),
    "Node.q": PROB,
    "Node.q_entropy": ENTROPY,
    "Node.p": _optional(PROB),
    "Node.accept_prob": _optional(PROB),
    "Node.status": _choice(NODE_STATUS, "node status"),
    "Node.beta": _optional(PROB),
    "Node.source": _optional(NAME),
    "Token.id": _integer(0, MAX_ID),
    "Token.text": _text(MAX_TOKEN_TEXT),
    "Token.kind": _choice(TOKEN_KINDS, "token kind"),
    "Token.p": PROB,
    "Token.p_entropy": ENTROPY,
    "Token.q": _optional(PROB),
    "Token.accept_prob": _optional(PROB),
    "Token.node": _optional(_integer(0, MAX_NODES_PER_STEP - 1)),
    "RunStarted.target": NAME,
    "RunStarted.drafter": NAME,
    "RunStarted.rule": NAME,
    "RunStarted.settings": _json_object,
    "RunStarted.prompt": _text(MAX_TEXT),
    "RunStarted.prompt_tokens": _integer(0, MAX_ID),
    "RunStarted.config": _optional(_json_object),
    "RunStarted.policy": _optional(_json_object),
    "RunStarted.image": _optional(_json_object),
    "StepStarted.step": STEP,
    "StepStarted.arm": _optional(NAME),
    "StepStarted.choice": _optional(_json_object),
    "Drafted.step": STEP,
    "Drafted.draw": _choice(DRAWS, "draw"),
    "Drafted.stop": _optional(_json_object),
    "Drafted.sources": _optional(_list_of(NAME, 8)),
    "Verified.step": STEP,
    "Verified.path": _list_of(_integer(0, MAX_ID), MAX_NODES_PER_STEP),
    "Verified.kind": _choice(FINAL_KINDS, "final token kind"),
    "Emitted.step": STEP,
    "StepFinished.step": STEP,
    "StepFinished.draft_s": SECONDS,
    "StepFinished.verify_s": SECONDS,
    "StepFinished.overhead_s": SECONDS,
    "StepFinished.draft_start_s": SECONDS,
    "StepFinished.verify_start_s": SECONDS,
    "RunFinished.text": _text(MAX_TEXT),
    "RunFinished.token_ids": _list_of(_integer(0, MAX_ID), MAX_TOKENS),
    "RunFinished.stop_reason": NAME,
}
NESTED_LIMITS = {"Drafted.nodes": MAX_NODES_PER_STEP, "Verified.nodes": MAX_NODES_PER_STEP,
                 "Emitted.tokens": MAX_TOKENS}
ITEM_NAMES = {Node: "node", Token: "token"}


def _rule_from_hint(hint):
    """Metrics and any field added without a rule: counters and seconds, by their type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _optional(_rule_from_hint(inner[0])) if len(inner) == 1 else _json_object
    if hint is int:
        return _integer(0, MAX_COUNT)
    if hint is float:
        return _number(0.0, MAX_NUMBER)
    if hint is str:
        return NAME
    if hint is bool:
        return lambda v: None if type(v) is bool else f"must be true or false, got {_show(v)}"  # noqa: E721
    if origin is list and args:
        return _list_of(_rule_from_hint(args[0]), MAX_NODES_PER_STEP + 1)
    return _json_object


class _Schema:
    """One dataclass's fields: how to check each, which are required, which are nested dataclasses."""

    def __init__(self, cls):
        self.cls = cls
        hints = typing.get_type_hints(cls)
        self.rules, self.nested, self.required = {}, {}, set()
        for f in dataclasses.fields(cls):
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.required.add(f.name)
            hint = hints[f.name]
            item = typing.get_args(hint)[0] if typing.get_origin(hint) is list and typing.get_args(hint) else None
            if dataclasses.is_dataclass(hint):
                self.nested[f.name] = (hint, None)
            elif item is not None and dataclasses.is_dataclass(item):
                self.nested[f.name] = (item, NESTED_LIMITS.get(f"{cls.__name__}.{f.name}", MAX_NODES_PER_STEP))
            else:
                self.rules[f.name] = RULES.get(f"{cls.__name__}.{f.name}") or _rule_from_hint(hint)
        self.known = {*self.rules, *self.nested, "event"}

    def build(self, data):
        """Check a JSON object field by field and make the dataclass; raises _Bad (field '' is the
        object itself)."""
        if type(data) is not dict:  # noqa: E721
            raise _Bad("", f"must be an object, got {_show(data)}")
        if not self.known.issuperset(data):
            key = next(k for k in data if k not in self.known)
            raise _Bad(_line(key, 30), f"is not a field of {self.cls.__name__}")
        if not self.required <= data.keys():
            raise _Bad(min(self.required - data.keys()), "is missing")
        kwargs = {}
        rules = self.rules
        for name, value in data.items():
            rule = rules.get(name)
            if rule is not None:
                problem = rule(value)
                if problem:
                    raise _Bad(name, problem)
                kwargs[name] = value
        for name, (cls, limit) in self.nested.items():
            if name not in data:
                continue
            value, schema = data[name], _schema(cls)
            try:
                if limit is None:
                    kwargs[name] = schema.build(value)
                    continue
            except _Bad as bad:
                raise _Bad(f"{name}.{bad.field}" if bad.field else name, bad.problem) from None
            if type(value) is not list:  # noqa: E721
                raise _Bad(name, f"must be a list, got {_show(value)}")
            if len(value) > limit:
                raise _Bad(name, f"has {len(value)} items; at most {limit} are allowed")
            build, items = schema.build, []
            for i, x in enumerate(value):
                try:
                    items.append(build(x))
                except _Bad as bad:
                    field = f"{name}.{bad.field}" if bad.field else name
                    raise _Bad(field, bad.problem, f"{ITEM_NAMES.get(cls, cls.__name__)} {i}") from None
            kwargs[name] = items
        return self.cls(**kwargs)


_SCHEMAS: dict[type, _Schema] = {}


def _schema(cls) -> _Schema:
    if cls not in _SCHEMAS:
        _SCHEMAS[cls] = _Schema(cls)
    return _SCHEMAS[cls]


def parse_event(data, k: int = 0) -> Event:
    """One event from its JSON object, every field checked (step 3); ValueError names what is wrong."""
    kind = data.get("event") if isinstance(data, dict) else None
    if not isinstance(kind, str) or kind not in EVENT_TYPES:
        raise ValueError(f"event {k} is not a specviz event: {_line(repr(data), 80)}")
    where = _where(k, data)
    try:
        return _schema(EVENT_TYPES[kind]).build(data)
    except _Bad as bad:
        if bad.problem == "is missing" and "." not in bad.field:
            raise ValueError(f"{where} lacks field '{bad.field}'") from None
        of = f" of {bad.item}" if bad.item else ""
        raise ValueError(f"{where}: '{bad.field}'{of} {bad.problem}") from None


# ---------------------------------------------------------------- 4. structure

ORDER = (StepStarted, Drafted, Verified, Emitted, StepFinished)  # the events of one step, in order


class _Structure:
    """Follows the events one by one: the order of a run, and what each step's events say of each other."""

    def __init__(self):
        self.step: int | None = None  # the step being read
        self.seen: list = []  # its events so far
        self.finished = False

    def add(self, ev: Event, k: int) -> None:
        where = f"event {k} ({type(ev).__name__}" + (f", step {ev.step})" if hasattr(ev, "step") else ")")
        if k == 0 and not isinstance(ev, RunStarted):
            raise ValueError("trace must begin with a RunStarted event")
        if self.finished:
            raise ValueError(f"{where}: comes after RunFinished, which must be the last event")
        if isinstance(ev, RunStarted):
            if k:
                raise ValueError(f"{where}: a second RunStarted (a trace holds one run)")
            return
        if isinstance(ev, (Drafted, Verified)):
            _check_nodes(ev, where)
        if isinstance(ev, (StepFinished, RunFinished)):
            _check_metrics(ev.metrics, where)
        if isinstance(ev, RunFinished):
            self.finished = True
            return
        if ev.step != self.step:
            if self.step is not None and ev.step < self.step:
                raise ValueError(f"{where}: step {ev.step} comes after step {self.step}; steps must increase")
            self._close(where)
            self.step, self.seen = ev.step, []
        expected = ORDER[len(self.seen)] if len(self.seen) < len(ORDER) else None
        if type(ev) is not expected:
            after = f"after {type(self.seen[-1]).__name__}" if self.seen else "first"
            raise ValueError(f"{where}: out of order ({after} in its step, a step's events are "
                             f"{', '.join(c.__name__ for c in ORDER)})")
        if isinstance(ev, Verified):
            _check_pair(self.seen[-1], ev, where)
        elif isinstance(ev, Emitted):
            _check_emitted(self.seen[-1], ev, where)
        self.seen.append(ev)

    def _close(self, where: str) -> None:
        """The step before the one starting now must be whole. Only the last step may be cut short,
        with or without RunFinished: a run cancelled (or out of time) before its target forward."""
        if self.step is not None and len(self.seen) < len(ORDER):
            raise ValueError(f"{where}: step {self.step} before it lacks its {ORDER[len(self.seen)].__name__} event")

def _check_nodes(ev: Drafted | Verified, where: str) -> None:
    nodes = ev.nodes
    if isinstance(ev, Verified) and any(not 0 <= j < len(nodes) for j in ev.path):
        raise ValueError(f"{where}: the verified path names nodes that do not exist ({_line(ev.path)})")
    for i, node in enumerate(nodes):
        if node.id != i:
            raise ValueError(f"{where}: node {i} has a bad id {node.id} (nodes are numbered 0, 1, 2, … in order)")
        if not -1 <= node.parent < i:
            raise ValueError(f"{where}: node {i} has a bad parent link {node.parent} (the root -1 or an earlier node)")
        depth = 1 if node.parent < 0 else nodes[node.parent].depth + 1
        if node.depth != depth:
            raise ValueError(f"{where}: node {i} has depth {node.depth}; its parent link makes it {depth}")
        verified = isinstance(ev, Verified)
        if verified == (node.status is None):
            raise ValueError(f"{where}: node {i} has node status {_show(node.status)}; "
                             + ("a verified node is accepted, rejected or unvisited" if verified
                                else "a drafted node has none before verification"))
    if isinstance(ev, Verified):
        parent = -1
        for j in ev.path:
            if nodes[j].parent != parent or nodes[j].status != "accepted":
                raise ValueError(f"{where}: the verified path is not a chain of accepted nodes from the root "
                                 f"(at node {j})")
            parent = j
        on_path = set(ev.path)
        stray = next((n.id for n in nodes if n.status == "accepted" and n.id not in on_path), None)
        if stray is not None:
            raise ValueError(f"{where}: node {stray} is accepted but not on the verified path")


def _check_metrics(m: Metrics, where: str) -> None:
    """Counters that agree with each other, so derived figures stay in range (a mean β above 1
    would make the predicted speedup overflow)."""
    if len(m.beta_sum) != len(m.beta_count):
        raise ValueError(f"{where}: 'metrics.beta_sum' has {len(m.beta_sum)} items but 'metrics.beta_count' "
                         f"{len(m.beta_count)}")
    for depth, (total, count) in enumerate(zip(m.beta_sum, m.beta_count), 1):
        if total > count * (1 + P_SLACK):
            raise ValueError(f"{where}: 'metrics.beta_sum' at depth {depth} is {_show(total)} over {count} nodes: "
                             "β is at most 1")
    if m.single_steps > m.steps or m.single_verify_s > m.verify_s * (1 + P_SLACK) + 1e-9:
        raise ValueError(f"{where}: 'metrics.single_steps' / 'single_verify_s' exceed 'steps' / 'verify_s'")
    if m.accepted > m.drafted:
        raise ValueError(f"{where}: 'metrics.accepted' {m.accepted} exceeds 'metrics.drafted' {m.drafted}")


def _check_pair(drafted: Drafted, verified: Verified, where: str) -> None:
    if len(drafted.nodes) != len(verified.nodes):
        raise ValueError(f"{where}: verifies {len(verified.nodes)} nodes but {len(drafted.nodes)} were drafted")
    for a, b in zip(drafted.nodes, verified.nodes):
        if (a.parent, a.depth, a.token) != (b.parent, b.depth, b.token):
            raise ValueError(f"{where}: node {a.id} differs from the drafted one (parent, depth or token)")


def _check_emitted(verified: Verified, emitted: Emitted, where: str) -> None:
    """The emitted tokens are the accepted path's tokens, then the target's own (either may be cut
    short where the run ended: end of text or the token budget)."""
    path, tokens = verified.path, emitted.tokens
    if len(tokens) > len(path) + 1:
        raise ValueError(f"{where}: {len(tokens)} tokens, but one forward emits at most the {len(path)} "
                         "accepted plus one")
    for i, tok in enumerate(tokens):
        if i < len(path):
            node = verified.nodes[path[i]]
            if tok.kind != "accepted" or tok.node != node.id or tok.id != node.token:
                raise ValueError(f"{where}: token {i} should be the accepted node {node.id} "
                                 f"(token kind {_show(tok.kind)}, node {_show(tok.node)})")
        elif tok.kind != verified.kind or tok.node is not None:
            raise ValueError(f"{where}: token {i} should be the target's own {verified.kind} token "
                             f"(token kind {_show(tok.kind)}, node {_show(tok.node)})")


def validate(events: list[Event]) -> None:
    """Check events built in memory as `loads` checks a file: each field, then the run's structure."""
    state = _Structure()
    for k, event in enumerate(events):
        parse_event(to_dict(event), k)
        state.add(event, k)

