"""The example prompts and the recorded example runs (assets/*.trace.json), without any UI.

The app offers the prompts and shows a recorded run on arrival; assets/make_examples.py records
those runs from the same prompts. Nothing here needs Gradio or a model.
"""
from __future__ import annotations

from pathlib import Path

from .paths import ASSETS

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
PROMPTS = dict(EXAMPLE_PROMPTS)

# The recorded run a visitor sees first: the app's default target and drafter on the default prompt,
# so that pressing Run decodes live what the page already shows recorded.
LANDING_EXAMPLE = "0-summary-smollm2-auto-greedy"  # the page's default drafter (ui/launch.py app_default)
LANDING_PROMPT = PROMPTS["summarization"]


def example_traces() -> dict[str, Path]:
    """Recorded example runs by name (file name without .trace.json), in name order."""
    return {p.name.removesuffix(".trace.json"): p for p in sorted(ASSETS.glob("*.trace.json"))}


def landing_example() -> str | None:
    """The example shown on arrival: LANDING_EXAMPLE if it is there, else the first one."""
    names = list(example_traces())
    return LANDING_EXAMPLE if LANDING_EXAMPLE in names else (names[0] if names else None)
