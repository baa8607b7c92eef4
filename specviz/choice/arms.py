"""The arms the drafter choice picks from, and building them for a target.

An arm is `drafter:shape:length` ("none" = plain decoding). DEFAULT_ARMS are AR, the copying
drafters and the trained drafters, each in the shape and length docs/benchmarks.md found best on
this CPU; `collect --arms` and the policy file may name others. An arm that cannot be built here (a
trained drafter whose weights are missing, say eagle3 while it is being trained) is skipped, with a
note that says why.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Callable

from ..paths import ASSETS
from .auto import PLAIN, Arm, AutoDrafter
from .bandit import SwitchSettings

# the arms that were fastest somewhere on the tuning prompts (docs/benchmarks.md): plain decoding, the
# two copying drafters, the EAGLE-3 head as a tree (greedy) and as a chain (any temperature), the head's
# tree and chain with the n-gram tree grafted on (one verification for both drafters' guesses), and both
# trees sized by this machine's verification cost (`priced`)
DEFAULT_ARMS = ("none", "pld:chain:8", "ngram-tree:chain:8", "eagle3:dynamic:2", "eagle3:chain:3",
                "eagle3+ngram:dynamic:2", "eagle3+ngram:chain:3", "eagle3:priced:4", "eagle3+ngram:priced:4")
POLICY_DIR = ASSETS / "policy"


def policy_path(target: str) -> Path:
    """The shipped policy of a target, or the file $SPECVIZ_POLICY names (to try one before shipping it)."""
    return Path(os.environ["SPECVIZ_POLICY"]) if os.environ.get("SPECVIZ_POLICY") else \
        POLICY_DIR / f"auto-{Path(target).name}.safetensors"


def parse_arm(label: str) -> tuple[str, str, int]:
    """"drafter[:shape[:length]]" -> (drafter, shape, length); "none" -> ("none", "chain", 0)."""
    parts = label.strip().split(":")
    if not parts[0] or len(parts) > 3:
        raise ValueError(f"arm {label!r}: expected drafter[:shape[:length]]")
    if parts[0] == PLAIN:
        return PLAIN, "chain", 0
    shape = parts[1] if len(parts) > 1 and parts[1] else "chain"
    try:
        length = int(parts[2]) if len(parts) > 2 else 4
    except ValueError:
        raise ValueError(f"arm {label!r}: the length must be a whole number") from None
    return parts[0], shape, length


def arm_label(drafter: str, shape: str, length: int) -> str:
    return PLAIN if drafter == PLAIN else f"{drafter}:{shape}:{length}"


def build_arms(labels, request, make: Callable) -> tuple[list[Arm], list[str]]:
    """(the arms that could be built, a note per arm skipped). `request` is a DraftRequest for the
    target; `make` the registry's make_drafter."""
    arms, notes = [], []
    for label in labels:
        name, shape, length = parse_arm(label)
        if name == PLAIN:
            arms.append(Arm(PLAIN, None))
            continue
        try:
            drafter = make(replace(request, name=name, shape=shape, draft_len=length))
        except (ValueError, OSError) as err:  # weights missing, another vocabulary, ...
            notes.append(f"skipped {arm_label(name, shape, length)}: {err}")
            continue
        arms.append(Arm(arm_label(name, shape, length), drafter))
    return arms, notes


def make_auto_drafter(request, make: Callable, online: bool = False, policy_file: str | Path | None = None,
                      decode: Callable | None = None) -> AutoDrafter:
    """`auto` for a target: its trained policy (assets/policy/auto-<target>.safetensors) over the arms
    that can be built here. Without a trained policy every arm is equally likely and plain decoding
    runs (the online switch, if on, then explores from there)."""
    from .policy import ArmPolicy, untrained

    path = Path(policy_file) if policy_file else policy_path(request.target or "target")
    notes = []
    if path.exists():
        policy = ArmPolicy.load(path)
    else:
        notes.append(f"no trained drafter policy at {path}: plain decoding until `python -m specviz collect` "
                     f"and `python -m specviz train-policy` have run")
        policy = untrained(list(DEFAULT_ARMS), 2 * request.target_model.config.hidden_size)
    arms, skipped = build_arms(policy.arms, request, make)
    if decode is None and request.target:
        decode = _decoder(request.target)
    return AutoDrafter(arms, policy, decode, SwitchSettings() if online else None, notes + skipped)


def _decoder(target: str) -> Callable | None:
    from .. import models

    try:
        _, tokenizer, _ = models.load_cached(target)
    except (ValueError, OSError):
        return None
    return None if tokenizer is None else (lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
