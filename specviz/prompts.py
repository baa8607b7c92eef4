"""The evaluation prompt set (assets/prompts.jsonl) and reading prompt files in its format.

Training data and tuning never touch these prompts; corpus and distillation builders check it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .paths import ASSETS

DEFAULT_PROMPTS = ASSETS / "prompts.jsonl"  # the project's prompt set (12 prompts, 7 categories)
HELDOUT_PROMPTS = ASSETS / "prompts-heldout.jsonl"  # 28 more, written later and never tuned on
EVALUATION_SETS = (DEFAULT_PROMPTS, HELDOUT_PROMPTS)


def read_prompts(path: str | os.PathLike | None = None) -> list[dict]:
    """JSONL lines with 'prompt' (or Spec-Bench 'turns': first turn used) and optional 'category'."""
    path = Path(path) if path else DEFAULT_PROMPTS
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{n}: not valid JSON") from None
        text = row.get("prompt") or (row.get("turns") or [None])[0] if isinstance(row, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{path}:{n}: needs a non-empty 'prompt' or 'turns'")
        out.append({"prompt": text, "category": str(row.get("category", "all"))})
    if not out:
        raise ValueError(f"{path}: no prompts")
    return out


def evaluation_prompts() -> list[str]:
    """Every prompt of every evaluation set: training data must hold none of them."""
    return [p["prompt"] for path in EVALUATION_SETS for p in read_prompts(path)]


def overlapping(training: list[str], evaluation: list[str] | None = None) -> list[str]:
    """Training texts that equal, contain or are contained in an evaluation prompt."""
    evaluation = evaluation_prompts() if evaluation is None else evaluation
    return [t for t in training if any(e in t or t in e for e in evaluation)]
