"""The guided lesson: seven short steps, each on a shipped trace (no model needed), each pointing at the panel
it talks about. Pure data and pure functions; specviz/ui/teach.py shows them.

    lesson_step(i) -> LessonStep        lesson_events(step) -> the trace's events
    lesson_markdown(i, events) -> the card's text      pick_step(events, want) -> the step to open on
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import trace
from ..events import Event
from ..paths import ASSETS
from ..verify import BONUS, RESAMPLED
from .steps import instructive_step, split_steps

LESSON_DIR = ASSETS / "lesson"


@dataclass(frozen=True)
class LessonStep:
    title: str
    text: str  # markdown; {step} is the step the explorer opens on
    trace: str  # file name under assets/ (example traces) or assets/lesson/
    panel: str  # elem_id of the panel it talks about
    want: str  # which step to open on: instructive | resampled | bonus | branch | stopped | any
    tab: str = "watch"


STEPS = (
    LessonStep(
        "Draft, then verify",
        "A cheap **drafter** guesses several next tokens; the **target** model checks all of them in **one** forward "
        "pass. Here the drafter is *prompt lookup*: it copies what followed the same words earlier in the prompt. "
        "In the text, **green** tokens are drafts the target accepted, the others are the target's own. Every "
        "accepted draft is a token the target did not have to produce one forward at a time.",
        "2-summary-smollm2-pld-greedy.trace.json", "specviz-tokens", "instructive"),
    LessonStep(
        "Rejection and resampling",
        "At temperature > 0 the target accepts a draft x with probability **min(1, p(x)/q(x))** (p: target, q: "
        "drafter). At the first rejection the rest of the draft is thrown away and the target draws its token from "
        "the **residual** norm(max(0, p − q)), the part of p the drafter under-proposed. Step {step} shows one: "
        "red in the tree, and the explanation on the right spells out the numbers.",
        "3-rag-smollm2-pld-T0.7.trace.json", "specviz-tree", "resampled"),
    LessonStep(
        "The bonus token",
        "When **every** draft of a step is accepted, the target's forward has already computed the distribution "
        "after the last draft, so one more token comes for free: the **bonus** token. A step that drafts k tokens "
        "emits between 1 and k + 1. Step {step} accepted its whole draft; read how the explanation counts it.",
        "2-summary-smollm2-pld-greedy.trace.json", "specviz-explain", "bonus"),
    LessonStep(
        "Trees: why width helps",
        "A tree drafter proposes **several** candidates per position; the target checks the whole tree in one "
        "forward (each node attends only to its ancestors) and keeps the longest accepted path. Where the first "
        "guess fails a sibling may still match, so more tokens are accepted per forward, at the price of a bigger "
        "forward. Step {step} branches.",
        "lesson/tree-summary-pld-tree-greedy.trace.json", "specviz-tree", "branch"),
    LessonStep(
        "Adaptive stopping",
        "Drafting a long chain wastes work once a rejection is likely. An **adaptive stopping rule** (here AdaEDL, "
        "from the drafter's entropy) ends each draft where the drafter becomes unsure. The bars show, per step, how "
        "many tokens were drafted (grey) and how many accepted (green): the draft length changes from step to step.",
        "lesson/stop-rag-distill-kd-adaedl.trace.json", "specviz-lengths", "instructive"),
    LessonStep(
        "Which drafter pays off?",
        "Speedup needs both: high **acceptance** (α, τ tokens per forward) and a **cheap drafter** (c: drafting "
        "time per token relative to a target forward), and verifying k positions must cost about one forward. The "
        "table shows all three for this run; the **What if** tab prices any combination with this machine's "
        "measured costs.",
        "lesson/stop-rag-distill-kd-adaedl.trace.json", "specviz-metrics", "any"),
    LessonStep(
        "Lossless vs lossy",
        "The rules above are **lossless**: the output has exactly the target's distribution, whatever the drafter. "
        "*Lossy* rules (Medusa's typical acceptance, LANTERN) accept more drafts by tolerating a different "
        "distribution; this run used typical acceptance, and the status line marks it **LOSSY**. The **Lossless?** "
        "tab samples both and tests it (needs the model).",
        "lesson/lossy-rag-pld-typical-T0.7.trace.json", "specviz-status", "instructive"),
)


def lesson_step(i: int) -> LessonStep:
    return STEPS[max(0, min(i, len(STEPS) - 1))]


def trace_path(step: LessonStep) -> Path:
    return ASSETS / step.trace


def lesson_events(step: LessonStep) -> list[Event]:
    return trace.load(trace_path(step))


def pick_step(events: list[Event], want: str) -> int:
    """The step to open on: the first one that shows what the lesson talks about, else the instructive one."""
    steps = split_steps(events)
    for i, s in enumerate(steps):
        kinds = [t.kind for t in s.tokens]
        parents = [n.parent for n in s.nodes]
        accepted = sum(n.status == "accepted" for n in s.nodes)
        if (want == "resampled" and kinds and kinds[-1] == RESAMPLED and accepted >= 1
                or want == "bonus" and kinds and kinds[-1] == BONUS and len(s.nodes) >= 2
                or want == "branch" and len(set(parents)) < len(parents) and accepted >= 2):
            return i
    return max(0, instructive_step(steps))


def lesson_markdown(i: int, step_index: int) -> str:
    """The card's text: 'Step i of n · title', the explanation, and where to look."""
    s = lesson_step(i)
    return (f"**Lesson {i + 1} of {len(STEPS)} · {s.title}**\n\n" + s.text.format(step=step_index)
            + f"\n\n<small>Trace: {Path(s.trace).name.removesuffix('.trace.json')} (recorded, no model needed); "
              "the highlighted panel is the one this step is about.</small>")
