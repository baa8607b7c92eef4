"""The +2/-1 draft-length schedule (transformers' "heuristic" num_assistant_tokens_schedule):
after a round whose drafts were all accepted the next round may draft 2 more; after any rejection,
1 fewer (never below 1). Starts at draft_len."""
from __future__ import annotations

from ..registry import Param
from .base import StopEntry

MAX_LENGTH = 32


class PlusTwoMinusOne:
    name = "schedule"

    def __init__(self, draft_len: int, grow: int = 2, shrink: int = 1):
        self.start, self.grow, self.shrink = draft_len, int(grow), int(shrink)
        self.reset()

    def reset(self) -> None:
        self.length = self.start

    def limit(self) -> int:
        return self.length

    def stop(self, depth: int, entropy: float, top_prob: float) -> str | None:
        return None

    def update(self, drafted: int, accepted: int) -> None:
        if drafted == 0:
            return
        if accepted == drafted:
            self.length = min(MAX_LENGTH, self.length + self.grow)
        else:
            self.length = max(1, self.length - self.shrink)

    def state(self) -> dict[str, float]:
        return {"length": self.length}


ENTRY = StopEntry(
    "schedule", "+2/−1 schedule",
    "Draft-length schedule (transformers' heuristic): all drafts accepted → the next round drafts 2 more; "
    "any rejection → 1 fewer (at least 1).",
    PlusTwoMinusOne,
    (Param("grow", 2, 1, 8, "tokens added after a fully accepted round", integer=True),
     Param("shrink", 1, 1, 8, "tokens removed after a rejection", integer=True)),
)
