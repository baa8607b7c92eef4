"""Teaching mode on the page: the lossless check, the what-if explorer, the acceptance map (three tabs) and the
guided lesson (a card over the page that loads shipped traces and highlights the panel it talks about).

layout.py calls lesson_box() in the control column, tabs() inside the output Tabs, and wire() at the end.
"""
from __future__ import annotations

import json

import gradio as gr

from .. import views
from ..lossless_check import DEFAULT_SAMPLES, MAX_SAMPLES, MAX_TOKENS, CheckResult, Progress, check_config
from ..limits import budgets
from ..metrics import CostCurve, Metrics
from ..views import acceptance_map as amap
from ..views import lesson, whatif
from ..views.labels import esc
from ..views.lossless_view import lossless_figure, lossless_markdown
from . import callbacks, measured
from .render import step_slider, step_views
from .streaming import decode_slots, in_background
from .session import Session, current

HIGHLIGHT_JS = """(id) => {
  document.querySelectorAll('.specviz-lesson-hl').forEach(e => {
    e.classList.remove('specviz-lesson-hl'); e.style.outline = ''; e.style.outlineOffset = ''; });
  if (!id) return;
  setTimeout(() => {
    const el = document.getElementById(id);
    if (!el) return;
    el.classList.add('specviz-lesson-hl');
    el.style.outline = '4px solid #f59e0b'; el.style.outlineOffset = '3px';
    el.scrollIntoView({block: 'center', behavior: 'instant'});
  }, 300);
}"""

LOSSLESS_INTRO = (
    "### Is it really lossless?\n"
    "Speculative sampling promises **exactly** the target's output distribution, whatever the drafter. This check "
    "samples the first *k* tokens of the prompt on the left *N* times with plain decoding and *N* times with the "
    "drafter, rule and knobs chosen on the left, and compares both with the distribution computed from the "
    "target's own probabilities (a chi-square test and the total-variation distance). Set a temperature above 0: "
    "at 0 there is nothing random to compare. A lossy rule (*typical-lossy*, *lantern-lossy*) should fail.")

WHATIF_INTRO = (
    "### What if?\n"
    "Speedup over plain decoding = tokens per step ÷ cost per step, both in one-token target forwards. Move the "
    "sliders; the run on display and each drafter of this session are marked on the left chart (× at the speedup "
    "measured, or predicted where no AR reference was measured).")

CURVES = ("this machine (measured)", "linear", whatif.FLAT)


# ---------------------------------------------------------------- layout


def lesson_box() -> dict:
    """The lesson's start button (in the control column) and its card (fixed over the page, hidden until started)."""
    start = gr.Button("Guided lesson ▶ (7 steps, no model needed)", size="sm", elem_id="specviz-lesson-start")
    with gr.Column(visible=False, elem_id="specviz-lesson-card") as card:
        text = gr.Markdown(elem_id="specviz-lesson-text")
        with gr.Row():
            back = gr.Button("◀ Back", size="sm", min_width=60, elem_id="specviz-lesson-back")
            nxt = gr.Button("Next ▶", size="sm", variant="primary", min_width=60, elem_id="specviz-lesson-next")
            close = gr.Button("✕ Close", size="sm", min_width=60, elem_id="specviz-lesson-close")
    index = gr.Number(-1, visible=False, precision=0)
    panel = gr.Textbox("", visible=False)
    return dict(lesson_start=start, lesson_card=card, lesson_text=text, lesson_back=back, lesson_next=nxt,
                lesson_close=close, lesson_index=index, lesson_panel=panel)


def tabs() -> dict:
    """The three teaching tabs, to be called inside the output gr.Tabs."""
    limit = min(MAX_SAMPLES, 4000)
    with gr.Tab("Lossless?", id="lossless"):
        gr.Markdown(LOSSLESS_INTRO)
        with gr.Row():
            k = gr.Slider(1, MAX_TOKENS, value=2, step=1, label="k: first tokens compared", elem_id="specviz-ll-k")
            n = gr.Slider(100, limit, value=DEFAULT_SAMPLES, step=100, label="N: samples per side",
                          elem_id="specviz-ll-n")
        check_btn = gr.Button("Run the check", variant="primary", elem_id="specviz-ll-run")
        with gr.Accordion("Teacher", open=False):
            broken = gr.Checkbox(False, label="break the verifier: after a rejection, draw from p instead of the "
                                 "residual (a classic bug; the check must catch it)", elem_id="specviz-ll-broken")
        ll_status = gr.Markdown("", elem_id="specviz-ll-status")
        ll_result = gr.Markdown("", elem_id="specviz-ll-result")
        ll_plot = gr.Plot(lossless_figure(None), show_label=False, elem_id="specviz-ll-plot")
    with gr.Tab("What if", id="whatif"):
        gr.Markdown(WHATIF_INTRO)
        with gr.Row():
            alpha = gr.Slider(0, 0.99, value=0.7, step=0.01, label="acceptance α per draft",
                              elem_id="specviz-wi-alpha")
            gamma = gr.Slider(1, 16, value=4, step=1, label="draft length γ (chain)", elem_id="specviz-wi-gamma")
            c = gr.Slider(0, 1, value=0.05, step=0.01, label="drafter cost c (per token, in target forwards)",
                          elem_id="specviz-wi-c")
        with gr.Row():
            curve = gr.Radio(list(CURVES), value=CURVES[0], label="verification cost", elem_id="specviz-wi-curve")
            slope = gr.Slider(0, 0.5, value=0.05, step=0.01, label="linear: extra cost per verified position")
            widths = gr.Textbox("2,2,1", label="tree widths per depth (empty: no tree)", max_lines=1)
            from_run = gr.Button("Use the run on display", size="sm", scale=0, min_width=150)
        wi_plot = gr.Plot(show_label=False, elem_id="specviz-wi-plot")
        wi_text = gr.Markdown(elem_id="specviz-wi-text")
    with gr.Tab("Acceptance map", id="acceptance"):
        gr.Markdown(amap.CAPTION)
        with gr.Row():
            bench_file = gr.UploadButton("Load a bench JSON…", file_types=[".json"], type="filepath", size="sm")
            session_btn = gr.Button("From this session's runs", size="sm")
        am_status = gr.Markdown("", elem_id="specviz-am-status")
        am_plot = gr.Plot(show_label=False, elem_id="specviz-am-plot")
    return dict(ll_k=k, ll_n=n, ll_run=check_btn, ll_broken=broken, ll_status=ll_status, ll_plot=ll_plot,
                ll_result=ll_result, wi_alpha=alpha, wi_gamma=gamma, wi_c=c, wi_curve=curve, wi_slope=slope,
                wi_widths=widths, wi_from_run=from_run, wi_plot=wi_plot, wi_text=wi_text, am_file=bench_file,
                am_session=session_btn, am_status=am_status, am_plot=am_plot)


# ---------------------------------------------------------------- the lossless check


def lossless(form: dict, session: Session | None):
    """Sample both decoders (progress as it goes), then the verdict, the bars and the table."""
    current(session)
    req = callbacks.read(form)
    k, n = int(form.get("ll_k") or 2), int(form.get("ll_n") or DEFAULT_SAMPLES)
    yield dict(ll_status=f"⏳ loading **{esc(req.config.target)}** and computing the exact distribution…",
               ll_result="")
    try:
        checking = check_config(req.config, req.prompt, k, n, bool(form.get("ll_broken")),
                                time_limit_s=budgets().run_seconds)
        # on the decoding thread, a turn per progress report, so runs of other visitors go on between them
        for item in (item for batch in in_background(checking, ends_turn=lambda _: True) for item in batch):
            if isinstance(item, Progress):
                if item.phase != "exact":
                    yield dict(ll_status=f"⏳ sampling plain and speculative decoding: {item.done:,} of "
                                         f"{item.total:,} runs each…")
            elif isinstance(item, CheckResult):
                yield dict(ll_status="", ll_plot=lossless_figure(item), ll_result=lossless_markdown(item))
    except ValueError as err:
        raise callbacks.fail(err) from None


# ---------------------------------------------------------------- what if


def parse_widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in str(text or "").replace(" ", "").split(",") if w)
    except ValueError:
        raise gr.Error("tree widths: whole numbers separated by commas, e.g. 2,2,1", print_exception=False) from None
    if any(w < 1 or w > 8 for w in widths) or len(widths) > 8 or whatif.tree_nodes(widths) > 256:
        raise gr.Error("tree widths: 1 to 8 per depth, at most 8 depths and 256 nodes", print_exception=False)
    return widths


def cost_curve(choice: str, slope: float, session: Session) -> tuple[CostCurve, str]:
    if choice == CURVES[0]:
        curve = measured.curve_of(session.events) if session.events else measured.curve("smollm2-135m")
        if curve.seconds(1) is not None and len(curve.points()) >= 2:
            top = max(curve.sizes())
            cheapest = min(curve.ratio(n) for n in curve.sizes())
            if cheapest >= 0.9:
                return curve, f"measured on this machine (one-token forward up to {top:.0f} positions)"
            return whatif.linear_curve(slope), (
                f"linear, +{slope:.2f} per extra position: this machine's measured curve is not used, because on it "
                f"verifying several positions measured {cheapest:.2f}× one token (forwards timed under different "
                "loads)")
        return whatif.linear_curve(slope), (f"linear, +{slope:.2f} per extra position (this machine has no measured "
                                            "curve yet: run plain decoding and a drafter once)")
    if choice == whatif.FLAT:
        return whatif.flat_curve(), whatif.FLAT
    return whatif.linear_curve(slope), f"linear, +{slope:.2f} of a forward per extra position"


def session_points(session: Session, curve: CostCurve) -> list[whatif.Point]:
    points = []
    shown = views.decode_metrics(session.events) if session.events else None
    start = views.run_started(session.events) if session.events else None
    if shown is not None and start is not None:
        from .session import ar_reference

        measured_x = views.speedup(shown, ar_reference(session.events))
        p = whatif.run_point("run on display", shown, curve, measured_x)
        if p is not None:
            points.append(p)
    by_drafter: dict[str, object] = {}
    for rec in session.history:
        if rec.decode is not None:
            by_drafter.setdefault(rec.drafter, Metrics()).add(rec.decode)
    for name, m in list(by_drafter.items())[:6]:
        p = whatif.run_point(name, m, curve)
        if p is not None:
            points.append(p)
    return points


def what_if(form: dict, session: Session | None):
    session = current(session)
    alpha, gamma, c = float(form["wi_alpha"]), int(form["wi_gamma"]), float(form["wi_c"])
    widths = parse_widths(form.get("wi_widths", ""))
    curve, name = cost_curve(form.get("wi_curve", CURVES[0]), float(form.get("wi_slope") or 0.05), session)
    points = session_points(session, curve)
    max_gamma = 16
    while max_gamma > 1 and curve.seconds(1 + max_gamma) is None:
        max_gamma -= 1
    return dict(wi_plot=whatif.figure(alpha, min(gamma, max_gamma), c, curve, widths, points, max_gamma),
                wi_text=whatif.verdict(alpha, gamma, c, curve, name, widths, points))


def from_run(form: dict, session: Session | None):
    """The sliders set to the run on display: its α, mean draft length and c (decode steps)."""
    session = current(session)
    m = views.decode_metrics(session.events) if session.events else None
    if m is None or not m.drafted:
        raise gr.Error("the run on display drafted nothing: load an example or run with a drafter first",
                       print_exception=False)
    return dict(wi_alpha=round(min(m.alpha, 0.99), 2), wi_gamma=max(1, min(16, round(m.mean_draft_length))),
                wi_c=round(min(m.c, 1.0), 2))


# ---------------------------------------------------------------- acceptance map


def map_from_file(form: dict, session: Session | None):
    path = form.get("am_file")
    path = path if isinstance(path, str) else getattr(path, "name", None)
    try:
        with open(path) as f:
            table = amap.from_bench(json.load(f))
    except (OSError, ValueError, TypeError) as err:
        raise gr.Error(f"could not read this bench JSON: {err}", print_exception=False) from None
    return dict(am_plot=amap.acceptance_figure(table), am_status=f"{len(table)} rows from the bench file.")


def map_from_session(form: dict, session: Session | None):
    session = current(session)
    runs = list(getattr(session, "acceptance", []))
    if not runs:
        raise gr.Error("no finished run with drafts in this session yet: press Run with a drafter",
                       print_exception=False)
    table = amap.from_runs(runs)
    return dict(am_plot=amap.acceptance_figure(table), am_status=f"{len(runs)} run{'s' if len(runs) != 1 else ''} of this session.")


# ---------------------------------------------------------------- the guided lesson


def lesson_show(i: int, session: Session | None) -> dict:
    """Lesson step i: its trace replayed into every view, the explorer on its step, the card, the highlight."""
    step = lesson.lesson_step(i)
    i = lesson.STEPS.index(step)
    events = lesson.lesson_events(step)
    at = lesson.pick_step(events, step.want)
    out = callbacks.replay(events, session, note=f"Lesson {i + 1}: **{esc(step.title)}** (recorded trace).",
                           source=str(lesson.trace_path(step)))
    session = current(session)
    n = len(views.split_steps(events))
    out.update(step_views(session, at))
    out.update(step=step_slider(n, at), lesson_text=lesson.lesson_markdown(i, at), lesson_index=i,
               lesson_panel=step.panel, lesson_card=gr.Column(visible=True), tabs=gr.Tabs(selected=step.tab))
    return out


def lesson_start(form: dict, session: Session | None):
    return lesson_show(0, session)


def lesson_next(form: dict, session: Session | None):
    return lesson_show(int(form.get("lesson_index") or 0) + 1, session)


def lesson_back(form: dict, session: Session | None):
    return lesson_show(int(form.get("lesson_index") or 0) - 1, session)


def lesson_close(form: dict, session: Session | None):
    return dict(lesson_card=gr.Column(visible=False), lesson_panel="", lesson_index=-1)


# ---------------------------------------------------------------- wiring


def wire(wire_fn, session: gr.State, form: dict, replayed: dict, tabs: gr.Tabs, box: dict, parts: dict) -> None:
    """Every teaching event, with layout.wire (named inputs and outputs)."""
    decode = dict(concurrency_id="decode", concurrency_limit=decode_slots(), show_progress="minimal")
    p = parts
    wire_fn(p["ll_run"].click, lossless, form | {k: p[k] for k in ("ll_k", "ll_n", "ll_broken")},
            {k: p[k] for k in ("ll_status", "ll_plot", "ll_result")}, session, api_name="lossless_check", **decode)
    wi_in = {k: p[k] for k in ("wi_alpha", "wi_gamma", "wi_c", "wi_curve", "wi_slope", "wi_widths")}
    wi_out = dict(wi_plot=p["wi_plot"], wi_text=p["wi_text"])
    for comp in ("wi_alpha", "wi_gamma", "wi_c", "wi_slope"):
        wire_fn(p[comp].release, what_if, wi_in, wi_out, session, api_visibility="private", queue=False)
    for comp in ("wi_curve", "wi_widths"):
        wire_fn(p[comp].change, what_if, wi_in, wi_out, session, api_visibility="private", queue=False)
    set_sliders = wire_fn(p["wi_from_run"].click, from_run, {}, {k: p[k] for k in ("wi_alpha", "wi_gamma", "wi_c")},
                          session, api_visibility="private", queue=False)
    wire_fn(set_sliders.success, what_if, wi_in, wi_out, session, api_visibility="private", queue=False)
    wire_fn(tabs.select, what_if, wi_in, wi_out, session, api_visibility="private", queue=False)
    wire_fn(p["am_file"].upload, map_from_file, dict(am_file=p["am_file"]), dict(am_plot=p["am_plot"],
            am_status=p["am_status"]), session, api_visibility="private")
    wire_fn(p["am_session"].click, map_from_session, {}, dict(am_plot=p["am_plot"], am_status=p["am_status"]),
            session, api_visibility="private")
    outs = replayed | {k: box[k] for k in ("lesson_text", "lesson_index", "lesson_panel", "lesson_card")} | dict(
        tabs=tabs)
    index = dict(lesson_index=box["lesson_index"])
    for button, fn in ((box["lesson_start"], lesson_start), (box["lesson_next"], lesson_next),
                       (box["lesson_back"], lesson_back)):
        wire_fn(button.click, fn, index, outs, session, api_visibility="private").then(
            None, [box["lesson_panel"]], None, js=HIGHLIGHT_JS, queue=False)
    wire_fn(box["lesson_close"].click, lesson_close, {}, {k: box[k] for k in (
        "lesson_card", "lesson_panel", "lesson_index")}, session, api_visibility="private", queue=False).then(
        None, [box["lesson_panel"]], None, js=HIGHLIGHT_JS, queue=False)
