"""The page: gr.Blocks built from the registries (menus.py) and the app's limits, and every event
wired to its callback (callbacks.py) by name.

`wire` is the one place where names meet components: a callback receives the values of its input
widgets as {name: value} plus the session, and returns (or yields) {name: value} for its outputs.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable

import gradio as gr

from .. import models, views
from ..examples import ASSETS, EXAMPLE_PROMPTS, LANDING_PROMPT, example_traces, landing_example
from ..registry import Param
from ..stop_rules import STOP_RULES
from ..views.choice_view import choice_figure
from ..views.race_view import EXPLAINER as RACE_EXPLAINER
from . import callbacks, menus, skips, teach
from ..views.entropy_figure import CAPTION as CAPTION_ENTROPY, CAPTION_BOUND
from ..views.lengths_figure import CAPTION as CAPTION_LENGTHS
from ..views.timeline import CAPTION as CAPTION_TIMELINE
from .render import NEXT, VIEWS
from .request import CONTROLS, app_limits, stop_params
from .launch import app_default, health
from .session import Session, SESSION_TTL_S, closed
from .streaming import decode_slots
from .texts import HEADER, HOW_TO_READ, INTRO

DEFAULT = app_default()  # the widgets start here (`auto` where a policy ships; a shorter output than the CLI's)
DEFAULT_MAX_NEW_TOKENS = 64
SCROLL_TO_OUTPUT = "() => { document.getElementById('specviz-tabs')?.scrollIntoView({block: 'start'}); }"


def wire(listener, fn: Callable, inputs: dict[str, gr.components.Component], outputs: dict[str, gr.Component],
         session: gr.State, **options):
    """listener(fn) with named inputs and outputs. fn(form, session) gets {input name: value} and
    returns or yields {output name: value}; gradio gets {component: value}. API clients see the
    inputs' names as parameters, in the order of `inputs` (the session is not part of the API)."""
    names = list(inputs)

    def by_component(out: dict) -> dict | None:
        return {outputs[name]: value for name, value in out.items()} if outputs else None

    if inspect.isgeneratorfunction(inspect.unwrap(fn)):  # unwrap: a ZeroGPU-decorated callback
        def handler(*values):
            for out in fn(dict(zip(names, values[:-1])), values[-1]):
                yield by_component(out)
    else:
        def handler(*values):
            return by_component(fn(dict(zip(names, values[:-1])), values[-1]))

    handler.__name__, handler.__doc__ = fn.__name__, fn.__doc__
    handler.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names + ["session"]])
    return listener(handler, list(inputs.values()) + [session], list(outputs.values()), **options)


def merged(*named: dict) -> dict:
    """Several {name: component} tables as one; a name in two of them is a wiring mistake."""
    out: dict = {}
    for table in named:
        clash = set(out) & set(table)
        if clash:
            raise ValueError(f"one name for two components: {', '.join(sorted(clash))}")
        out.update(table)
    return out


def param_input(param: Param) -> gr.Number:
    """A stopping rule's parameter as a number box: its default, range and help from the registry."""
    step = 1 if param.integer else 10 ** math.floor(math.log10(max(param.hi - param.lo, 1e-9) / 100))
    return gr.Number(param.default, minimum=param.lo, maximum=param.hi, step=step,
                     precision=0 if param.integer else None, label=param.name,
                     info=f"{param.help} · range [{param.lo:g}, {param.hi:g}]", min_width=140)


def plain_numbers(demo: gr.Blocks) -> None:
    """Every slider and number box of the page answers an API client's non-number (None, text, a list) with
    one line naming the knob, instead of gradio's multi-line preprocessing error with a raw TypeError;
    numbers go on to gradio's own bound check ("Value 9.0 is greater than maximum value 2.")."""
    for block in demo.blocks.values():
        if isinstance(block, (gr.Slider, gr.Number)):
            block.preprocess = _number_checked(block, block.preprocess)


def _number_checked(block, preprocess):
    def checked(payload):
        if payload is None and not isinstance(block, gr.Slider):
            return preprocess(payload)  # an empty number box: the request reader names it
        if isinstance(payload, bool) or not isinstance(payload, (int, float)):
            raise gr.Error(f"{block.label or 'value'} must be a number, got {repr(payload)[:40]}",
                           print_exception=False)
        return preprocess(payload)

    return checked


def build_demo() -> gr.Blocks:
    skips.install()  # skipped outputs cost gradio nothing (a streamed update sets 5 of the run's 15)
    limits = app_limits()
    traces = list(example_traces())
    with gr.Blocks(title="specviz · speculative decoding, token by token", delete_cache=(3600, 3600)) as demo:
        session = gr.State(Session(), time_to_live=SESSION_TTL_S,  # deep-copied for each visitor
                           delete_callback=closed)  # a closed tab stops and releases its run
        gr.Markdown(HEADER, elem_id="specviz-header")
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=320, elem_id="specviz-controls"):
                prompt = gr.Textbox(label="Prompt", lines=3, max_lines=10, value=LANDING_PROMPT,
                                    elem_id="specviz-prompt")
                with gr.Row(elem_id="specviz-runbar"):
                    run_btn = gr.Button("Run ▶", variant="primary", size="sm", min_width=70, elem_id="specviz-run")
                    stop_btn = gr.Button("Stop ■", variant="stop", size="sm", min_width=70, elem_id="specviz-stop")
                    race_btn = gr.Button("Race", size="sm", min_width=70, elem_id="specviz-race")
                    step_btn = gr.Button("Step-by-step ▷", size="sm", min_width=120, elem_id="specviz-step-start")
                vlm = models.vlm_target()  # a vision-language target on this deployment (SPECVIZ_VLM), if any
                with gr.Column(visible=vlm is not None and DEFAULT.target == vlm, elem_id="specviz-image-box") as image_box:
                    image = gr.Image(type="pil", sources=["upload", "clipboard"], height=150, elem_id="specviz-image",
                                     label="Image (read by the vision-language target; the drafter sees the text only)")
                    gr.Examples([[str(p)] for p in sorted((ASSETS / "images").glob("*.png"))], inputs=[image],
                                label="Example images")
                lesson_box = teach.lesson_box()  # the guided lesson's start button and card (teach.py)
                target = gr.Dropdown(menus.targets(), value=DEFAULT.target, label="Target (verifies)",
                                     elem_classes=["specviz-menu"], elem_id="specviz-target")
                drafter = gr.Dropdown(menus.drafters(DEFAULT.target), value=DEFAULT.drafter, label="Drafter (guesses)",
                                      elem_classes=["specviz-menu"], elem_id="specviz-drafter-menu")
                drafter_note = gr.Markdown(menus.drafter_note(DEFAULT.target, DEFAULT.drafter),
                                           elem_id="specviz-drafter-note")
                strategy = gr.Dropdown(menus.shapes(), value=DEFAULT.shape, label="Draft shape (model drafters)",
                                       elem_classes=["specviz-menu"], elem_id="specviz-shape-menu")
                measure_ar = gr.Checkbox(False, label="measure against AR (runs the target alone afterwards; cached)")
                gr.Examples([[p] for _, p in EXAMPLE_PROMPTS], inputs=[prompt], label="Example prompts",
                            example_labels=[name for name, _ in EXAMPLE_PROMPTS])
                with gr.Accordion("Decoding knobs", open=False):
                    with gr.Row():
                        draft_len = gr.Slider(1, limits.max_draft_len, value=DEFAULT.draft_len, step=1,
                                              label="draft length", elem_id="specviz-draft-len")
                        max_new = gr.Slider(1, limits.max_new_tokens, value=DEFAULT_MAX_NEW_TOKENS, step=1,
                                            label="max new tokens", elem_id="specviz-max-new")
                    with gr.Row():
                        temperature = gr.Slider(0, limits.max_temperature, value=DEFAULT.settings.temperature,
                                                step=0.05, label="temperature (0 = greedy)",
                                                elem_id="specviz-temperature")
                        top_p = gr.Slider(0.05, 1, value=DEFAULT.settings.top_p, step=0.05, label="top-p")
                    seed = gr.Number(DEFAULT.settings.seed, precision=0, minimum=0, maximum=limits.max_seed,
                                     label="seed")
                    rule = gr.Dropdown(menus.verify_rules(), value=DEFAULT.rule, label="verification rule",
                                       elem_classes=["specviz-menu"])
                with gr.Accordion("When drafting stops", open=False):
                    stop = gr.Dropdown(menus.stop_rules(), value=DEFAULT.stop, label="stopping rule",
                                       elem_id="specviz-stop-rule")
                    stop_about = gr.Markdown(menus.stop_rule_about(DEFAULT.stop), elem_id="specviz-stop-about")
                    params, groups = {}, {}  # each rule's parameters, shown while that rule is chosen
                    for entry in STOP_RULES.entries():
                        if entry.params:
                            with gr.Group(visible=entry.name == DEFAULT.stop) as groups[entry.name], gr.Row():
                                for key, rule_name, param in stop_params():
                                    if rule_name == entry.name:
                                        params[key] = param_input(param)
                fast_path = gr.Checkbox(DEFAULT.fast_path, label="fast path (pre-packed CPU kernels where the model "
                                        "supports them; the same results up to float rounding)")
                parallel = gr.Checkbox(DEFAULT.parallel, label="parallel (PEARL): the drafter drafts while the target "
                                       "verifies, each on its share of the cores (model drafters, chains)",
                                       elem_id="specviz-parallel")
                with gr.Accordion("Traces: recorded runs", open=True):
                    example = gr.Dropdown(traces, value=landing_example(), label="Example runs (no model needed)")
                    with gr.Row():
                        download = gr.DownloadButton("Download trace", interactive=False, elem_id="specviz-download")
                        upload = gr.UploadButton("Import trace…", file_types=[".json"], type="filepath",
                                                 elem_id="specviz-import")
            with gr.Column(scale=8, min_width=480):
                with gr.Tabs(selected="watch", elem_id="specviz-tabs") as tabs:
                    with gr.Tab("Watch", id="watch"):
                        status = gr.Markdown("Ready.", elem_id="specviz-status")
                        with gr.Row(equal_height=False):
                            gr.HTML(views.legend_html(), elem_id="specviz-legend")
                            rejected_box = gr.Checkbox(False, label="show rejected drafts", scale=0, min_width=190,
                                                       elem_id="specviz-show-rejected")
                        tokens = gr.HTML(views.tokens_html([]), elem_id="specviz-tokens")
                        with gr.Accordion("Plain text", open=False):
                            text = gr.Textbox(label="generated text", lines=4, interactive=False, buttons=["copy"],
                                              elem_id="specviz-text")
                        gr.Markdown("### Step explorer: what happened in one target forward")
                        with gr.Row(equal_height=False):
                            prev_btn = gr.Button("◀", scale=0, min_width=48, elem_id="specviz-prev")
                            step = gr.Slider(0, 1, value=0, step=1, label="step", scale=8, elem_id="specviz-step")
                            next_btn = gr.Button(NEXT, scale=0, min_width=150, elem_id="specviz-next")
                        with gr.Row(equal_height=False):
                            with gr.Column(scale=3, min_width=320):
                                tree = gr.Plot(views.tree_figure(None), show_label=False, elem_id="specviz-tree")
                            with gr.Column(scale=2, min_width=260):
                                explain = gr.Markdown(views.explain_step([]), elem_classes=["specviz-explain"],
                                                      elem_id="specviz-explain")
                        entropy = gr.Plot(views.entropy_figure([]), show_label=False, elem_id="specviz-entropy")
                        gr.Markdown(CAPTION_ENTROPY + CAPTION_BOUND, elem_classes=["specviz-caption"])
                        timeline = gr.Plot(views.timeline_figure([]), show_label=False, elem_id="specviz-timeline")
                        gr.Markdown(CAPTION_TIMELINE, elem_classes=["specviz-caption"])
                        lengths = gr.Plot(views.lengths_figure([]), show_label=False, elem_id="specviz-lengths")
                        gr.Markdown(CAPTION_LENGTHS, elem_classes=["specviz-caption"])
                        gr.Markdown("### Why it is fast, or not")
                        metrics = gr.Markdown(views.metrics_markdown([]), elem_id="specviz-metrics")
                        metrics_plot = gr.Plot(views.metrics_figure([]), show_label=False,
                                               elem_id="specviz-metrics-plot")
                        with gr.Accordion("Drafter choice", open=True):
                            drafter_md = gr.Markdown(views.drafter_markdown([]), elem_id="specviz-drafter")
                            choice_plot = gr.Plot(choice_figure([]), show_label=False, visible=False,
                                                  elem_id="specviz-choice-plot")  # an `auto` run's choices
                    with gr.Tab("Race", id="race"):
                        gr.Markdown(RACE_EXPLAINER)
                        race_score = gr.Markdown("Press **Race** to start.", elem_id="specviz-race-score")
                        with gr.Row(equal_height=False):
                            with gr.Column():
                                gr.Markdown("**Speculative** (drafter + target)")
                                race_spec = gr.HTML(views.tokens_html([], show_prompt=False),
                                                    elem_id="specviz-race-spec")
                            with gr.Column():
                                gr.Markdown("**Autoregressive** (target alone)")
                                race_ar = gr.HTML(views.tokens_html([], show_prompt=False), elem_id="specviz-race-ar")
                        race_timeline = gr.Plot(views.timeline_figure([], []), show_label=False,
                                                elem_id="specviz-race-timeline")
                        gr.Markdown(CAPTION_TIMELINE + " The autoregressive run has verification rows only.",
                                    elem_classes=["specviz-caption"])
                    teach_tabs = teach.tabs()  # Lossless?, What if, Acceptance map (teach.py)
                    with gr.Tab("How to read it", id="help"):
                        gr.Markdown(INTRO + "\n\n" + HOW_TO_READ)

        # ---- names -> components, once
        view = dict(status=status, tokens=tokens, text=text, step=step, tree=tree, explain=explain, entropy=entropy,
                    metrics=metrics, metrics_plot=metrics_plot, drafter_panel=drafter_md, download=download)
        assert tuple(view) == VIEWS
        more = dict(timeline=timeline, lengths=lengths, next_btn=next_btn,  # newer: after every documented output
                    choice_plot=choice_plot)
        core, view = view, merged(view, more)
        controls = dict(zip(CONTROLS, (prompt, target, drafter, strategy, draft_len, temperature, top_p, seed, max_new,
                                       rule)))
        extras = dict(stop=stop, fast_path=fast_path, **params, parallel=parallel)  # after the controls, for API clients
        scoreboard = dict(race_spec=race_spec, race_ar=race_ar, race_score=race_score)
        at_step = dict(step=step)

        to_watch = dict(fn=lambda: gr.Tabs(selected="watch"), outputs=[tabs], queue=False, api_visibility="private")
        to_race = dict(to_watch, fn=lambda: gr.Tabs(selected="race"))
        # up to decode_slots() decoding requests at once, taking turns on the decoding thread (scheduler.py);
        # streamed views stay visible while they update
        decode = dict(concurrency_id="decode", concurrency_limit=decode_slots(), show_progress="minimal")

        # Run, Race and Step-by-step are checked first (no outputs, no concurrency limit, so no wait behind a
        # decoding run): a bad request is one toast and no panel is marked as failed; only a request that passes
        # starts (.success) and scrolls the output into view. (A check outside the queue, queue=False, answers a
        # gr.Error with an HTTP 500 that gradio 6.31's page shows no toast for.)
        check = dict(api_visibility="private", show_progress="hidden", concurrency_limit=None)
        form = merged(controls, extras)

        def checked(button, fn=callbacks.check_run, watch=True):
            pre = wire(button.click, fn, form, {}, session, **check)
            pre.success(**(to_watch if watch else to_race))
            pre.success(None, js=SCROLL_TO_OUTPUT)
            return pre.success

        run_event = wire(checked(run_btn), callbacks.run, merged(controls, dict(measure_ar=measure_ar), extras), view,
                         session, api_name="run", **decode)
        race_event = wire(checked(race_btn, callbacks.check_race, watch=False), callbacks.race, form,
                          merged(scoreboard, view, dict(race_timeline=race_timeline)),  # new outputs go last
                          session, api_name="race", **decode)
        step_event = wire(checked(step_btn, callbacks.check_step), callbacks.step_start, form, view, session,
                          api_name="step_start", **decode)
        next_event = wire(next_btn.click, callbacks.step_next, at_step, view, session, api_name="step_next", **decode)
        wire(prev_btn.click, callbacks.step_prev, at_step, view, session, api_name="step_prev")
        wire(stop_btn.click, callbacks.stopped, {}, dict(status=status, download=download), session,
             cancels=[run_event, race_event, step_event, next_event], api_name="stop", queue=False)
        # .input: the user moved the slider (streamed updates of its value do not re-render the step)
        wire(step.input, callbacks.show_step, at_step, dict(tree=tree, explain=explain, tokens=tokens), session,
             api_name="show_step", trigger_mode="always_last", show_progress="hidden")
        wire(rejected_box.input, callbacks.show_rejected, dict(show_rejected=rejected_box, step=step),
             dict(tokens=tokens), session, api_visibility="private", queue=False, show_progress="hidden")
        # a recorded run also sets the controls to what it used (at least its prompt)
        replayed = merged(core, controls, extras, more)
        # an upload is read and rendered first (outside the queue, no outputs): a bad file is one toast
        wire(wire(upload.upload, callbacks.check_trace, dict(upload=upload), {}, session, **check).success,
             callbacks.import_trace, dict(upload=upload), replayed, session, api_name="import_trace")
        wire(example.input, callbacks.load_example, dict(example=example), replayed, session,
             api_name="example_trace")
        # outside the queue: a visitor arriving while the queue is full still gets the landing view
        wire(demo.load, callbacks.first_view, dict(example=example), replayed, session, api_visibility="private",
             queue=False)

        teach.wire(wire, session, form, replayed, tabs, lesson_box, teach_tabs)

        def show_stop_rule(name):
            return {stop_about: menus.stop_rule_about(name)} | {
                group: gr.Group(visible=rule == name) for rule, group in groups.items()}

        def show_drafter(target_name, drafter_name):
            kept = menus.drafter_for(target_name, drafter_name)
            menu = gr.Dropdown(choices=menus.drafters(target_name), **({"value": kept} if kept != drafter_name else {}))
            return {drafter_note: menus.drafter_note(target_name, kept), drafter: menu}

        for menu in (target, drafter):
            menu.change(show_drafter, [target, drafter], [drafter_note, drafter], queue=False, api_visibility="private")
        def show_image(name):  # the image input, for a vision-language target (cleared when it hides)
            shown = vlm is not None and name == vlm
            return gr.Column(visible=shown), (gr.Image() if shown else None)

        target.change(show_image, [target], [image_box, image], queue=False, api_visibility="private")
        # the image lives in the session (the run endpoints keep their parameters); API: /set_image first
        wire(image.change, callbacks.set_image, dict(image=image), {}, session, api_name="set_image", queue=False)
        # after a run, the menu's measured speeds are this machine's newest
        for event in (run_event, race_event):
            event.then(show_drafter, [target, drafter], [drafter_note, drafter], queue=False, api_visibility="private")
        stop.change(show_stop_rule, [stop], [stop_about, *groups.values()], queue=False, api_visibility="private")
        gr.api(health, api_name="health", queue=False)  # RSS, loaded models, budgets (launch.py)
    plain_numbers(demo)
    return demo
