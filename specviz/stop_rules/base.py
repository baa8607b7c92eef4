"""The stopping-rule seam: when does a drafting round end?

A builder asks the rule before drafting each position beyond the first (a round always drafts at
least one token) and never drafts past `limit()`. After verification the engine tells the rule
how many of the round's tokens were accepted, so adaptive rules (draft-length schedules, AdaEDL's
threshold) learn online. Chains ask per token; trees ask per level (see `stop_level`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

from ..registry import Param


class StopRule(Protocol):
    name: str

    def limit(self) -> int:
        """The most tokens (chain) or levels (tree) this round may draft."""
        ...

    def stop(self, depth: int, entropy: float, top_prob: float) -> str | None:
        """Before drafting position `depth` (>= 2): a one-line reason to stop, or None to go on.
        entropy (nats) and top_prob are the drafter's distribution there at temperature 1."""
        ...

    def update(self, drafted: int, accepted: int) -> None:
        """After verification: `accepted` of the round's `drafted` tokens (on the accepted path)."""
        ...

    def reset(self) -> None: ...

    def state(self) -> dict[str, float]:
        """The rule's current numbers (length, threshold, ...), recorded with each round."""
        ...


# The note's rule when a merged tree's second drafter drafted alone (drafters/merged.py writes it,
# views/stop_note.py reads it): not a stopping rule, so its reason is shown as it is.
MERGED_ALONE = "merged"


@dataclass
class StopNote:
    """Why a drafting round ended: recorded in the draft tree and the Drafted event."""

    rule: str
    depth: int  # tokens (levels) drafted when it stopped
    reason: str  # "limit" or the rule's reason
    state: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"rule": self.rule, "depth": self.depth, "reason": self.reason, **self.state}


@dataclass(frozen=True)
class StopEntry:
    name: str
    label: str  # short, for menus
    explain: str  # plain words with the formula, for the step explorer and `models`
    make: Callable[..., StopRule]  # make(draft_len, **params)
    params: tuple[Param, ...] = ()
    needs_entropy: bool = False  # reads the drafter's distribution: model drafters only


def stop_level(rule: StopRule | None, depth: int, entropies: list[float], top_probs: list[float]) -> str | None:
    """A tree level goes on while the rule would go on for any node of its frontier."""
    if rule is None or depth < 2:
        return None
    reasons = [rule.stop(depth, h, t) for h, t in zip(entropies, top_probs)]
    return None if any(r is None for r in reasons) else reasons[0]
