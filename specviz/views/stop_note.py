"""Why a drafting round ended, from a Drafted event's stop note (rule, depth, reason, the rule's numbers).

Three cases: the stopping rule ended the round early (its reason), the round reached the length the
rule allows ("limit"), or the drafter had nothing more to propose before that length (a "limit"
note whose depth is below the rule's length, as prompt lookup records when its match runs out).
Plain text here; each view escapes it for its medium.
"""
from __future__ import annotations

from ..stop_rules import MERGED_ALONE, STOP_RULES
from .labels import visible

MAX_NUMBERS = 8  # a note's numbers shown (a hostile trace may record many)
RULE, LIMIT, SHORT = "rule", "limit", "short"


def is_note(note) -> bool:
    return isinstance(note, dict) and isinstance(note.get("depth"), int) and not isinstance(note.get("depth"), bool)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def kind(note: dict) -> str:
    if note.get("reason") != "limit":
        return RULE
    length = note.get("length")
    return SHORT if is_number(length) and note["depth"] < length else LIMIT


def label(note: dict) -> str:
    name = note.get("rule")
    if name == MERGED_ALONE:
        return "merged tree"
    return STOP_RULES.get(name).label if name in STOP_RULES else visible(name, 40)


def numbers(note: dict) -> list[tuple[str, str]]:
    """The rule's numbers recorded with the round, as (name, value) text."""
    shown = [(k, v) for k, v in note.items() if k not in ("rule", "depth", "reason")][:MAX_NUMBERS]
    return [(visible(k, 24), f"{v:.3g}" if is_number(v) else visible(v, 24)) for k, v in shown]


def why(note: dict) -> str:
    """One clause: why the round ended."""
    case = kind(note)
    if note.get("rule") == MERGED_ALONE:
        return visible(note.get("reason"), 200)
    if case == RULE:
        return f"the stopping rule ended it early: {visible(note.get('reason'), 160)}"
    if case == SHORT:
        return f"the drafter had nothing more to propose (the stopping rule allowed {note['length']:g})"
    return "it reached the most the stopping rule allows"
