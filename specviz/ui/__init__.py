"""The Gradio page, one idea per file:

    layout.py     the Blocks, and every event wired to its callback by name (wire)
    callbacks.py  run, race, step-by-step, stop, import and example traces
    render.py     the run on display -> every view, by name
    session.py    per-visitor state (Session) and the per-process AR references
    request.py    widget values -> a prompt and a checked RunConfig
    menus.py      the menus, read from the registries
    streaming.py  the engine's events in a background thread; redraw throttle
    measured.py   this machine's forward-cost curve and drafter speeds, kept per machine (metrics, menu)
    launch.py     address, launch() arguments, Space environment, GPU decorator, warm-up
    texts.py      the page's fixed words and CSS
    skips.py      outputs a callback leaves alone skip gradio's per-output work (a gradio 6 cost)

    demo = build_demo(); demo.launch(**launch_kwargs())      # see the top-level app.py
"""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

from .launch import launch_kwargs, prepare_environment, server_address, warm_up  # noqa: E402
from .layout import build_demo  # noqa: E402
from .request import read_request  # noqa: E402

__all__ = ["build_demo", "launch_kwargs", "prepare_environment", "read_request", "server_address", "warm_up"]
