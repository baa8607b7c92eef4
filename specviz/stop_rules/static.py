"""Static draft length: every round drafts exactly draft_len tokens (levels). The classic setting."""
from __future__ import annotations

from .base import StopEntry


class StaticLength:
    name = "static"

    def __init__(self, draft_len: int):
        self.length = draft_len

    def limit(self) -> int:
        return self.length

    def stop(self, depth: int, entropy: float, top_prob: float) -> str | None:
        return None

    def update(self, drafted: int, accepted: int) -> None:
        pass

    def reset(self) -> None:
        pass

    def state(self) -> dict[str, float]:
        return {"length": self.length}


ENTRY = StopEntry("static", "static length", "Every round drafts the full draft length.", StaticLength)
