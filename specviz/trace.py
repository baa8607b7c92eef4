"""Versioned JSON traces: a whole run's events, saved atomically, loaded back with validation."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .events import Event, from_dict, to_dict

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
    return out


def load(path: str | os.PathLike) -> list[Event]:
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ValueError(f"trace is {size / 1e6:.0f} MB; the limit is {MAX_BYTES / 1e6:.0f} MB")
    return loads(path.read_bytes())
