"""Stopping rules, registered once: a new rule is one file plus one line here."""
from __future__ import annotations

from ..registry import Registry
from . import adaedl, confidence, schedule, static
from .base import MERGED_ALONE, StopEntry, StopNote, StopRule, stop_level

STOP_RULES: Registry[StopEntry] = Registry("stopping rule", static.ENTRY, schedule.ENTRY, confidence.ENTRY,
                                            adaedl.ENTRY)


def make_stop_rule(name: str, draft_len: int, params: dict | None = None) -> StopRule:
    from ..registry import check_params

    entry = STOP_RULES.get(name)
    return entry.make(draft_len, **check_params(entry.params, params, f"stopping rule '{name}'"))


__all__ = ["MERGED_ALONE", "STOP_RULES", "StopEntry", "StopNote", "StopRule", "make_stop_rule", "stop_level"]
