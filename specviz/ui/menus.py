"""The page's menus, read from the registries: a new drafter, draft shape, verification rule or
stopping rule (with its parameters) appears here without touching the UI. (label, value) pairs."""
from __future__ import annotations

import os

from .. import models
from . import measured
from ..drafters.registry import DRAFTERS, drafter_entry
from ..drafters.strategies import STRATEGIES
from ..rules import VERIFY_RULES
from ..stop_rules import STOP_RULES

KIND = {"none": "no drafter", "free": "no model", "model": "a second model", "trained": "trained drafter",
        "auto": "picks a drafter"}
STATUS_ORDER = {"ready": 0, "downloaded": 1, "not installed": 2}


def preset_status(name: str) -> str:
    return "from the hub" if os.environ.get("SPECVIZ_FROM_HUB") == "1" else models.status(name)


def presets() -> list[str]:
    """Model presets, installed ones first."""
    return sorted(models.PRESETS, key=lambda n: (STATUS_ORDER.get(models.status(n), 3), n))


def targets() -> list[tuple[str, str]]:
    vlm = models.vlm_target()
    return [(f"{n} · {preset_status(n)}", n) for n in presets()] + (
        [(f"{vlm} · vision-language (add an image)", vlm)] if vlm else [])


def measured_tag(target: str | None, drafter: str) -> str:
    """' · 1.31× plain here' / ' · ⚠ 0.72× plain here': the drafter's measured decode speed on this machine
    against plain decoding of the same target ("" where either is not measured yet)."""
    s = measured.speed(target, drafter) if target and drafter != measured.PLAIN else None
    if s is None or s.ratio is None:
        return ""
    return f" · {'⚠ ' if s.ratio < 1 else ''}{s.ratio:.2f}× plain here"


def drafters(target: str | None = None) -> list[tuple[str, str]]:
    """The registered drafters, then every model preset (any of them drafts, in every shape); each with its
    measured speed against plain decoding of `target` on this machine, where measured. For a vision-language
    target only those that read the text (`is_vlm`)."""
    registered = [(f"{e.name} · {e.label} ({KIND.get(e.kind, e.kind)}){measured_tag(target, e.name)}", e.name)
                  for e in DRAFTERS.entries() if not (is_vlm(target) and e.reads_target)]
    return registered + [(f"{n} · model drafter · {preset_status(n)}{measured_tag(target, n)}", n) for n in presets()]


TEXT_ONLY = "pld"  # what a vision-language target drafts with when the menu held a drafter it cannot take
VLM_NOTE = ("*A vision-language target's hidden states hold image positions a drafter never sees: the drafters "
            "that read them (the EAGLE heads, DEL, auto) are not offered for it.*")


def is_vlm(target) -> bool:
    return isinstance(target, str) and target == models.vlm_target()


def drafter_for(target: str, drafter: str) -> str:
    """The drafter the menu keeps when the target changes: prompt lookup in place of one that reads the
    target's hidden states, for a vision-language target."""
    if is_vlm(target) and isinstance(drafter, str) and drafter_entry(drafter).reads_target:
        return TEXT_ONLY
    return drafter


def drafter_note(target: str, drafter: str) -> str:
    """Under the drafter menu: what this drafter measured on this machine, and a warning if it was slower."""
    if not isinstance(target, str) or not isinstance(drafter, str):
        return ""
    if is_vlm(target):
        return _measured_note(target, drafter) + "\n\n" + VLM_NOTE
    return _measured_note(target, drafter)


def _measured_note(target: str, drafter: str) -> str:
    plain = measured.speed(target, measured.PLAIN)
    if drafter == measured.PLAIN:
        return (f"Plain decoding of {target}: {plain.tokens_per_s:.1f} tok/s here (median of {plain.runs} runs)."
                if plain else "Plain decoding: the reference every drafter is measured against.")
    s = measured.speed(target, drafter)
    if s is None:
        return f"*{drafter} with {target}: not measured on this machine yet (its speed appears here after a run).*"
    text = f"{drafter} with {target} here: {s.tokens_per_s:.1f} tok/s decoding (median of {s.runs} run" + \
        ("s" if s.runs != 1 else "") + ")"
    if s.ratio is None:
        return text + "; run once without a drafter (or tick *measure against AR*) to compare with plain decoding."
    if s.ratio < 1:
        return f"⚠ **{text}, {s.ratio:.2f}× plain decoding: expect it to be slower than no drafter.**"
    return text + f", {s.ratio:.2f}× plain decoding."


def shapes() -> list[tuple[str, str]]:
    return [(f"{e.name} · {e.label}", e.name) for e in STRATEGIES.entries()]


def verify_rules() -> list[tuple[str, str]]:
    auto = ("auto · greedy at temperature 0, else speculative sampling (lossless)", "auto")
    return [auto] + [(f"{e.name} · {e.label} · " + ("lossless" if e.lossless else
                                                     "LOSSY: the output is not the target's distribution"), e.name)
                     for e in VERIFY_RULES.entries()]


def stop_rules() -> list[tuple[str, str]]:
    return [(f"{e.name} · {e.label}" + (" (drafters with a distribution: model or trained)" if e.needs_entropy
                                         else ""), e.name) for e in STOP_RULES.entries()]


def stop_rule_about(name) -> str:
    """The chosen stopping rule in plain words, with its parameters' meaning."""
    if name not in STOP_RULES:
        return ""
    entry = STOP_RULES.get(name)
    return f"*{entry.explain}*"
