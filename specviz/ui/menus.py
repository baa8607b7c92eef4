"""The page's menus, read from the registries: a new drafter, draft shape, verification rule or
stopping rule (with its parameters) appears here without touching the UI. (label, value) pairs."""
from __future__ import annotations

import os

from .. import models
from ..drafters.registry import DRAFTERS
from ..drafters.strategies import STRATEGIES
from ..rules import VERIFY_RULES
from ..stop_rules import STOP_RULES

KIND = {"none": "no drafter", "free": "no model", "model": "a second model", "trained": "trained drafter"}
STATUS_ORDER = {"ready": 0, "downloaded": 1, "not installed": 2}


def preset_status(name: str) -> str:
    return "from the hub" if os.environ.get("SPECVIZ_FROM_HUB") == "1" else models.status(name)


def presets() -> list[str]:
    """Model presets, installed ones first."""
    return sorted(models.PRESETS, key=lambda n: (STATUS_ORDER.get(models.status(n), 3), n))


def targets() -> list[tuple[str, str]]:
    return [(f"{n} · {preset_status(n)}", n) for n in presets()]


def drafters() -> list[tuple[str, str]]:
    """The registered drafters, then every model preset (any of them drafts, in every shape)."""
    registered = [(f"{e.name} · {e.label} ({KIND.get(e.kind, e.kind)})", e.name) for e in DRAFTERS.entries()]
    return registered + [(f"{n} · model drafter · {preset_status(n)}", n) for n in presets()]


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
