"""Launch the specviz app: `python app.py` (a Hugging Face Space runs this file too).

Binds 127.0.0.1:7860 unless SPECVIZ_HOST/SPECVIZ_PORT (or GRADIO_SERVER_NAME/PORT) say otherwise;
on a Space (SPACE_ID set) it binds 0.0.0.0 and loads model presets from their hub ids.
"""
import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported

from specviz import memory  # noqa: E402

memory.configure_for_server()  # before any thread starts: two malloc arenas, a fixed mmap threshold
if os.environ.get("SPECVIZ_TRACEMALLOC") == "1":  # /health then names what holds Python memory (slow)
    import tracemalloc

    tracemalloc.start()

from specviz.ui import build_demo, launch_kwargs, prepare_environment, warm_up  # noqa: E402
from specviz.ui.launch import queue_kwargs, start_housekeeping  # noqa: E402

prepare_environment()
demo = build_demo()

if __name__ == "__main__":
    start_housekeeping()  # model memory budget, idle step-by-step release (SPECVIZ_* budgets)
    warm_up()
    demo.queue(**queue_kwargs()).launch(**launch_kwargs())
