"""Regenerate the example traces the app shows on page load (real engine runs, no edits).

    .venv/bin/python assets/make_examples.py            # all of them
    .venv/bin/python assets/make_examples.py 2-rag      # those whose name starts with an argument
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from specviz import trace  # noqa: E402
from specviz.api import build_engine  # noqa: E402
from specviz.engine import Settings  # noqa: E402
from specviz.examples import ASSETS, PROMPTS  # noqa: E402

EXAMPLES = [
    # name, target, drafter, draft length, prompt, settings
    ("0-summary-smollm2-auto-greedy", "smollm2-135m", "auto", 4, PROMPTS["summarization"],
     Settings(max_new_tokens=96, temperature=0.0)),
    ("1-code-qwen0.5b-drafts-for-qwen1.5b-T0.8", "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", 4, PROMPTS["code"],
     Settings(max_new_tokens=80, temperature=0.8, seed=1)),
    ("2-summary-smollm2-pld-greedy", "smollm2-135m", "pld", 6, PROMPTS["summarization"],
     Settings(max_new_tokens=96, temperature=0.0)),
    ("3-rag-smollm2-pld-T0.7", "smollm2-135m", "pld", 4, PROMPTS["RAG"],
     Settings(max_new_tokens=64, temperature=0.7, top_p=0.9, seed=1)),
]


def main(prefixes: list[str]) -> None:
    for name, target, drafter, k, prompt, settings in EXAMPLES:
        if prefixes and not any(name.startswith(p) for p in prefixes):
            continue
        engine = build_engine(target, drafter, k)
        events = list(engine.stream_text(prompt, settings))
        path = trace.save(events, ASSETS / f"{name}.trace.json")
        m = events[-1].metrics
        print(f"{path.name}: {m.tokens} tokens, tau {m.tau:.2f}, acceptance {m.acceptance_rate:.2f}, "
              f"{m.tokens_per_s:.1f} tok/s, {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main(sys.argv[1:])
