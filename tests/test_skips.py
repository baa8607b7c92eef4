"""specviz/ui/skips.py: skipped outputs get gradio's own message without gradio rebuilding their components."""
import asyncio

import gradio as gr
from gradio import blocks
from gradio.state_holder import SessionState

from specviz.ui import skips


def _demo():
    with gr.Blocks() as demo:
        md, plot, slider, btn = gr.Markdown("a"), gr.Plot(), gr.Slider(0, 5, value=1), gr.Button("go")
        state = gr.State(0)
        btn.click(lambda: None, None, [md, plot, slider, btn, state])
    fn = next(iter(demo.fns.values()))
    return demo, fn, dict(md=md, plot=plot, slider=slider, btn=btn, state=state)


CASES = [
    lambda c: {c["md"]: "streamed"},  # the rest skipped, as the run event's streamed updates
    lambda c: {c["md"]: "x", c["slider"]: gr.Slider(maximum=9, value=3), c["state"]: 7},
    lambda c: {c["plot"]: None, c["btn"]: gr.Button("Verify")},
    lambda c: ["y", gr.skip(), gr.skip(), gr.skip(), 1],
    lambda c: gr.skip(),  # everything skipped
    lambda c: {c["md"]: gr.skip()},
]


def _run(patched: bool, case, arm=lambda: None):
    original = blocks.Blocks.postprocess_data
    # gradio's own method, even when an app built earlier in this process installed the fix
    blocks.Blocks.postprocess_data = getattr(original, "__wrapped__", original)
    try:
        if patched:
            skips.install()
        demo, fn, comps = _demo()
        state = SessionState(demo)
        arm()  # what happens from here on is the postprocessing alone
        out = asyncio.run(demo.postprocess_data(fn, case(comps), state))
        return out, state
    finally:
        blocks.Blocks.postprocess_data = original


def test_same_messages_as_gradio():
    for case in CASES:
        (plain, s1), (fast, s2) = _run(False, case), _run(True, case)
        assert fast == plain
        assert list(s1.state_data.values()) == list(s2.state_data.values())  # gr.State outputs still stored


def test_a_skip_builds_no_component(monkeypatch):
    built = []
    original = blocks.BlocksConfig.config_for_block

    def counting(_id, rendered_ids, block, renderable=None):
        built.append(type(block).__name__)
        return original(_id, rendered_ids, block, renderable)

    monkeypatch.setattr(blocks.BlocksConfig, "config_for_block", staticmethod(counting))
    _run(False, CASES[0], arm=built.clear)
    assert "Plot" in built and "Slider" in built  # gradio's own path rebuilds the skipped ones
    _run(True, CASES[0], arm=built.clear)
    assert not built  # the output that was set only had its value replaced


def test_install_is_idempotent():
    original = blocks.Blocks.postprocess_data
    blocks.Blocks.postprocess_data = getattr(original, "__wrapped__", original)
    try:
        skips.install()
        once = blocks.Blocks.postprocess_data
        skips.install()
        assert blocks.Blocks.postprocess_data is once
    finally:
        blocks.Blocks.postprocess_data = original
