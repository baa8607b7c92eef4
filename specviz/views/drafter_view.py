"""Which drafter ran and why, with each drafter's running statistics over this session's runs."""
from __future__ import annotations

from dataclasses import dataclass

from ..events import Event
from ..metrics import Metrics
from .labels import esc
from .steps import decode_metrics, run_finished, run_started


@dataclass
class RunRecord:
    """What the drafter panel keeps of a finished run."""

    drafter: str
    target: str
    metrics: Metrics
    decode: Metrics | None = None  # the steps after the first (the prompt's prefill apart)


def record(events: list[Event]) -> RunRecord | None:
    start, end = run_started(events), run_finished(events)
    if start is None or end is None:
        return None
    return RunRecord(str(start.drafter), str(start.target), end.metrics.snapshot(), decode_metrics(events))


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
    rows = ["| drafter | target | runs | decoding tok/s | acceptance per step | τ |", "|---|---|---|---|---|---|"]
    for (drafter, target), recs in sorted(table.items(), key=lambda kv: -len(kv[1])):
        m, d = Metrics(), Metrics()
        for r in recs:
            m.add(r.metrics)
            d.add(r.decode if r.decode is not None else r.metrics)
        rows.append(f"| {esc(drafter)} | {esc(target)} | {len(recs)} | {d.tokens_per_s:.1f} | "
                    f"{m.path_acceptance:.2f} | {m.tau:.2f} |")
    out.append("**This session, per drafter** (decoding time only, each run's first step, which reads the prompt, "
               "left out):\n\n" + "\n".join(rows))
    return "\n\n".join(out)
