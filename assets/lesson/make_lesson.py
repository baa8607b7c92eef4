"""Record the guided lesson's traces (real engine runs of SmolLM2-135M, no edits). The lesson also uses the
example traces in assets/ (specviz/views/lesson.py says which step shows which).

    .venv/bin/python assets/lesson/make_lesson.py            # all of them
    .venv/bin/python assets/lesson/make_lesson.py tree       # those whose name starts with an argument
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from specviz import trace  # noqa: E402
from specviz.api import build_engine  # noqa: E402
from specviz.engine import Settings  # noqa: E402
from specviz.examples import PROMPTS  # noqa: E402

LESSON_TRACES = [
    # name, drafter, draft length, rule, stop, prompt, settings
    ("tree-summary-pld-tree-greedy", "pld-tree", 8, "auto", "static", PROMPTS["summarization"],
     Settings(max_new_tokens=48, temperature=0.0)),
    ("stop-rag-distill-kd-adaedl", "distill-kd", 8, "auto", "adaedl", PROMPTS["RAG"],
     Settings(max_new_tokens=48, temperature=0.0)),
    ("lossy-rag-pld-typical-T0.7", "pld", 4, "typical-lossy", "static", PROMPTS["RAG"],
     Settings(max_new_tokens=48, temperature=0.7, top_p=0.9, seed=1)),
]


def main(prefixes: list[str]) -> None:
    for name, drafter, k, rule, stop, prompt, settings in LESSON_TRACES:
        if prefixes and not any(name.startswith(p) for p in prefixes):
            continue
        engine = build_engine("smollm2-135m", drafter, k, rule=rule, stop=stop)
        events = list(engine.stream_text(prompt, settings))
        path = trace.save(events, HERE / f"{name}.trace.json")
        m = events[-1].metrics
        print(f"{path.name}: {m.tokens} tokens, tau {m.tau:.2f}, acceptance {m.acceptance_rate:.2f}, "
              f"{path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main(sys.argv[1:])
