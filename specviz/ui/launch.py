"""Launching the page: where it listens, gradio's launch() arguments, the environment of a Hugging
Face Space, the GPU decorator of a ZeroGPU Space, and a warm-up that loads the default target."""
from __future__ import annotations

import os
import threading

from .. import models, trace
from ..config import RunConfig
from ..examples import ASSETS
from .texts import CSS

try:  # on a Hugging Face ZeroGPU Space, decoding functions borrow a GPU; elsewhere a no-op
    import spaces

    gpu = spaces.GPU
except ImportError:
    def gpu(fn):
        return fn


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


def warm_up(target: str = RunConfig().target) -> threading.Thread | None:
    """Load the default target in the background so the first Run starts at once."""
    if os.environ.get("SPECVIZ_FROM_HUB") != "1" and models.status(target) != "ready":
        return None
    from ..api import load_model

    thread = threading.Thread(target=lambda: _quiet(load_model, target), daemon=True, name="specviz-warm-up")
    thread.start()
    return thread


def _quiet(fn, *args):
    try:
        fn(*args)
    except Exception:  # a failed warm-up only means the first run loads the model itself
        pass
