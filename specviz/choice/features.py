"""What the drafter-choice policy sees of a prompt, at no extra cost: the target's own prefill states
(pooled) and a few text statistics.

    pooled_states(hidden)      [prompt rows, hidden] final normed states -> [2 * hidden] (mean, last row)
    text_stats(ids, text)      TEXT_STATS, in that order: cheap numbers about the prompt itself

The prefill forward computes the states anyway; pooling them is two reductions. The statistics say
how much the prompt repeats itself (what prompt lookup and n-gram counts feed on) and how code-like
it is.
"""
from __future__ import annotations

import math

import torch

TEXT_STATS = (
    "log_tokens",  # log(1 + prompt tokens)
    "repeat_2",  # share of the prompt's token 2-grams seen earlier in the prompt
    "repeat_4",  # the same for 4-grams: long copies
    "distinct",  # distinct tokens / tokens
    "code_chars",  # share of characters in {}()[];=<>_#:
    "indented",  # share of lines starting with 4 spaces or a tab
    "digits",  # share of digits among the characters
    "lines",  # log(1 + newlines)
)
CODE_CHARS = set("{}()[];=<>_#:")


def repeated_share(ids: list[int], n: int) -> float:
    """Share of the n-grams of `ids` that occurred earlier in `ids`."""
    seen, repeats, total = set(), 0, 0
    for i in range(len(ids) - n + 1):
        gram = tuple(ids[i:i + n])
        total += 1
        repeats += gram in seen
        seen.add(gram)
    return repeats / total if total else 0.0


def text_stats(ids: list[int], text: str = "") -> list[float]:
    chars = max(1, len(text))
    lines = text.split("\n") if text else []
    return [
        math.log1p(len(ids)),
        repeated_share(ids, 2),
        repeated_share(ids, 4),
        len(set(ids)) / max(1, len(ids)),
        sum(ch in CODE_CHARS for ch in text) / chars,
        sum(line.startswith(("    ", "\t")) for line in lines) / max(1, len(lines)),
        sum(ch.isdigit() for ch in text) / chars,
        math.log1p(text.count("\n")),
    ]


def pooled_states(hidden: torch.Tensor) -> torch.Tensor:
    """[rows, hidden] -> [2 * hidden]: the mean over the prompt's rows, then the last row (fp32, CPU)."""
    hidden = hidden.detach().float().cpu()
    return torch.cat([hidden.mean(0), hidden[-1]])


@torch.inference_mode()
def prefill_states(model: torch.nn.Module, prompt_ids: list[int], fast_path: bool | None = None) -> torch.Tensor:
    """The pooled final states of a prefill of `prompt_ids` alone (what `auto` pools from its first step)."""
    from ..lm import CachedLM

    lm = CachedLM(model, fast_path)
    lm.forward(list(prompt_ids), hidden_layers=(-1,))
    return pooled_states(lm.hidden[-1])
