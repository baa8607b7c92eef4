"""What each button does. Every callback takes the widget values it was wired to, by name (`form`),
and the visitor's session, and returns (or, while streaming, yields) views by name (render.py).

Decoding: the request is read into a checked RunConfig (request.py), the engine is built by
api.build, the registered drafter policy (policy.py) picks the drafter, and the engine's events
stream into the session, which every view renders.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Iterator

import gradio as gr

from .. import trace, views
from ..api import TextEngine, build
from ..config import RunConfig
from ..events import Event, RunFinished, StepFinished
from ..examples import example_traces, landing_example
from ..policy import Choice, PolicyInput
from ..stop_rules import STOP_RULES
from ..views.labels import esc
from ..views.race_view import race_markdown
from .launch import gpu
from .render import export_trace, render, status_line, status_only, step_views
from .request import Request, app_limits, param_key, read_form
from ..limits import budgets
from .session import Session, ar_reference, current, remember_ar
from .streaming import Stop, Throttle, in_background, start_stream



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
    return req


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


def prepare(req: Request, session: Session) -> tuple[TextEngine, Iterator[Event]]:
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
        stream = start_stream(engine, req.prompt)
    except ValueError as err:  # ModelError is a ValueError; so is a prompt beyond the context
        raise fail(err) from None
    session.choice, session.asked, session.stepper = choice, asked, None
    session.live, session.released = stream.stop, ""
    return engine, stream


def reference_stream(req: Request) -> Iterator[Event]:
    try:
        return start_stream(build(reference_config(req.config)), req.prompt)
    except ValueError as err:
        raise fail(err) from None


@gpu
def run(form: dict, session: Session | None):
    """Stream one speculative run into every view; optionally measure the AR reference afterwards."""
    session, req = current(session), read(form)
    yield status_only(f"▶ preparing {esc(req.config.target)} with drafter {esc(req.config.drafter)}…")
    engine, stream = prepare(req, session)  # a bad prompt fails here and leaves the last run on display
    session.events = events = []
    yield render(session, download=None)
    throttle = Throttle()
    try:
        for batch in in_background(stream):
            events += batch
            if any(isinstance(ev, StepFinished) for ev in batch) and (due := throttle.due()):
                yield render(session, figures=due == "figures")
    except ValueError as err:  # a drafter or rule refusing these settings mid-run
        raise fail(err) from None
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
    ar_events = []
    for batch in in_background(reference_stream(req)):
        ar_events += batch
        if isinstance(batch[-1], StepFinished) and throttle.due() == "figures":
            yield render(session, note=f"▶ measuring the AR reference: {batch[-1].metrics.tokens} tokens…",
                         figures=False)
    remember_ar(ar_events)
    yield render(session, note="AR reference measured (cached for this prompt and settings).")


@gpu
def race(form: dict, session: Session | None):
    """AR and speculative decoding of one prompt, side by side, taking turns by their own decoding time."""
    session, req = current(session), read(form)
    engine, spec_stream = prepare(req, session)
    if engine.config.drafter == "none":
        raise gr.Error("a race needs a drafter: pick 'pld' or a model drafter", print_exception=False)
    sides = {"spec": spec_stream, "ar": reference_stream(req)}
    spec, ar = [], []
    logs = {"spec": spec, "ar": ar}
    clock = {"spec": 0.0, "ar": 0.0}
    throttle = Throttle()

    def scoreboard() -> dict:
        return dict(race_spec=views.tokens_html(spec, show_prompt=False),
                    race_ar=views.tokens_html(ar, show_prompt=False), race_score=race_markdown(spec, ar),
                    race_timeline=views.timeline_figure(spec, ar))

    while sides:
        name = min(sides, key=clock.get)  # whoever has used less of its own decoding time goes next
        for ev in sides[name]:
            logs[name].append(ev)
            if isinstance(ev, StepFinished):
                clock[name] = ev.metrics.elapsed_s
                break
        else:
            del sides[name]
        if throttle.due():
            yield scoreboard()
    remember_ar(ar)
    session.events = spec
    session.finish(spec)
    yield scoreboard() | render(session, note="Race finished: the speculative side is shown below.",
                                download=export_trace(spec))


@gpu
def step_start(form: dict, session: Session | None):
    """Start a run that advances one speculative step per click (the generator waits in the session)."""
    session, req = current(session), read(form)
    if req.config.parallel:  # its drafter runs ahead of the target: there is no single step to stop at
        raise fail(ValueError("step-by-step shows one step at a time; untick *parallel* (which overlaps steps) "
                              "to step through this run"))
    _, session.stepper = prepare(req, session)
    session.events = []
    return advance(session)


def advance(session: Session) -> dict:
    for ev in session.stepper:
        session.events.append(ev)
        if isinstance(ev, StepFinished):
            return render(session, note="Step-by-step: press **Next step ▶** for the next one.", download=None)
        if isinstance(ev, RunFinished):
            break
    stop, session.stepper = getattr(session.stepper, "stop", None), None
    session.finish(session.events)
    note = ended_note(session.events, stop) or "Step-by-step run finished."
    return render(session, note=note, download=export_trace(session.events))


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
    return step_views(current(session).events, step_index(form))


def stopped(form: dict, session: Session | None):
    session = current(session)
    if session.live is not None:
        session.live.set("cancelled")  # the engine ends at its next forward, whichever thread runs it
    events = session.events
    if views.run_finished(events) is not None:
        return status_only(status_line(events))
    m = views.latest_metrics(events)
    return status_only(status_line(events, state=f"■ stopped by you after {m.tokens if m else 0} tokens"))


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


def replay(events: list[Event], session: Session | None, note: str, source: str | None = None) -> dict:
    """Show recorded events with every view (no model needed); malformed ones are refused whole.
    `source` is the trace file itself, offered again as the download."""
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
    session.events, session.choice, session.asked, session.stepper = events, choice, None, None
    return out


def import_trace(form: dict, session: Session | None):
    path = form.get("upload")
    if not path:
        raise gr.Error("no file was uploaded", print_exception=False)
    path = path if isinstance(path, str) else getattr(path, "name", str(path))
    try:
        events = trace.load(path)
    except (ValueError, OSError) as err:
        raise gr.Error(f"could not import this file: {err}", print_exception=False) from None
    return replay(events, session, note=f"Imported trace **{esc(Path(path).name)}**: replayed without a model.",
                  source=path)


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
