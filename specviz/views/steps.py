"""Group a run's flat event list into steps: the unit every view works with.

A step is one target forward: what was drafted, how verification went, what was emitted and what
it cost. `position` is how many tokens had been generated before the step, so a drafted node at
depth d would have been generated token number position + d - 1 (0-based).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..events import Drafted, Emitted, Event, Recording, RunFinished, RunStarted, StepFinished, Verified
from ..metrics import Metrics


@dataclass
class Step:
    index: int
    position: int = 0
    drafted: Drafted | None = None
    verified: Verified | None = None
    emitted: Emitted | None = None
    finished: StepFinished | None = None
    events: list[Event] = field(default_factory=list)

    @property
    def nodes(self):
        """The drafted nodes, with verification filled in once the step was verified."""
        if self.verified is not None:
            return self.verified.nodes
        return self.drafted.nodes if self.drafted is not None else []

    @property
    def tokens(self):
        return self.emitted.tokens if self.emitted is not None else []

    @property
    def complete(self) -> bool:
        return self.emitted is not None


def split_steps(events: list[Event]) -> list[Step]:
    """Steps in order; events before the first step (RunStarted) and after the last are left out."""
    steps: list[Step] = []
    by_index: dict[int, Step] = {}
    position = 0
    for ev in events:
        index = getattr(ev, "step", None)
        if index is None:
            continue
        step = by_index.get(index)
        if step is None:
            step = by_index[index] = Step(index, position)
            steps.append(step)
        step.events.append(ev)
        if isinstance(ev, Drafted):
            step.drafted = ev
        elif isinstance(ev, Verified):
            step.verified = ev
        elif isinstance(ev, Emitted):
            step.emitted = ev
            position += len(ev.tokens)
        elif isinstance(ev, StepFinished):
            step.finished = ev
    return steps


def instructive_step(steps: list[Step]) -> int:
    """Where the step explorer opens on a finished run: a step that shows both verdicts (an accepted and a
    rejected draft), then one that branches (a tree drafter's run: a step where it guessed several tokens
    for one position), the most accepted first; else the most accepted, else the most drafted; never an
    empty step while another drafted something. -1 without steps."""
    if not steps:
        return -1

    def shows(step: Step) -> tuple:
        statuses = [n.status for n in step.nodes]
        parents = [n.parent for n in step.nodes]
        branches = len(set(parents)) < len(parents)
        accepted = statuses.count("accepted")
        return ("accepted" in statuses and "rejected" in statuses, branches, accepted, len(statuses), -step.index)

    return max(range(len(steps)), key=lambda i: shows(steps[i]))


def run_started(events: list[Event]) -> RunStarted | None:
    return next((ev for ev in events if isinstance(ev, RunStarted)), None)


def run_finished(events: list[Event]) -> RunFinished | None:
    return next((ev for ev in reversed(events) if isinstance(ev, RunFinished)), None)


def ended_early(events: list[Event]) -> bool:
    """A recorded run (a loaded trace) that has no RunFinished: it will not go on, it stopped early."""
    return isinstance(events, Recording) and not events.complete


def latest_metrics(events: list[Event]) -> Metrics | None:
    """The newest metrics snapshot: the final one when the run finished, else the last step's."""
    for ev in reversed(events):
        if isinstance(ev, (RunFinished, StepFinished)):
            return ev.metrics
    return None


def first_step_metrics(events: list[Event]) -> Metrics | None:
    """The metrics snapshot after the first step: its target forward read the whole prompt (the prefill)."""
    return next((ev.metrics for ev in events if isinstance(ev, StepFinished)), None)


def decode_metrics(events: list[Event]) -> Metrics | None:
    """The counters of every step after the first (Metrics.minus): decoding without the prompt's prefill;
    None before a second step."""
    first, last = first_step_metrics(events), latest_metrics(events)
    if first is None or last is None or last.steps <= first.steps:
        return None
    return last.minus(first)


def generated_text(events: list[Event]) -> str:
    """The generated text so far (the final decode once the run has finished)."""
    end = run_finished(events)
    if end is not None:
        return end.text
    return "".join(tok.text for ev in events if isinstance(ev, Emitted) for tok in ev.tokens)
