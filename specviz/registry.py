"""Named, registered choices (drafters, draft shapes, verification rules, stopping rules, policies).

Every menu, CLI help text, `models` listing and bench option is read from a registry, so a new
entry appears everywhere without touching those places. An entry's tunable constants are Params:
one definition gives the default, the allowed range and the help text for the app, CLI and bench.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Generic, Iterator, TypeVar


@dataclass(frozen=True)
class Param:
    name: str
    default: float
    lo: float
    hi: float
    help: str
    integer: bool = False

    def check(self, value, owner: str = "") -> float | int:
        """The value as a number in range, or ValueError naming the parameter and its range."""
        where = f"{owner} parameter " if owner else ""
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}{self.name} must be a number, got {str(value)[:40]!r}") from None
        if not math.isfinite(x) or not self.lo <= x <= self.hi or (self.integer and x != int(x)):
            kind = "a whole number" if self.integer else "a number"
            raise ValueError(f"{where}{self.name} must be {kind} in [{self.lo:g}, {self.hi:g}], got {value!r}")
        return int(x) if self.integer else x


def check_params(params: tuple[Param, ...], given: dict | None, owner: str) -> dict:
    """Defaults filled in, every value checked; unknown names refused."""
    given = dict(given or {})
    known = {p.name: p for p in params}
    for name in given:
        if name not in known:
            allowed = ", ".join(known) or "none"
            raise ValueError(f"{owner} has no parameter {str(name)[:40]!r} (its parameters: {allowed})")
    return {p.name: p.check(given.get(p.name, p.default), owner) for p in params}


E = TypeVar("E")


class Registry(Generic[E]):
    """An ordered name -> entry table whose lookups fail with the list of valid names."""

    def __init__(self, kind: str, *entries: E):
        self.kind = kind
        self._entries: dict[str, E] = {}
        for entry in entries:
            self.add(entry)

    def add(self, entry: E) -> E:
        name = entry.name  # type: ignore[attr-defined]
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name) -> E:
        if not isinstance(name, str) or name not in self._entries:
            raise ValueError(f"unknown {self.kind} {str(name)[:60]!r}; choose one of: {', '.join(self._entries)}")
        return self._entries[name]

    __getitem__ = get

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[E]:
        return list(self._entries.values())
