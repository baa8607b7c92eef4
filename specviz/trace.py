"""Versioned JSON traces: a whole run's events, saved atomically, loaded back with validation."""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import types
import typing
from pathlib import Path

from .events import Drafted, Emitted, Event, Verified, from_dict, to_dict

FORMAT = "specviz-trace"
VERSION = 1
MAX_BYTES = 50_000_000  # a trace of 4k tokens with 16-node trees stays far below this


def dumps(events: list[Event]) -> str:
    return json.dumps({"format": FORMAT, "version": VERSION, "events": [to_dict(e) for e in events]})


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write to a temp file beside the target, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; traces and results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def save(events: list[Event], path: str | os.PathLike) -> Path:
    return atomic_write_text(path, dumps(events))


def loads(text: str | bytes) -> list[Event]:
    """Parse a trace; any problem raises ValueError with a one-line reason."""
    if len(text) > MAX_BYTES:
        raise ValueError(f"trace is {len(text) / 1e6:.0f} MB; the limit is {MAX_BYTES / 1e6:.0f} MB")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"trace is not valid JSON ({err.__class__.__name__}: {str(err)[:80]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not a specviz trace (expected \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise ValueError(f"trace version {data.get('version')!r} is not supported (this specviz reads {VERSION})")
    events = data.get("events")
    if not isinstance(events, list) or not events:
        raise ValueError("trace has no events")
    out = [from_dict(e) for e in events]
    if type(out[0]).__name__ != "RunStarted":
        raise ValueError("trace must begin with a RunStarted event")
    validate(out)
    return out


NODE_STATUS = (None, "accepted", "rejected", "unvisited")
TOKEN_KINDS = ("accepted", "resampled", "bonus", "target")


def validate(events: list[Event]) -> None:
    """Refuse events no engine run could have written: field types, node ids, parent links, path
    indices, token kinds. Views may then trust what they draw."""
    for k, ev in enumerate(events):
        bad = _bad_field(ev)
        if bad:
            raise ValueError(f"event {k} ({type(ev).__name__}) has a wrong value in '{bad}'")
        if isinstance(ev, (Drafted, Verified)):
            for i, node in enumerate(ev.nodes):
                if node.id != i or not -1 <= node.parent < i:
                    raise ValueError(f"step {ev.step}: draft node {i} has a bad id or parent link")
                if node.status not in NODE_STATUS:
                    raise ValueError(f"step {ev.step}: unknown node status {str(node.status)[:20]!r}")
        if isinstance(ev, Verified) and any(not 0 <= j < len(ev.nodes) for j in ev.path):
            raise ValueError(f"step {ev.step}: the verified path names nodes that do not exist")
        if isinstance(ev, Emitted) and any(tok.kind not in TOKEN_KINDS for tok in ev.tokens):
            raise ValueError(f"step {ev.step}: unknown token kind")


def _conforms(value, hint) -> bool:
    """Does a JSON-loaded value match a dataclass field's type hint (float accepts int; bool is no number)?"""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, h) for h in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and (not args or all(_conforms(v, args[0]) for v in value))
    if dataclasses.is_dataclass(hint):
        return isinstance(value, hint) and _bad_field(value) is None
    return isinstance(value, origin or hint)


def _bad_field(obj) -> str | None:
    """The first field of a (nested) event whose value has the wrong type, if any."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            for item in value:
                bad = _bad_field(item) if isinstance(item, type(value[0])) else f.name
                if bad:
                    return f"{f.name}.{bad}"
        elif not _conforms(value, hints[f.name]):
            return f.name
    return None


def load(path: str | os.PathLike) -> list[Event]:
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ValueError(f"trace is {size / 1e6:.0f} MB; the limit is {MAX_BYTES / 1e6:.0f} MB")
    return loads(path.read_bytes())
