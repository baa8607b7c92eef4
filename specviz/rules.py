"""Verification rules, registered once: name -> how to build it, whether it is lossless, whether it
needs the target model, and the plain-language explanation the step explorer shows.

A new rule is one file (a function (tree, p_rows, gen) -> Verdict) plus one entry here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .registry import Registry
from .verify import Rule, verify_greedy, verify_sampling
from .verify_lossy import lantern_for, typical_rule


@dataclass(frozen=True)
class RuleEntry:
    name: str
    label: str
    lossless: bool
    explain: str  # markdown, shown under every step verified by this rule
    make: Callable[[torch.nn.Module | None], Rule]  # make(target model) -> rule
    needs_target: bool = False  # make() reads the target model (LANTERN's embedding neighbours)


GREEDY_TEXT = ("*The rule (greedy):* a draft is accepted when it is the target's own top token "
               "(p is 1 for the argmax, 0 elsewhere, so `min(1, p/q)` is 1 or 0); at the first mismatch the "
               "target's top token is used instead. The output equals plain greedy decoding.")
SAMPLING_TEXT = ("*The rule (lossless speculative sampling):* accept a draft x with probability "
                 "`min(1, p(x)/q(x))`; after a rejection draw the token from the residual "
                 "`norm(max(0, p − q))`; if every draft is accepted, draw a bonus token from p. "
                 "The output has exactly the target's distribution.")

VERIFY_RULES: Registry[RuleEntry] = Registry(
    "verification rule",
    RuleEntry("greedy", "greedy", True, GREEDY_TEXT, lambda target: verify_greedy),
    RuleEntry("sampling", "speculative sampling", True, SAMPLING_TEXT, lambda target: verify_sampling),
    RuleEntry("typical-lossy", "typical acceptance (Medusa)", False,
              "*The rule (typical acceptance, Medusa; **LOSSY**):* a draft x is accepted when "
              "`p(x) > min(ε, δ·exp(−H(p)))` (ε = 0.09, δ = 0.3, H = the target's entropy there); the longest "
              "accepted path wins and the target then samples its own token from p. Drafts the target would "
              "rarely sample can pass, so **the output is not distributed like the target's** (at temperature 0 "
              "p is one-hot and the rule is exactly greedy).",
              lambda target: typical_rule()),
    RuleEntry("lantern-lossy", "relaxed acceptance (LANTERN)", False,
              "*The rule (LANTERN relaxed acceptance; **LOSSY**):* a draft x is accepted with "
              "`min(1, p̃(x)/q(x))`, where p̃(x) adds to p(x) the mass of x's nearest tokens in the target's "
              "embedding space (k = 10, at most δ = 0.2 in total); a rejection resamples from "
              "`norm(max(0, p − q))`. The output may differ from the target's distribution by up to δ per "
              "token in total variation: **lossy** (at temperature 0 it is exactly greedy).",
              lantern_for, needs_target=True),
)


def default_rule(greedy: bool) -> str:
    return "greedy" if greedy else "sampling"


def resolve(name: str | None, greedy: bool) -> str:
    """'auto'/None -> the lossless rule for the temperature; anything else must be registered."""
    return default_rule(greedy) if name in (None, "auto") else VERIFY_RULES.get(name).name


def make_rule(name: str, target: torch.nn.Module | None = None) -> Rule:
    rule = VERIFY_RULES.get(name).make(target)
    rule.__name__ = name  # the engine reports rules by name
    return rule


def explain(name: str | None, greedy: bool) -> str:
    """The step explorer's account of a rule (greedy/sampling by temperature when unknown)."""
    if name in VERIFY_RULES and name not in ("greedy", "sampling"):
        return VERIFY_RULES.get(name).explain
    return GREEDY_TEXT if greedy else SAMPLING_TEXT


# name -> rule, for rules that need no target model; name -> factory(target) for those that do
RULES: dict[str, Rule] = {e.name: e.make(None) for e in VERIFY_RULES.entries() if not e.needs_target}
TARGET_RULES: dict[str, Callable] = {e.name: e.make for e in VERIFY_RULES.entries() if e.needs_target}
