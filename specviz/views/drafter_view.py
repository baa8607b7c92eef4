"""Which drafter ran and why, with each drafter's running statistics over this session's runs."""
from __future__ import annotations

from dataclasses import dataclass

from ..events import Event
from .labels import esc
from .steps import run_finished, run_started


@dataclass
class RunRecord:
    """What the drafter panel keeps of a finished run."""

    drafter: str
    target: str
    tokens: int
    elapsed_s: float
    drafted: int
    accepted: int
    steps: int


def record(events: list[Event]) -> RunRecord | None:
    start, end = run_started(events), run_finished(events)
    if start is None or end is None:
        return None
    m = end.metrics
    return RunRecord(str(start.drafter), str(start.target), m.tokens, m.elapsed_s, m.drafted, m.accepted, m.steps)


def drafter_markdown(history: list[RunRecord], choice: str | None = None, reason: str | None = None) -> str:
    out = []
    if choice:
        out.append(f"**Drafter used:** `{esc(choice)}` — {esc(reason or 'your pick')}.")
    if not history:
        out.append("*Statistics per drafter accumulate here as you run prompts in this session.*")
        return "\n\n".join(out)
    table: dict[tuple[str, str], list[RunRecord]] = {}
    for rec in history:
        table.setdefault((rec.drafter, rec.target), []).append(rec)
    rows = ["| drafter | target | runs | tokens/s | acceptance | τ |", "|---|---|---|---|---|---|"]
    for (drafter, target), recs in sorted(table.items(), key=lambda kv: -len(kv[1])):
        tokens, seconds = sum(r.tokens for r in recs), sum(r.elapsed_s for r in recs)
        drafted, accepted = sum(r.drafted for r in recs), sum(r.accepted for r in recs)
        steps = sum(r.steps for r in recs)
        rows.append(f"| {esc(drafter)} | {esc(target)} | {len(recs)} | {tokens / seconds if seconds else 0:.1f} | "
                    f"{accepted / drafted if drafted else 0:.2f} | {tokens / steps if steps else 0:.2f} |")
    out.append("**This session, per drafter** (decoding time only):\n\n" + "\n".join(rows))
    return "\n\n".join(out)
