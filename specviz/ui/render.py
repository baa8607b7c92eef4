"""Rendering: the run on display (a session's events) -> every view, by name.

render() returns {view name: value}; the layout maps names to components in one place
(layout.wire), so no callback keeps a tuple in step with an outputs= list.
"""
from __future__ import annotations

import tempfile
import threading
import time
import uuid
from pathlib import Path

import gradio as gr

from .. import trace, views
from ..events import Event, Prefilled
from ..rules import VERIFY_RULES
from ..views.choice_view import choice_figure, choice_markdown, choices
from ..views.labels import esc
from . import measured
from .session import Session, ar_reference

# every view of a run, in the order API clients receive them
VIEWS = ("status", "tokens", "text", "step", "tree", "explain", "entropy", "metrics", "metrics_plot",
         "drafter_panel", "download")
NEXT = "Next step ▶"  # the step explorer's next button, between two-click steps
EXPORT_KEEP_S = 3600  # exported traces are handed to gradio's cache at once; keep an hour
PRUNE_EVERY_S = 60  # a classroom hour leaves ~1,400 traces: listing them at every run's end cost 7 % of the app's CPU
_pruned = {"at": float("-inf")}
_prune_lock = threading.Lock()


def prune(folder: Path, cutoff: float) -> None:
    """Delete the folder's traces last written before `cutoff`. Visitors' runs ending together prune the
    same folder at once: a file another one removed first is skipped, not an error (it was, and ended
    those runs with "No such file" once their exports were an hour old)."""
    for old in folder.glob("*.json"):
        try:
            if old.stat().st_mtime < cutoff:
                old.unlink()
        except FileNotFoundError:
            pass


def export_trace(events: list[Event], partial: bool = False) -> str | None:
    """A finished run saved as a trace file for the download button (None while unfinished, unless
    `partial`: a stopped run, saved as far as it got). A run that did not reach its end (stopped, time
    limit, or no RunFinished yet) has "partial" in the file's name; the trace itself says so too (its
    RunFinished.stop_reason, or none)."""
    end = views.run_finished(events)
    if views.run_started(events) is None or (end is None and not partial):
        return None
    folder = Path(tempfile.gettempdir()) / "specviz-exports"
    folder.mkdir(exist_ok=True)
    now = time.monotonic()
    if now - _pruned["at"] >= PRUNE_EVERY_S and _prune_lock.acquire(blocking=False):  # one handler prunes, now and then
        try:
            _pruned["at"] = now
            prune(folder, time.time() - EXPORT_KEEP_S)
        finally:
            _prune_lock.release()
    start = views.run_started(events)
    tag = "".join(c if c.isalnum() or c in "-." else "-" for c in f"{start.target}-{start.drafter}")[:60]
    cut = end is None or end.stop_reason in ("cancelled", "time limit")
    path = folder / (f"specviz-{tag}-{'partial-' if cut else ''}{time.strftime('%Y%m%d-%H%M%S')}-"
                     f"{uuid.uuid4().hex[:8]}.trace.json")
    trace.save(events, path)
    return str(path)


def lossy(rule) -> bool:
    return rule in VERIFY_RULES and not VERIFY_RULES.get(rule).lossless


def stopping(start) -> str:
    """' · stops: schedule (grow 2, shrink 1)' for a run recorded with a stopping rule other than static."""
    config = start.config if isinstance(start.config, dict) else {}
    name = config.get("stop")
    if not isinstance(name, str) or name == "static":
        return ""
    params = config.get("stop_params") if isinstance(config.get("stop_params"), dict) else {}
    numbers = ", ".join(f"{esc(k)} {v:g}" if isinstance(v, (int, float)) else f"{esc(k)} {esc(v)}"
                        for k, v in list(params.items())[:8])
    return f" · stopping rule {esc(name)}" + (f" ({numbers})" if numbers else "")


def speed(events: list[Event]) -> str:
    """'12.3 tok/s decoding · prompt read in 0.41 s' (decode speed once there is a second step)."""
    first, decode = views.first_step_metrics(events), views.decode_metrics(events)
    rate = f"{decode.tokens_per_s:.1f} tok/s decoding" if decode is not None else ""
    read = f"prompt read in {first.elapsed_s:.2f} s" if first is not None else ""
    return " · ".join(x for x in (rate, read) if x)


def status_line(events: list[Event], note: str = "", state: str | None = None, waited_s: float | None = None) -> str:
    """What the run on display is doing: reading the prompt, decoding, done (or why it ended)."""
    start, end = views.run_started(events), views.run_finished(events)
    if start is None:
        return note or "Ready."
    m = views.latest_metrics(events)
    warn = " (**LOSSY**: the output distribution is not the target's)" if lossy(start.rule) else ""
    what = (f"**{esc(start.target)}** ← drafter **{esc(start.drafter)}** · rule {esc(start.rule)}{warn}"
            + stopping(start))
    figures = speed(events)
    if state is None and end is not None:
        state = f"✔ done ({esc(end.stop_reason)}) · {end.metrics.tokens} tokens" + (f" · {figures}" if figures else "")
    elif state is None and views.ended_early(events):
        state = f"■ recorded run ended early (incomplete trace: no RunFinished) · {m.tokens if m else 0} tokens"
    elif state is None and m is None:
        clock = f" · {waited_s:.0f} s" if waited_s is not None else ""
        read = next((ev for ev in reversed(events) if isinstance(ev, Prefilled)), None)
        read = f"{read.done:,} of {start.prompt_tokens:,} tokens read" if read else f"{start.prompt_tokens} tokens"
        state = f"▶ reading the prompt ({read}) and drafting the first step…{clock}"
    elif state is None:
        state = f"▶ decoding: step {m.steps} · {m.tokens} tokens" + (f" · {figures}" if figures else "")
    return f"{what} · {state}" + (f"  \n{note}" if note else "")


def step_slider(n_steps: int, index: int):
    return gr.Slider(minimum=0, maximum=max(n_steps - 1, 1), value=max(0, min(index, max(n_steps - 1, 0))), step=1,
                     label=f"step (one target forward) · {n_steps} so far" if n_steps else "step")


def text_view(session: Session, index: int | None) -> str:
    """The generated text, the step `index` outlined, rejected drafts inline if the visitor asked."""
    n = len(views.split_steps(session.events))
    i = n - 1 if index is None else index
    return views.tokens_html(session.events, show_rejected=session.show_rejected, focus=max(0, min(i, n - 1)))


def step_views(session: Session, index) -> dict:
    """The step explorer for one step: its tree, its explanation and the text with the step outlined."""
    events = session.events
    return dict(tree=views.step_tree_figure(events, index), explain=views.explain_run_step(events, index),
                tokens=text_view(session, index))


def render(session: Session, note: str = "", index: int | None = None, figures: bool = True,
           download: str | None | bool = False) -> dict:
    """Every view of the run on display, by name. figures=False leaves the heavy ones as they are;
    download=False leaves the download button as it is, None disables it, a path offers that file."""
    events = session.events
    steps = views.split_steps(events)
    n = len(steps)
    done = views.run_finished(events) is not None or views.ended_early(events)
    i = (views.instructive_step(steps) if done else n - 1) if index is None else index
    out = dict(status=status_line(events, note), tokens=text_view(session, i),
               text=views.generated_text(events), step=step_slider(n, i),
               metrics=views.metrics_markdown(events, ar_reference(events), measured.curve_of(events)))
    if not figures:
        return out
    drafter, reason = (session.choice.drafter, session.choice.reason) if session.choice else (None, None)
    out.update(tree=views.step_tree_figure(events, i), explain=views.explain_run_step(events, i),
               entropy=views.entropy_figure(events), metrics_plot=views.metrics_figure(events),
               timeline=views.timeline_figure(events), lengths=views.lengths_figure(events),
               drafter_panel=_with_choices(views.drafter_markdown(session.history, drafter, reason), events))
    if download is not False:
        out["download"] = gr.DownloadButton(value=download, interactive=download is not None)
    out["next_btn"] = gr.Button(NEXT)  # a live step-by-step run says Verify ▶ / Draft ▶ instead (callbacks.advance)
    chosen = choices(events) is not None  # only an `auto` run has a choices figure (the others skip drawing one)
    out["choice_plot"] = gr.Plot(choice_figure(events) if chosen else None, visible=chosen)
    return out


def started(session: Session, note: str = "") -> dict:
    """A new run's first update: the light views, and the last run's figures cleared rather than drawn
    empty (they are drawn once, at the end; a busy server starts many runs a second)."""
    return render(session, note, figures=False) | dict(
        tree=None, explain="", entropy=None, metrics_plot=None, timeline=None, lengths=None,
        choice_plot=gr.Plot(None, visible=False), download=gr.DownloadButton(value=None, interactive=False),
        next_btn=gr.Button(NEXT))


def _with_choices(panel: str, events) -> str:
    """The drafter panel, with an `auto` run's choices first (views/choice_view.py)."""
    choice = choice_markdown(events, measured.curve_of(events), ar_reference(events))
    return f"{choice}\n\n{panel}" if choice else panel


def status_only(text: str) -> dict:
    return dict(status=text)
