"""The Gradio app: watch speculative decoding happen, token by token.

The engine yields typed events; this module only turns user input into an engine (via api.py),
collects the events of the run on display and hands them to the pure views in specviz/views/.
Layout and callbacks live here; no decoding logic does.

    demo = build_demo(); demo.launch(**launch_kwargs())      # see the top-level app.py
"""
from __future__ import annotations

import math
import os
import queue
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

import gradio as gr  # noqa: E402

from . import models, trace, views  # noqa: E402
from .api import MAX_DRAFT_LEN, MODEL_FREE_DRAFTERS, build_engine, rule_names  # noqa: E402
from .drafters import strategies  # noqa: E402
from .drafters.strategies import STRATEGIES  # noqa: E402
from .engine import Settings, check_settings  # noqa: E402
from .events import Event, RunFinished, StepFinished  # noqa: E402
from .metrics import Metrics  # noqa: E402
from .views.drafter_view import RunRecord  # noqa: E402
from .views.labels import esc  # noqa: E402
from .views.race_view import EXPLAINER as RACE_EXPLAINER  # noqa: E402
from .views.race_view import race_markdown  # noqa: E402

try:  # on a Hugging Face ZeroGPU Space, decoding functions borrow a GPU; elsewhere a no-op
    import spaces

    gpu = spaces.GPU
except ImportError:
    def gpu(fn):
        return fn

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_TARGET = "smollm2-135m"
DEFAULT_DRAFTER = "pld"
MAX_PROMPT_CHARS = 20_000
MAX_NEW_TOKENS_UI = 512  # the engine allows more; the app keeps a shared machine responsive
MAX_TEMPERATURE = 2.0
TEXT_EVERY_S = 0.1  # streamed text refresh, at most this often
FIGURES_EVERY_S = 0.5  # figure refresh, at most this often (and always at the end)
AR_CACHE_SIZE = 64
MAX_HISTORY = 500  # run records kept per session for the drafter panel
SESSION_TTL_S = 6 * 3600  # a session's runs are forgotten this long after its last use
# Trace limits are defined once, in specviz/trace.py (trace.load refuses a file beyond them).
MAX_TRACE_STEPS, MAX_TRACE_NODES_PER_STEP, MAX_TRACE_TOKENS = trace.MAX_STEPS, trace.MAX_NODES_PER_STEP, trace.MAX_TOKENS

EXAMPLE_PROMPTS = [
    ("code", "Write a Python function `is_palindrome(s)` that ignores case and punctuation, with a docstring "
     "and two doctests."),
    ("summarization", "Summarize in two sentences: The James Webb Space Telescope launched on 25 December 2021 and "
     "reached its orbit around the second Lagrange point a month later. Its gold-coated beryllium mirror, "
     "6.5 metres across, collects infrared light from the earliest galaxies. The telescope's sunshield, "
     "the size of a tennis court, keeps the instruments below 50 kelvin so that their own heat does not drown "
     "out faint signals."),
    ("QA", "What is the difference between a process and a thread? Answer briefly."),
    ("math", "A train travels 180 km in 2.5 hours. What is its average speed in km/h? Show the steps."),
    ("translation", "Translate into French: The weather is nice today, so we are going to the park with the children."),
    ("RAG", "Context: specviz shows speculative decoding. A small drafter model proposes several tokens; the large "
     "target model verifies all of them in one forward pass; accepted tokens are kept, and at the first rejection "
     "the target resamples a token from the residual distribution.\n\nQuestion: According to the context, what does "
     "the target model do at the first rejection?"),
]

INTRO = """# specviz · watch speculative decoding, token by token
A small, cheap **drafter** guesses the next few tokens; the big **target** model checks all the guesses in
**one** forward pass, keeps those it agrees with and adds one token of its own. The text is exactly what the
target alone would write, only faster when the guesses are good. Pick a prompt and press **Run**, or explore the
recorded example already on display (no model needed)."""


# ---------------------------------------------------------------- requests, choices, caches


@dataclass(frozen=True)
class Request:
    prompt: str
    target: str
    drafter: str
    strategy: str
    draft_len: int
    settings: Settings
    rule: str | None = None  # None: greedy at temperature 0, else sampling


def _number(value, name: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {str(value)[:40]!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return x


def _integer(value, name: str, lo: int, hi: int) -> int:
    x = _number(value, name)
    if x != int(x) or not lo <= x <= hi:
        raise ValueError(f"{name} must be a whole number in [{lo}, {hi}], got {value!r}")
    return int(x)


def _check_model(name: str, role: str) -> None:
    if name not in models.PRESETS:
        raise ValueError(f"unknown {role} {str(name)[:60]!r}; choose one of: {', '.join(models.PRESETS)}")
    if os.environ.get("SPECVIZ_FROM_HUB") != "1" and models.status(name) == "not installed":
        raise ValueError(f"the {role} model {name} is not installed on this machine; "
                         f"run `python -m specviz fetch {name}` first (or pick an installed one)")


def read_request(prompt, target, drafter, strategy, draft_len, temperature, top_p, seed, max_new_tokens,
                 rule="auto") -> Request:
    """Validate everything a user (or an API client) sends; ValueError with one clear line otherwise."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty: type something or pick an example")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"the prompt has {len(prompt):,} characters; the limit here is {MAX_PROMPT_CHARS:,}")
    for value, what in ((target, "target"), (drafter, "drafter"), (strategy, "strategy"), (rule, "verification rule")):
        if not isinstance(value, str):  # a list from an API client would fail as "unhashable type"
            raise ValueError(f"the {what} must be a name, got {type(value).__name__}")
    _check_model(target, "target")
    if drafter not in MODEL_FREE_DRAFTERS:
        _check_model(drafter, "drafter")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {str(strategy)[:40]!r}; choose one of: {', '.join(STRATEGIES)}")
    draft_len = _integer(draft_len, "draft length", 1, MAX_DRAFT_LEN)
    temperature = _number(temperature, "temperature")
    if not 0 <= temperature <= MAX_TEMPERATURE:
        raise ValueError(f"temperature must be in [0, {MAX_TEMPERATURE}], got {temperature}")
    top_p = _number(top_p, "top-p")
    if not 0 < top_p <= 1:
        raise ValueError(f"top-p must be in (0, 1], got {top_p}")
    seed = _integer(seed, "seed", 0, 2**31 - 1)
    max_new = _integer(max_new_tokens, "max new tokens", 1, MAX_NEW_TOKENS_UI)
    if strategy in getattr(strategies, "GREEDY_ONLY", ()) and temperature > 0 and drafter not in MODEL_FREE_DRAFTERS:
        raise ValueError(f"the '{strategy}' draft shape works with greedy decoding only: set temperature to 0")
    if rule not in ("auto", *rule_names()):
        raise ValueError(f"unknown verification rule {str(rule)[:40]!r}; choose one of: auto, {', '.join(rule_names())}")
    settings = Settings(max_new_tokens=max_new, temperature=temperature, top_p=top_p, seed=seed)
    check_settings(settings)
    return Request(prompt, target, drafter, strategy, draft_len, settings, None if rule == "auto" else rule)


def choose_drafter(requested: str, history: list[RunRecord]) -> tuple[str, str]:
    """Which drafter runs next, and why. Today: the user's pick. A learned policy plugs in here; it
    gets this session's per-drafter run records and returns (drafter name, one-line reason)."""
    return requested, "your pick in the drafter menu"


_AR_CACHE: OrderedDict[tuple, Metrics] = OrderedDict()
_AR_LOCK = threading.Lock()


def reference_key(events: list[Event]) -> tuple | None:
    start = views.run_started(events)
    if start is None or not isinstance(start.settings, dict):
        return None
    try:
        settings = tuple(sorted((str(k), repr(v)) for k, v in start.settings.items()))
        return str(start.target), str(start.prompt), settings
    except TypeError:
        return None


def ar_reference(events: list[Event]) -> Metrics | None:
    key = reference_key(events)
    with _AR_LOCK:
        return _AR_CACHE.get(key) if key is not None else None


def remember_ar(events: list[Event]) -> None:
    end, key = views.run_finished(events), reference_key(events)
    if end is None or key is None or end.stop_reason == "cancelled":
        return
    with _AR_LOCK:
        _AR_CACHE[key] = end.metrics
        _AR_CACHE.move_to_end(key)
        while len(_AR_CACHE) > AR_CACHE_SIZE:
            _AR_CACHE.popitem(last=False)


def start_stream(req: Request, drafter: str) -> Iterator[Event]:
    """Build the engine and start its event stream; input errors surface here, before any output."""
    engine = build_engine(req.target, drafter, req.draft_len, req.rule, req.strategy)
    stream = engine.stream_text(req.prompt, req.settings)
    first = next(stream)  # runs the engine's checks (prompt vs context, settings)

    def chained():
        yield first
        yield from stream

    return chained()


_DONE = object()


def in_background(stream: Iterator[Event]) -> Iterator[list[Event]]:
    """Run an event stream in its own thread and yield the events as they pile up, in batches.

    Decoding then never waits for the page: while a batch is rendered and sent, the engine goes on.
    Closing this generator (Stop, or the visitor leaving) stops the engine after its current event.
    """
    box: queue.Queue = queue.Queue()
    stop = threading.Event()

    def produce():
        try:
            for ev in stream:
                box.put(ev)
                if stop.is_set():
                    break
        except BaseException as err:  # handed to the consumer, which raises it
            box.put(err)
        finally:
            getattr(stream, "close", lambda: None)()
            box.put(_DONE)

    threading.Thread(target=produce, daemon=True, name="specviz-engine").start()
    try:
        while True:
            batch = [box.get()]
            while not box.empty():
                batch.append(box.get_nowait())
            for item in batch:
                if isinstance(item, BaseException):
                    raise item
            events = [item for item in batch if item is not _DONE]
            if events:
                yield events
            if len(events) < len(batch):
                return
    finally:
        stop.set()


# ---------------------------------------------------------------- per-session state


@dataclass
class Session:
    events: list = field(default_factory=list)  # the run on display: live, replayed or imported
    history: list[RunRecord] = field(default_factory=list)
    stepper: Iterator[Event] | None = None  # a live run advanced one step per click
    choice: tuple[str, str] | None = None  # (drafter, reason) of the run on display

    def finish(self, events: list[Event]) -> None:
        rec = views.record(events)
        if rec is not None:
            self.history = self.history[-(MAX_HISTORY - 1):] + [rec]


# ---------------------------------------------------------------- rendering (views of session.events)

VIEW_NAMES = ("status", "tokens", "text", "step", "tree", "explain", "entropy", "metrics", "metrics_plot",
              "drafter", "download")


def _export(events: list[Event]) -> str | None:
    if views.run_finished(events) is None:
        return None
    folder = Path(tempfile.gettempdir()) / "specviz-exports"
    folder.mkdir(exist_ok=True)
    cutoff = time.time() - 3600
    for old in folder.glob("*.json"):  # exports are handed to gradio's cache at once; keep an hour
        if old.stat().st_mtime < cutoff:
            old.unlink(missing_ok=True)
    start = views.run_started(events)
    tag = "".join(c if c.isalnum() or c in "-." else "-" for c in f"{start.target}-{start.drafter}")[:60]
    path = folder / f"specviz-{tag}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.trace.json"
    trace.save(events, path)
    return str(path)


def status_line(events: list[Event], note: str = "", state: str | None = None) -> str:
    start, end = views.run_started(events), views.run_finished(events)
    if start is None:
        return note or "Ready."
    m = views.latest_metrics(events)
    lossy = " (**LOSSY**: the output distribution is not the target's)" if str(start.rule).endswith("-lossy") else ""
    what = f"**{esc(start.target)}** ← drafter **{esc(start.drafter)}** · rule {esc(start.rule)}{lossy}"
    if state is None and end is not None:
        m = end.metrics
        state = f"✔ done ({esc(end.stop_reason)}) · {m.tokens} tokens · {m.tokens_per_s:.1f} tok/s"
    elif state is None and views.ended_early(events):
        state = f"■ recorded run ended early (incomplete trace: no RunFinished) · {m.tokens if m else 0} tokens"
    elif state is None:
        running = f"▶ running: step {m.steps} · {m.tokens} tokens · {m.tokens_per_s:.1f} tok/s" if m else ""
        state = running or "▶ starting…"
    return f"{what} · {state}" + (f"  \n{note}" if note else "")


def step_slider(n_steps: int, index: int) -> dict:
    return gr.Slider(minimum=0, maximum=max(n_steps - 1, 1), value=max(0, min(index, max(n_steps - 1, 0))), step=1,
                     label=f"step (one target forward) · {n_steps} so far" if n_steps else "step")


def render(session: Session, note: str = "", index: int | None = None, figures: bool = True,
           download: str | None | bool = False) -> tuple:
    """Every view of the run on display, in VIEW_NAMES order. figures=False skips the heavy ones."""
    events = session.events
    n = len(views.split_steps(events))
    i = n - 1 if index is None else index
    skip = gr.skip()
    light = (status_line(events, note), views.tokens_html(events, focus=max(0, min(i, n - 1))),
             views.generated_text(events))
    if not figures:
        return light + (step_slider(n, i), skip, skip, skip, views.metrics_markdown(events, ar_reference(events)),
                        skip, skip, skip)
    choice, reason = session.choice or (None, None)
    dl = skip if download is False else gr.DownloadButton(value=download, interactive=download is not None)
    return light + (
        step_slider(n, i),
        views.step_tree_figure(events, i),
        views.explain_run_step(events, i),
        views.entropy_figure(events),
        views.metrics_markdown(events, ar_reference(events)),
        views.metrics_figure(events),
        views.drafter_markdown(session.history, choice, reason),
        dl,
    )


class Throttle:
    """Says when enough time has passed since the last refresh of the text and of the figures."""

    def __init__(self):
        self.text = self.figures = 0.0

    def due(self) -> str | None:
        now = time.perf_counter()
        if now - self.figures >= FIGURES_EVERY_S:
            self.figures = self.text = now
            return "figures"
        if now - self.text >= TEXT_EVERY_S:
            self.text = now
            return "text"
        return None


# ---------------------------------------------------------------- callbacks


def _fail(err: Exception) -> gr.Error:
    return gr.Error(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__, print_exception=False)


def _begin(session: Session | None, controls: tuple) -> tuple[Session, Request, str, str]:
    session = session if isinstance(session, Session) else Session()
    try:
        req = read_request(*controls)
    except ValueError as err:
        raise _fail(err) from None
    drafter, reason = choose_drafter(req.drafter, session.history)
    return session, req, drafter, reason


def _open_stream(req: Request, drafter: str) -> Iterator[Event]:
    try:
        return start_stream(req, drafter)
    except ValueError as err:  # ModelError is a ValueError
        raise _fail(err) from None


@gpu
def run(prompt, target, drafter, strategy, draft_len, temperature, top_p, seed, max_new_tokens, rule, measure_ar,
        session: Session | None = None):
    """Stream one speculative run into every view; optionally measure the AR reference afterwards."""
    session, req, drafter, reason = _begin(session, (prompt, target, drafter, strategy, draft_len, temperature,
                                                     top_p, seed, max_new_tokens, rule))
    yield (f"▶ preparing {esc(req.target)} with drafter {esc(drafter)}…",) + (gr.skip(),) * (len(VIEW_NAMES) - 1)
    stream = _open_stream(req, drafter)  # a bad prompt fails here and leaves the last run on display
    session.stepper = None
    session.choice = (drafter, reason)
    session.events = events = []
    yield render(session, download=None)
    throttle = Throttle()
    try:
        for batch in in_background(stream):
            events += batch
            if any(isinstance(ev, StepFinished) for ev in batch) and (due := throttle.due()):
                yield render(session, figures=due == "figures")
    except ValueError as err:  # a drafter or rule refusing these settings mid-run
        raise _fail(err) from None
    session.finish(events)
    download = _export(events)
    if drafter == "none":
        remember_ar(events)  # an autoregressive run is its own reference
    if not (measure_ar and drafter != "none" and ar_reference(events) is None):
        yield render(session, download=download)
        return
    yield render(session, note="▶ measuring the AR reference (same prompt and settings, no drafter)…",
                 download=download)
    ar_events = []
    for batch in in_background(_open_stream(req, "none")):
        ar_events += batch
        if isinstance(batch[-1], StepFinished) and throttle.due() == "figures":
            note = f"▶ measuring the AR reference: {batch[-1].metrics.tokens} tokens…"
            yield render(session, note=note, figures=False)
    remember_ar(ar_events)
    yield render(session, note="AR reference measured (cached for this prompt and settings).")


def show_step(index, session: Session | None):
    """The tree, the explanation and the outlined text of one step of the run on display."""
    events = session.events if isinstance(session, Session) else []
    try:
        i = int(_number(index, "step"))
    except ValueError as err:
        raise _fail(err) from None
    n = len(views.split_steps(events))
    return (views.step_tree_figure(events, i), views.explain_run_step(events, i),
            views.tokens_html(events, focus=max(0, min(i, n - 1))))


@gpu
def step_start(prompt, target, drafter, strategy, draft_len, temperature, top_p, seed, max_new_tokens, rule,
               session: Session | None = None):
    """Start a run that advances one speculative step per click (the generator waits in the session)."""
    session, req, drafter, reason = _begin(session, (prompt, target, drafter, strategy, draft_len, temperature,
                                                     top_p, seed, max_new_tokens, rule))
    session.stepper = _open_stream(req, drafter)
    session.choice = (drafter, reason)
    session.events = []
    return _advance(session)


def _advance(session: Session) -> tuple:
    for ev in session.stepper:
        session.events.append(ev)
        if isinstance(ev, StepFinished):
            return render(session, note="Step-by-step: press **Next step ▶** for the next one.", download=None)
        if isinstance(ev, RunFinished):
            break
    session.stepper = None
    session.finish(session.events)
    return render(session, note="Step-by-step run finished.", download=_export(session.events))


@gpu
def step_next(index, session: Session | None):
    """Show the next step: replay a recorded one, or run one more step of a live step-by-step run."""
    session = session if isinstance(session, Session) else Session()
    n = len(views.split_steps(session.events))
    try:
        i = int(_number(index, "step"))
    except ValueError as err:
        raise _fail(err) from None
    if i + 1 < n:
        return render(session, index=i + 1)
    if session.stepper is not None:
        return _advance(session)
    note = "This is the last step." if n else "Nothing to step through yet: press **Step-by-step** or **Run**."
    return render(session, note=note, index=i)


def step_prev(index, session: Session | None):
    session = session if isinstance(session, Session) else Session()
    try:
        i = int(_number(index, "step"))
    except ValueError as err:
        raise _fail(err) from None
    return render(session, index=max(0, i - 1))


def _check_shape(events: list[Event]) -> None:
    """Refuse traces larger than the page shows (trace.loads already checked types and links)."""
    steps = views.split_steps(events)
    if len(steps) > MAX_TRACE_STEPS:
        raise ValueError(f"trace has {len(steps)} steps; the app shows at most {MAX_TRACE_STEPS}")
    for step in steps:
        if len(step.nodes) > MAX_TRACE_NODES_PER_STEP:
            raise ValueError(f"step {step.index} has {len(step.nodes)} draft nodes; "
                             f"at most {MAX_TRACE_NODES_PER_STEP} are allowed")
    tokens = sum(len(step.tokens) for step in steps)
    if tokens > MAX_TRACE_TOKENS:
        raise ValueError(f"trace has {tokens} tokens; the app shows at most {MAX_TRACE_TOKENS}")


def replay(events: list[Event], session: Session | None, note: str, source: str | None = None) -> tuple:
    """Show recorded events with every view (no model needed); malformed ones are refused whole.
    `source` is the trace file itself, offered again as the download."""
    session = session if isinstance(session, Session) else Session()
    candidate = Session(events=events, history=session.history, choice=None)
    start = views.run_started(events)
    if start is not None:
        candidate.choice = (str(start.drafter), "recorded in the trace")
    try:
        _check_shape(events)
        out = render(candidate, note=note, download=source)
    except Exception as err:  # a hostile trace may break any view: refuse it, keep what was on display
        raise gr.Error(f"this trace cannot be shown: {err if isinstance(err, ValueError) else type(err).__name__}",
                       print_exception=False) from None
    session.events, session.choice, session.stepper = events, candidate.choice, None
    return out


def stopped(session: Session | None):
    events = session.events if isinstance(session, Session) else []
    if views.run_finished(events) is not None:
        return status_line(events)
    m = views.latest_metrics(events)
    return status_line(events, state=f"■ stopped by you after {m.tokens if m else 0} tokens")


def import_trace(path, session: Session | None):
    if not path:
        raise gr.Error("no file was uploaded", print_exception=False)
    path = path if isinstance(path, str) else getattr(path, "name", str(path))
    try:
        events = trace.load(path)
    except (ValueError, OSError) as err:
        raise gr.Error(f"could not import this file: {err}", print_exception=False) from None
    return replay(events, session, note=f"Imported trace **{esc(Path(path).name)}**: replayed without a model.",
                  source=path)


def example_traces() -> dict[str, Path]:
    return {p.name.removesuffix(".trace.json"): p for p in sorted(ASSETS.glob("*.trace.json"))}


def load_example(name, session: Session | None):
    traces = example_traces()
    if name not in traces:
        if not traces:
            return render(session if isinstance(session, Session) else Session())
        name = next(iter(traces))
    return replay(trace.load(traces[name]), session,
                  note=f"Showing the recorded example **{esc(name)}** (no model needed). "
                       "Press **Run** to decode live.", source=str(traces[name]))


def first_view(name, session: Session | None):
    """What a visitor sees on arrival: the recorded example, so the page is alive before any model runs."""
    try:
        return load_example(name, session)
    except gr.Error:
        return render(session if isinstance(session, Session) else Session())


@gpu
def race(prompt, target, drafter, strategy, draft_len, temperature, top_p, seed, max_new_tokens, rule,
         session: Session | None = None):
    """AR and speculative decoding of one prompt, side by side, taking turns by their own decoding time."""
    session, req, drafter, reason = _begin(session, (prompt, target, drafter, strategy, draft_len, temperature,
                                                     top_p, seed, max_new_tokens, rule))
    if drafter == "none":
        raise gr.Error("a race needs a drafter: pick 'pld' or a model drafter", print_exception=False)
    sides = {"spec": _open_stream(req, drafter), "ar": _open_stream(req, "none")}
    session.stepper, session.choice = None, (drafter, reason)
    spec, ar = [], []
    logs = {"spec": spec, "ar": ar}
    clock = {"spec": 0.0, "ar": 0.0}
    throttle = Throttle()
    skip = (gr.skip(),) * len(VIEW_NAMES)
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
            yield (views.tokens_html(spec, show_prompt=False), views.tokens_html(ar, show_prompt=False),
                   race_markdown(spec, ar)) + skip
    remember_ar(ar)
    session.events = spec
    session.finish(spec)
    yield (views.tokens_html(spec, show_prompt=False), views.tokens_html(ar, show_prompt=False),
           race_markdown(spec, ar)) + render(session, note="Race finished: the speculative side is shown below.",
                                             download=_export(spec))


# ---------------------------------------------------------------- layout

CSS = """
.specviz-explain {font-size: 14px}
#specviz-status {min-height: 2.4em}
footer {display: none !important}
"""

HOW_TO_READ = """**How to read this page**

* **Text**: every token is colored by how it came (legend above it). Red struck-through tokens are drafts the target
  refused, shown where they were proposed; the token after them is the target's replacement. Hover any token for its
  numbers: q = the drafter's probability, p = the target's, and the chance the draft was accepted, `min(1, p/q)`.
* **Step explorer**: one *step* is one forward pass of the target. The tree shows what the drafter proposed in that
  step (a chain today, trees with several guesses per position later); green nodes were accepted, red rejected, grey
  never checked; the diamond is the token the target added itself. Drag the slider or use ◀ ▶ to look at any step.
* **Entropy**: the target's uncertainty at every generated token, and the drafter's at every drafted one. Drafts
  fail where the models are unsure.
* **Metrics**: τ is tokens per target forward (AR = 1). β is the chance a draft is accepted at each depth; α is
  their mean; c is what a drafted token costs relative to a target forward. With those, theory predicts the
  speedup; *measure against AR* (or a race) measures it.
* **Step-by-step** runs live, one step per click of *Next step ▶*, explaining each step in words.
"""


def _model_choices(include_free: bool) -> list[tuple[str, str]]:
    order = {"ready": 0, "downloaded": 1, "not installed": 2}
    hub = os.environ.get("SPECVIZ_FROM_HUB") == "1"
    presets = sorted(models.PRESETS, key=lambda n: (order[models.status(n)], n))
    out = [(f"{n} · {'from the hub' if hub else models.status(n)}", n) for n in presets]
    if include_free:
        out = [(f"{n} · {desc.split(':')[0]}" + (" (no model)" if n != "none" else ""), n)
               for n, desc in MODEL_FREE_DRAFTERS.items()] + out
    return out


def build_demo() -> gr.Blocks:
    targets, drafters = _model_choices(False), _model_choices(True)
    traces = list(example_traces())
    with gr.Blocks(title="specviz · speculative decoding, token by token", delete_cache=(3600, 3600)) as demo:
        session = gr.State(Session(), time_to_live=SESSION_TTL_S)  # deep-copied for each visitor
        gr.Markdown(INTRO)
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=320):
                prompt = gr.Textbox(label="Prompt", lines=5, max_lines=14, value=EXAMPLE_PROMPTS[1][1],
                                    elem_id="specviz-prompt")
                gr.Examples([[p] for _, p in EXAMPLE_PROMPTS], inputs=[prompt], label="Example prompts",
                            example_labels=[name for name, _ in EXAMPLE_PROMPTS])
                with gr.Row():
                    target = gr.Dropdown(targets, value=DEFAULT_TARGET, label="Target (verifies)")
                    drafter = gr.Dropdown(drafters, value=DEFAULT_DRAFTER, label="Drafter (guesses)")
                strategy = gr.Dropdown([(f"{e.name} · {e.label}", e.name) for e in STRATEGIES.entries()], value="chain",
                                       label="Draft shape (model drafters)")
                with gr.Accordion("Decoding knobs", open=True):
                    with gr.Row():
                        draft_len = gr.Slider(1, MAX_DRAFT_LEN, value=4, step=1, label="draft length")
                        max_new = gr.Slider(1, MAX_NEW_TOKENS_UI, value=64, step=1, label="max new tokens")
                    with gr.Row():
                        temperature = gr.Slider(0, MAX_TEMPERATURE, value=0.0, step=0.05,
                                                label="temperature (0 = greedy)")
                        top_p = gr.Slider(0.05, 1, value=1.0, step=0.05, label="top-p")
                    seed = gr.Number(0, precision=0, minimum=0, label="seed")
                    rule = gr.Dropdown([("auto · greedy at temperature 0, else speculative sampling (lossless)", "auto")]
                                       + [(f"{r} · {'LOSSY: output is not the target distribution' if r.endswith('-lossy') else 'lossless'}", r)
                                          for r in rule_names()], value="auto", label="verification rule")
                measure_ar = gr.Checkbox(False, label="measure against AR (runs the target alone afterwards; cached)")
                with gr.Row():
                    run_btn = gr.Button("Run ▶", variant="primary", elem_id="specviz-run")
                    stop_btn = gr.Button("Stop ■", variant="stop", elem_id="specviz-stop")
                with gr.Row():
                    race_btn = gr.Button("Race: AR vs speculative", elem_id="specviz-race")
                    step_btn = gr.Button("Step-by-step ▷", elem_id="specviz-step-start")
                with gr.Accordion("Traces: recorded runs", open=True):
                    example = gr.Dropdown(traces, value=traces[0] if traces else None,
                                          label="Example runs (no model needed)")
                    with gr.Row():
                        download = gr.DownloadButton("Download trace", interactive=False, elem_id="specviz-download")
                        upload = gr.UploadButton("Import trace…", file_types=[".json"], type="filepath",
                                                 elem_id="specviz-import")
            with gr.Column(scale=8, min_width=480):
                with gr.Tabs(selected="watch") as tabs:
                    with gr.Tab("Watch", id="watch"):
                        status = gr.Markdown("Ready.", elem_id="specviz-status")
                        gr.HTML(views.legend_html(), elem_id="specviz-legend")
                        tokens = gr.HTML(views.tokens_html([]), elem_id="specviz-tokens")
                        with gr.Accordion("Plain text", open=False):
                            text = gr.Textbox(label="generated text", lines=4, interactive=False, buttons=["copy"],
                                              elem_id="specviz-text")
                        gr.Markdown("### Step explorer: what happened in one target forward")
                        with gr.Row(equal_height=False):
                            prev_btn = gr.Button("◀", scale=0, min_width=48, elem_id="specviz-prev")
                            step = gr.Slider(0, 1, value=0, step=1, label="step", scale=8, elem_id="specviz-step")
                            next_btn = gr.Button("Next step ▶", scale=0, min_width=150, elem_id="specviz-next")
                        with gr.Row(equal_height=False):
                            with gr.Column(scale=3, min_width=320):
                                tree = gr.Plot(views.tree_figure(None), show_label=False, elem_id="specviz-tree")
                            with gr.Column(scale=2, min_width=260):
                                explain = gr.Markdown(views.explain_step([]), elem_classes=["specviz-explain"],
                                                      elem_id="specviz-explain")
                        entropy = gr.Plot(views.entropy_figure([]), show_label=False, elem_id="specviz-entropy")
                        gr.Markdown("### Why it is fast, or not")
                        with gr.Row(equal_height=False):
                            with gr.Column(scale=1, min_width=320):
                                metrics = gr.Markdown(views.metrics_markdown([]), elem_id="specviz-metrics")
                            with gr.Column(scale=1, min_width=320):
                                metrics_plot = gr.Plot(views.metrics_figure([]), show_label=False,
                                                       elem_id="specviz-metrics-plot")
                        with gr.Accordion("Drafter choice", open=True):
                            drafter_md = gr.Markdown(views.drafter_markdown([]), elem_id="specviz-drafter")
                    with gr.Tab("Race", id="race"):
                        gr.Markdown(RACE_EXPLAINER)
                        race_md = gr.Markdown("Press **Race** to start.", elem_id="specviz-race-score")
                        with gr.Row(equal_height=False):
                            with gr.Column():
                                gr.Markdown("**Speculative** (drafter + target)")
                                race_spec = gr.HTML(views.tokens_html([], show_prompt=False),
                                                    elem_id="specviz-race-spec")
                            with gr.Column():
                                gr.Markdown("**Autoregressive** (target alone)")
                                race_ar = gr.HTML(views.tokens_html([], show_prompt=False), elem_id="specviz-race-ar")
                    with gr.Tab("How to read it", id="help"):
                        gr.Markdown(HOW_TO_READ)

        outputs = [status, tokens, text, step, tree, explain, entropy, metrics, metrics_plot, drafter_md, download]
        controls = [prompt, target, drafter, strategy, draft_len, temperature, top_p, seed, max_new, rule]
        to_watch = dict(fn=lambda: gr.Tabs(selected="watch"), outputs=[tabs], queue=False, api_visibility="private")
        # one decoding job at a time on this machine; streamed views stay visible while they update
        decode = dict(concurrency_id="decode", concurrency_limit=1, show_progress="minimal")

        run_btn.click(**to_watch)
        run_event = run_btn.click(run, controls + [measure_ar, session], outputs, api_name="run", **decode)
        race_btn.click(lambda: gr.Tabs(selected="race"), outputs=[tabs], queue=False, api_visibility="private")
        race_event = race_btn.click(race, controls + [session], [race_spec, race_ar, race_md] + outputs,
                                    api_name="race", **decode)
        step_btn.click(**to_watch)
        step_event = step_btn.click(step_start, controls + [session], outputs, api_name="step_start", **decode)
        next_event = next_btn.click(step_next, [step, session], outputs, api_name="step_next", **decode)
        prev_btn.click(step_prev, [step, session], outputs, api_name="step_prev")
        stop_btn.click(stopped, [session], [status], cancels=[run_event, race_event, step_event, next_event],
                       api_name="stop", queue=False)
        # .input: the user moved the slider (streamed updates of its value do not re-render the step)
        step.input(show_step, [step, session], [tree, explain, tokens], api_name="show_step",
                   trigger_mode="always_last", show_progress="hidden")
        upload.upload(import_trace, [upload, session], outputs, api_name="import_trace")
        example.input(load_example, [example, session], outputs, api_name="example_trace")
        demo.load(first_view, [example, session], outputs, api_visibility="private")
    return demo


# ---------------------------------------------------------------- launching


def server_address() -> tuple[str, int]:
    """127.0.0.1:7860 by default; SPECVIZ_HOST/PORT or GRADIO_SERVER_NAME/PORT override; a Space binds 0.0.0.0."""
    if os.environ.get("SPACE_ID"):
        host = "0.0.0.0"
    else:
        host = os.environ.get("SPECVIZ_HOST") or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    port = int(os.environ.get("SPECVIZ_PORT") or os.environ.get("GRADIO_SERVER_PORT") or 7860)
    return host, port


def launch_kwargs() -> dict:
    host, port = server_address()
    return dict(server_name=host, server_port=port, css=CSS, max_file_size=trace.MAX_BYTES, show_error=True,
                allowed_paths=[str(ASSETS)])  # the example traces are offered for download as they are


def prepare_environment() -> None:
    """On a Hugging Face Space presets load from their hub ids; analytics stay off everywhere."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    if os.environ.get("SPACE_ID"):
        os.environ.setdefault("SPECVIZ_FROM_HUB", "1")


def warm_up(target: str = DEFAULT_TARGET) -> threading.Thread | None:
    """Load the default target in the background so the first Run starts at once."""
    if os.environ.get("SPECVIZ_FROM_HUB") != "1" and models.status(target) != "ready":
        return None
    from .api import load_model

    thread = threading.Thread(target=lambda: _quiet(load_model, target), daemon=True, name="specviz-warm-up")
    thread.start()
    return thread


def _quiet(fn, *args):
    try:
        fn(*args)
    except Exception:  # a failed warm-up only means the first run loads the model itself
        pass
