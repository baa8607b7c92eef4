"""Confidence threshold (transformers' assistant_confidence_threshold): stop drafting when the
drafter's most likely token there (at temperature 1) has probability below a threshold. Unlike
transformers, which keeps the low-confidence token it just drafted, the round ends before it."""
from __future__ import annotations

from ..registry import Param
from .base import StopEntry


class ConfidenceThreshold:
    name = "confidence"

    def __init__(self, draft_len: int, threshold: float = 0.4):
        self.length, self.threshold = draft_len, threshold

    def limit(self) -> int:
        return self.length

    def stop(self, depth: int, entropy: float, top_prob: float) -> str | None:
        if top_prob < self.threshold:
            return f"top probability {top_prob:.2f} < threshold {self.threshold:.2f}"
        return None

    def update(self, drafted: int, accepted: int) -> None:
        pass

    def reset(self) -> None:
        pass

    def state(self) -> dict[str, float]:
        return {"length": self.length, "threshold": self.threshold}


ENTRY = StopEntry(
    "confidence", "confidence threshold",
    "Confidence threshold (as transformers' assistant_confidence_threshold): stop when the drafter's top "
    "probability at the next position falls below the threshold.",
    ConfidenceThreshold,
    (Param("threshold", 0.4, 0.0, 1.0, "stop below this top probability"),),
    needs_entropy=True,
)
