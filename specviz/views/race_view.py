"""Race mode's scoreboard: autoregressive vs speculative decoding of the same prompt.

The two sides run one after the other, each alone on the machine, so each reports its own engine's
decoding speed (two runs taking turns on a small machine slow each other: caches, memory bandwidth).
The timeline then puts both on one clock.
"""
from __future__ import annotations

from ..events import Event
from .steps import decode_metrics, latest_metrics, run_finished

EXPLAINER = ("The speculative side runs first, then the target alone, each with the machine to itself, so each "
             "reports its **own** decoding speed (the prompt's reading, the first step, is left out of both). The "
             "timeline below puts both runs on one clock once both are done.")


def side_line(name: str, events: list[Event]) -> str:
    m = latest_metrics(events)
    if m is None:
        return f"**{name}:** waiting…"
    done = " ✔ finished" if run_finished(events) is not None else ""
    d = decode_metrics(events)
    rate = f"**{d.tokens_per_s:.1f} tok/s** decoding" if d is not None else "decoding speed after the first step"
    return f"**{name}:** {m.tokens} tokens in {m.elapsed_s:.2f} s → {rate}, {m.steps} target forwards{done}"


def race_markdown(spec: list[Event], ar: list[Event]) -> str:
    lines = [side_line("Speculative", spec), side_line("Autoregressive", ar)]
    ms, ma = decode_metrics(spec), decode_metrics(ar)
    if ms is not None and ma is not None and ma.tokens_per_s > 0 and ms.tokens_per_s > 0:
        both = run_finished(spec) is not None and run_finished(ar) is not None
        lines.append(f"**Speedup{'' if both else ' so far'}: {ms.tokens_per_s / ma.tokens_per_s:.2f}×** "
                     "(decoding tokens/s ratio)")
    return "  \n".join(lines)
