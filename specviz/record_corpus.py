"""`python -m specviz corpus`: record the target's greedy outputs on the training prompts of
corpus.py (what the n-gram drafters count), refusing any overlap with the evaluation prompts."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .corpus import VERSION, digest, path_for, training_prompts
from .prompts import overlapping
from .trace import atomic_write_text


def build(target: str, max_new_tokens: int = 128, limit: int = 0, path: str | os.PathLike | None = None,
          progress=None) -> Path:
    """Generate the target's greedy outputs on training_prompts() and write them atomically."""
    from .api import build_engine
    from .engine import Settings

    prompts = training_prompts()[: limit or None]
    clash = [t[:60] for t in overlapping([p["prompt"] for p in prompts])]
    if clash:
        raise ValueError(f"training prompts overlap the evaluation prompts: {clash}")
    engine = build_engine(target, drafter="pld", draft_len=8)  # lossless under greedy: same tokens as AR, faster
    settings = Settings(max_new_tokens=max_new_tokens)
    outputs = []
    for row in progress(prompts) if progress else prompts:
        outputs.append(engine.generate(row["prompt"], settings).token_ids)
    data = {"version": VERSION, "target": target, "max_new_tokens": max_new_tokens, "prompts": prompts,
            "outputs": outputs, "digest": digest(outputs)}
    return atomic_write_text(path or path_for(target), json.dumps(data, separators=(",", ":")))
