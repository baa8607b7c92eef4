"""What each button does. Every callback takes the widget values it was wired to, by name (`form`),
and the visitor's session, and returns (or, while streaming, yields) views by name (render.py).

Decoding: the request is read into a checked RunConfig (request.py), the engine is built by
api.build, the registered drafter policy (policy.py) picks the drafter, and the engine's events
stream into the session, which every view renders.
"""
from __future__ import annotations

import functools
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import gradio as gr

from .. import models, trace, views
from ..api import TextEngine, build
from ..config import RunConfig
from ..events import Drafted, Event, RunFinished, StepFinished
from ..metrics import Metrics
from ..examples import example_traces, landing_example
from ..policy import Choice, PolicyInput
from ..stop_rules import STOP_RULES
from ..views.labels import esc
from ..views.race_view import race_markdown
from . import measured
from .launch import gpu
from .menus import preset_status
from .render import NEXT, export_trace, render, started, status_line, status_only, step_views, text_view
from .request import Request, app_limits, param_key, read_form
from ..limits import budgets
from .session import Session, ar_reference, current, remember_ar
from .streaming import (RESPONSIVE_S, TICK_S, Stop, Throttle, in_background, on_decoder, start_stream, update_interval,
                        waiting)



def fail(err: Exception) -> gr.Error:
    """An error for the page: its first line, without a traceback in the log."""
    text = str(err).strip()
    return gr.Error(text.splitlines()[0] if text else type(err).__name__, print_exception=False)


def read(form: dict) -> Request:
    try:
        req = read_form(form)
    except ValueError as err:
        raise fail(err) from None
    limits = budgets()
    for role, name in (("target", req.config.target), ("drafter", req.config.drafter)):
        if not limits.allows(name):
            raise gr.Error(f"the {role} {name} is not offered on this deployment (too large for its memory and "
                           f"CPU); set SPECVIZ_HEAVY_PRESETS=1 where it fits", print_exception=False)
        if name in models.PRESETS and preset_status(name) == "not installed":
            raise gr.Error(f"the {role} {name} is not installed here: python -m specviz fetch {name}",
                           print_exception=False)
    return req


def vocabulary(name: str) -> int | None:
    """A converted preset's vocabulary size, from its config.json (no load); None where unknown."""
    if name not in models.PRESETS or models.status(name) != "ready":
        return None
    try:
        value = json.loads((models.hf_dir(name) / "config.json").read_text()).get("vocab_size")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def check_vocabularies(req: Request) -> None:
    """A model drafter must share the target's tokenizer: refused here, before either model is loaded (the
    drafter registry refuses it again when it builds one)."""
    target, drafter = vocabulary(req.config.target), vocabulary(req.config.drafter)
    if target is not None and drafter is not None and target != drafter:
        raise fail(ValueError(f"drafter '{req.config.drafter}' has vocabulary {drafter}, the target {target}: "
                              "they must share one tokenizer"))


def check_prompt_fits(req: Request) -> None:
    """The prompt against the target's context, when the target is already loaded (no load is started
    for a check; an unloaded target's run checks it itself, before any output)."""
    if req.config.target not in models.loaded():
        return
    try:
        # no drafter and no fast path (its KV buffer): a cheap engine once the target is loaded
        engine = build(replace(reference_config(req.config), fast_path=False))
        engine.engine.check_prompt(engine.encode(req.prompt), req.settings)
    except ValueError as err:
        raise fail(err) from None


def set_image(form: dict, session: Session | None):
    """The image input (or an API client's /set_image): kept in the session, read by the next run of a
    vision-language target (the run endpoints' parameters stay as they were for API clients)."""
    current(session).image = form.get("image")
    return {}


def with_image(req: Request, session: Session) -> Request:
    """The request with the visitor's image, when its target is the vision-language one (others read text)."""
    if session.image is not None and req.config.target == models.vlm_target():
        return replace(req, image=session.image)
    return req


def check_run(form: dict, session: Session | None):
    """Run, Race and Step-by-step are checked here first, with no outputs and no wait behind a decoding run:
    a bad request is one toast, and every view keeps what it showed (no panel is marked as failed)."""
    req = read(form)
    check_vocabularies(req)
    check_prompt_fits(req)
    warning = measured.slower_warning(req.config.target, req.config.drafter)
    if warning:
        gr.Warning(warning, duration=8)  # a warning, not a refusal: the run goes ahead
    return {}


def check_race(form: dict, session: Session | None):
    """check_run for Race, which also needs a drafter to race against plain decoding."""
    if form.get("drafter") == "none":
        raise fail(ValueError(RACE_NEEDS_DRAFTER))
    return check_run(form, session)


def check_step(form: dict, session: Session | None):
    """check_run for Step-by-step, which also refuses a parallel run (it has no single step to stop at)."""
    if form.get("parallel"):
        raise fail(ValueError(PARALLEL_STEPS))
    return check_run(form, session)


RACE_NEEDS_DRAFTER = "a race needs a drafter: pick 'pld' or a model drafter"
PARALLEL_STEPS = ("step-by-step shows one step at a time; untick *parallel* (which overlaps steps) to step through "
                  "this run")


def ended_note(events: list[Event], stop: Stop | None) -> str:
    """Why a run ended before its tokens were all out, for the status line ("" for a normal end)."""
    end = views.run_finished(events)
    if end is None:
        return ""
    if end.stop_reason == "time limit":
        return (f"■ stopped: time limit ({budgets().run_seconds:g} s per run on this deployment); "
                "the partial result is shown and recorded in the trace.")
    if end.stop_reason == "cancelled" and stop is not None and stop.why.startswith("tree size"):
        return f"■ stopped: {esc(stop.why)} (lower the draft length or pick a narrower shape)."
    if end.stop_reason == "cancelled":
        return "■ stopped: cancelled."
    return ""


def step_index(form: dict) -> int:
    value = form.get("step")
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        raise gr.Error(f"step must be a whole number, got {str(value)[:40]!r}", print_exception=False) from None


def reference_config(config: RunConfig) -> RunConfig:
    """The same run without a drafter: the autoregressive reference."""
    return replace(config, drafter="none", stop="static", stop_params={}, parallel=False).checked(app_limits(), presets_only=True)


def prepare(req: Request, session: Session, batched: bool = True) -> tuple[TextEngine, Iterator[Event]]:
    """Build the engine, let the drafter policy choose (it sees the prompt's token ids, the config
    and this session's runs), and start the chosen run's event stream."""
    try:
        engine = build(req.config)
        asked = PolicyInput(engine.encode(req.prompt), req.config.drafter, req.config, list(session.history))
        choice = session.drafter_policy().choose(asked)
        if choice.drafter != req.config.drafter:
            config = replace(req.config, drafter=choice.drafter).checked(app_limits(), presets_only=True)
            engine = build(config)
        session.release("a new run started")  # a step-by-step run left open lets go of its engine
        stream = start_stream(engine, req.prompt, batched=batched, image=req.image)
    except ValueError as err:  # ModelError is a ValueError; so is a prompt beyond the context
        raise fail(err) from None
    session.choice, session.asked, session.stepper = choice, asked, None
    session.live, session.released = stream.stop, ""
    return engine, stream


def reference_stream(req: Request) -> Iterator[Event]:
    try:
        return start_stream(build(reference_config(req.config)), req.prompt, image=req.image)
    except ValueError as err:
        raise fail(err) from None


def streamed(session: Session, stream, note: str = "") -> Iterator[dict]:
    """A run's events into session.events, as streamed updates: the status line's clock while the prompt
    is read, the first step's text as soon as it comes, then the light views at most every update_interval();
    the figures wait for the end. Between two of those the handler still yields a status line every
    RESPONSIVE_S: gradio cancels a streaming handler only between two yields (an API client's cancel waits
    for the next one)."""
    session.events = events = []
    throttle, began, ticket = Throttle(update_interval), time.monotonic(), []
    last = time.monotonic()  # of the last yield
    updates = _streamed(session, stream, note, events, throttle, began, ticket)
    try:
        for out in updates:
            if out is None:  # nothing new to show: only a status line if the handler has been silent a while
                if time.monotonic() - last < RESPONSIVE_S or not events:
                    continue
                reading = views.latest_metrics(events) is None
                out = status_only(status_line(events, note, waited_s=time.monotonic() - began if reading else None))
            last = time.monotonic()
            yield out
    finally:
        updates.close()  # Stop or a closed tab: the run ends now (in_background's clean-up)


def _streamed(session: Session, stream, note: str, events: list, throttle: Throttle, began: float,
              ticket: list) -> Iterator[dict | None]:
    """streamed()'s updates, None for a batch (or a quiet tick) that brought nothing to show."""
    shown = texted = False  # the first update with text goes out at once, whatever the throttle says
    try:
        for batch in in_background(stream, tick_s=TICK_S, on_ticket=ticket.append):
            events += batch
            if not events and ticket and (place := waiting(ticket[0])):  # every place taken: where it stands
                yield status_only(place)
            elif not shown and events:  # the run has started: clear the last run's views once
                shown = True
                sending(ticket, batch)
                yield started(session, note=note)
            elif views.latest_metrics(events) is None and events and throttle.due():
                yield status_only(status_line(events, note, waited_s=time.monotonic() - began))
            elif any(isinstance(ev, StepFinished) for ev in batch) and (not texted or throttle.due()):
                texted = True
                sending(ticket, batch)
                yield render(session, note=note, figures=False)
            else:
                yield None
    except ValueError as err:  # a drafter or rule refusing these settings mid-run
        raise fail(err) from None


def sending(ticket: list, batch: list) -> None:
    """Tell the run's ticket (scheduler.py) an update with its first step goes out now (/health times it)."""
    if ticket and any(isinstance(ev, StepFinished) for ev in batch):
        ticket[0].sending()


def views_kept(handler):
    """A streaming handler whose failure after its first update is one toast and the status line: the views
    keep what they showed (gradio marks every output of a failed event, a dozen panels for one model
    that would not load). A refusal before any update (a bad request) stays an error for API clients."""

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        started = False
        try:
            for out in handler(*args, **kwargs):
                started = True
                yield out
        except Exception as err:
            if not started:
                raise
            text = err.message if isinstance(err, gr.Error) else (str(err).strip().splitlines() or [""])[0]
            text = text or type(err).__name__
            gr.Warning(text, duration=10)
            yield status_only(f"✖ {esc(text)}")

    return wrapped


@gpu
@views_kept
def run(form: dict, session: Session | None):
    """Stream one speculative run into every view; optionally measure the AR reference afterwards."""
    session, req = current(session), read(form)
    req = with_image(req, session)
    check_vocabularies(req)  # API clients skip check_run: their refusals come before any update
    check_prompt_fits(req)
    yield status_only(f"▶ loading {esc(req.config.target)} with drafter {esc(req.config.drafter)}…")
    engine, stream = prepare(req, session)  # a bad prompt fails here and leaves the last run on display
    yield from streamed(session, stream)
    events = session.events
    session.finish(events)
    download = export_trace(events)
    spec = engine.config.drafter != "none"
    note = ended_note(events, stream.stop)
    if not spec and not note:
        remember_ar(events)  # an autoregressive run is its own reference
    if note or not (form.get("measure_ar") and spec and ar_reference(events) is None):
        yield render(session, note=note, download=download)
        return
    yield render(session, note="▶ measuring the AR reference (same prompt and settings, no drafter)…",
                 download=download)
    ar_events, throttle = [], Throttle(1.0)
    for batch in in_background(reference_stream(req)):
        ar_events += batch
        if isinstance(batch[-1], StepFinished) and throttle.due():
            yield render(session, note=f"▶ measuring the AR reference: {batch[-1].metrics.tokens} tokens…",
                         figures=False)
    remember_ar(ar_events)
    measured.record(ar_events)
    yield render(session, note="AR reference measured (cached for this prompt and settings).")


@gpu
@views_kept
def race(form: dict, session: Session | None):
    """AR and speculative decoding of one prompt, one after the other, each alone on the machine (so each
    reports its own engine's speed), streamed into its own pane; the timeline puts both on one clock."""
    session, req = current(session), read(form)
    req = with_image(req, session)
    if req.config.drafter == "none":
        raise fail(ValueError(RACE_NEEDS_DRAFTER))
    engine, spec_stream = prepare(req, session)
    spec, ar = [], []
    throttle = Throttle()

    def scoreboard(figure: bool = False) -> dict:
        out = dict(race_spec=views.tokens_html(spec, show_prompt=False, show_rejected=False),
                   race_ar=views.tokens_html(ar, show_prompt=False), race_score=race_markdown(spec, ar))
        return out | (dict(race_timeline=views.timeline_figure(spec, ar)) if figure else {})

    for log, stream in ((spec, spec_stream), (ar, None)):
        stream = stream if stream is not None else reference_stream(req)
        for batch in in_background(stream):
            log += batch
            if throttle.due():
                yield scoreboard()
    remember_ar(ar)
    measured.record(ar)
    session.events = spec
    session.finish(spec)
    yield scoreboard(figure=True) | render(session, note="Race finished: the speculative side is shown below.",
                                           download=export_trace(spec))


@gpu
def step_start(form: dict, session: Session | None):
    """Start a run that advances one speculative step per click (the generator waits in the session)."""
    session, req = current(session), read(form)
    req = with_image(req, session)
    if req.config.parallel:  # its drafter runs ahead of the target: there is no single step to stop at
        raise fail(ValueError(PARALLEL_STEPS))
    _, session.stepper = prepare(req, session, batched=False)  # advanced by clicks (pull), not in rounds
    session.events = []
    return advance(session)


DRAFTED_NOTE = ("Step-by-step, step {step}: the drafter proposed {n} token{s} (the tree, grey: not checked yet). "
                "Press **Verify ▶** to let the target check them all in one forward.")
VERIFIED_NOTE = ("Step-by-step, step {step}: verified, {k} token{s} emitted (green: accepted, red: rejected). "
                 "Press **Draft ▶** for the drafter's next guesses.")


def pull(stepper) -> list[Event]:
    """A step-by-step run's events up to its next pause: a drafted tree, the end of a step, or the end.
    Made on the decoding thread (on_decoder), between other visitors' turns; the time it takes counts
    against the run's time limit like a turn."""
    out, t0 = [], time.perf_counter()
    for ev in stepper:
        out.append(ev)
        if (isinstance(ev, Drafted) and ev.nodes) or isinstance(ev, (StepFinished, RunFinished)):
            break
    clock = getattr(stepper, "clock", None)
    if clock is not None:
        clock.used += time.perf_counter() - t0
    return out


def advance(session: Session) -> dict:
    """Two clicks per step: up to the draft (the tree appears), then through the verification (the verdicts)."""
    stepper = session.stepper
    for ev in on_decoder(lambda: pull(stepper)):
        session.events.append(ev)
        if isinstance(ev, Drafted) and ev.nodes:  # nothing drafted: straight on to the target's own token
            n = len(ev.nodes)
            return render(session, note=DRAFTED_NOTE.format(step=ev.step, n=n, s="s" if n != 1 else ""),
                          download=None) | dict(next_btn=gr.Button("Verify ▶"))
        if isinstance(ev, StepFinished):
            k = ev.metrics.tokens - (views.latest_metrics(session.events[:-1]) or Metrics()).tokens
            return render(session, note=VERIFIED_NOTE.format(step=ev.step, k=k, s="s" if k != 1 else ""),
                          download=None) | dict(next_btn=gr.Button("Draft ▶"))
        if isinstance(ev, RunFinished):
            break
    stop, session.stepper = getattr(session.stepper, "stop", None), None
    session.finish(session.events)
    note = ended_note(session.events, stop) or "Step-by-step run finished."
    return render(session, note=note, download=export_trace(session.events)) | dict(next_btn=gr.Button(NEXT))


@gpu
def step_next(form: dict, session: Session | None):
    """Show the next step: replay a recorded one, or run one more step of a live step-by-step run."""
    session, i = current(session), step_index(form)
    n = len(views.split_steps(session.events))
    if i + 1 < n:
        return render(session, index=i + 1)
    if session.stepper is not None:
        return advance(session)
    note = "This is the last step." if n else "Nothing to step through yet: press **Step-by-step** or **Run**."
    if session.released and views.run_finished(session.events) is None:
        note = (f"This step-by-step run was released ({esc(session.released)}) to free memory; its steps so far "
                "stay on display. Press **Step-by-step** to start again.")
    return render(session, note=note, index=i)


def step_prev(form: dict, session: Session | None):
    session, i = current(session), step_index(form)
    return render(session, index=max(0, i - 1))


def show_step(form: dict, session: Session | None):
    """The tree, the explanation and the outlined text of one step of the run on display."""
    return step_views(current(session), step_index(form))


def show_rejected(form: dict, session: Session | None):
    """The text with the rejected drafts struck through inline, or without them (the toggle)."""
    session = current(session)
    session.show_rejected = bool(form.get("show_rejected"))
    return dict(tokens=text_view(session, step_index(form)))


def stopped(form: dict, session: Session | None):
    session = current(session)
    if session.live is not None:
        session.live.set("cancelled")  # the engine ends at its next forward, whichever thread runs it
    events = list(session.events)  # what was on display when Stop was pressed
    if views.run_finished(events) is not None:
        return status_only(status_line(events))
    m = views.latest_metrics(events)
    path = export_trace(events, partial=True)
    note = "The partial run can be downloaded as a trace (marked *partial* in its name)." if path else ""
    return dict(status=status_line(events, note, state=f"■ stopped by you after {m.tokens if m else 0} tokens"),
                download=gr.DownloadButton(value=path, interactive=path is not None))


# ---------------------------------------------------------------- recorded runs


def check_shape(events: list[Event]) -> None:
    """Refuse traces larger than the page shows (trace.loads already checked types and links)."""
    steps = views.split_steps(events)  # the limits are trace.py's, defined once
    if len(steps) > trace.MAX_STEPS:
        raise ValueError(f"trace has {len(steps)} steps; the app shows at most {trace.MAX_STEPS}")
    for step in steps:
        if len(step.nodes) > trace.MAX_NODES_PER_STEP:
            raise ValueError(f"step {step.index} has {len(step.nodes)} draft nodes; "
                             f"at most {trace.MAX_NODES_PER_STEP} are allowed")
    tokens = sum(len(step.tokens) for step in steps)
    if tokens > trace.MAX_TOKENS:
        raise ValueError(f"trace has {tokens} tokens; the app shows at most {trace.MAX_TOKENS}")


def recorded_controls(events: list[Event]) -> dict:
    """The request widgets set to what a recorded run used, so the page's controls describe the run
    on display and Run decodes it live: always its prompt; the rest when the trace records a run
    config this page can run (trace version 2, installed models)."""
    start = views.run_started(events)
    if start is None or not isinstance(start.prompt, str):
        return {}
    out = dict(prompt=start.prompt)
    try:
        config = RunConfig.from_dict(start.config).checked(app_limits(), presets_only=True)
    except (ValueError, TypeError):  # an older trace, a model not installed here, or limits beyond the page's
        return out
    s = config.settings
    out.update(target=config.target, drafter=config.drafter, strategy=config.shape, draft_len=config.draft_len,
               temperature=s.temperature, top_p=s.top_p, seed=s.seed, max_new_tokens=s.max_new_tokens,
               rule=config.rule, stop=config.stop, fast_path=config.fast_path, parallel=config.parallel)
    for p in STOP_RULES.get(config.stop).params:
        out[param_key(config.stop, p)] = config.stop_params[p.name]
    return out


def replay(events: list[Event], session: Session | None, note: str, source: str | None = None,
           commit: bool = True) -> dict:
    """Show recorded events with every view (no model needed); malformed ones are refused whole.
    `source` is the trace file itself, offered again as the download. commit=False leaves the session
    as it is and hands what it would hold under "_shown" (a checked upload, shown a click later)."""
    session = current(session)
    start = views.run_started(events)
    choice = Choice(str(start.drafter), "recorded in the trace") if start is not None else None
    candidate = Session(events=events, history=session.history, choice=choice)
    try:
        check_shape(events)
        out = render(candidate, note=note, download=source) | recorded_controls(events)
    except Exception as err:  # a hostile trace may break any view: refuse it, keep what was on display
        raise gr.Error(f"this trace cannot be shown: {err if isinstance(err, ValueError) else type(err).__name__}",
                       print_exception=False) from None
    if not commit:
        return out | dict(_shown=(events, choice, None, None))
    session.events, session.choice, session.asked, session.stepper = events, choice, None, None
    return out


def uploaded(form: dict) -> str:
    path = form.get("upload")
    if not path:
        raise gr.Error("no file was uploaded", print_exception=False)
    return path if isinstance(path, str) else getattr(path, "name", str(path))


def imported(path: str, session: Session | None) -> dict:
    """The views of an uploaded trace, or one gr.Error saying why it cannot be shown."""
    try:
        events = trace.load(path)
    except (ValueError, OSError) as err:
        raise gr.Error(f"could not import this file: {err}", print_exception=False) from None
    return replay(events, session, note=f"Imported trace **{esc(Path(path).name)}**: replayed without a model.",
                  source=path, commit=False)


def check_trace(form: dict, session: Session | None):
    """An upload is read and rendered here first, with no outputs: a bad file is one toast and the run on
    display stays; a good one is kept for import_trace to show."""
    session = current(session)
    path = uploaded(form)
    session.pending = (path, imported(path, session))
    return {}


def import_trace(form: dict, session: Session | None):
    session, path = current(session), uploaded(form)
    pending, session.pending = session.pending, None
    out = pending[1] if pending is not None and pending[0] == path else imported(path, session)
    session.events, session.choice, session.asked, session.stepper = out.pop("_shown")
    return out


def load_example(form: dict, session: Session | None):
    traces = example_traces()
    name = form.get("example")
    if name not in traces:
        name = landing_example()
        if name is None:
            return render(current(session))
    return replay(trace.load(traces[name]), session,
                  note=f"Showing the recorded example **{esc(name)}** (no model needed). "
                       "Press **Run** to decode live.", source=str(traces[name]))


def first_view(form: dict, session: Session | None):
    """What a visitor sees on arrival: a recorded example, so the page is alive before any model runs."""
    try:
        return load_example(form, session)
    except gr.Error:
        return render(current(session))
