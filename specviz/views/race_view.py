"""Race mode's scoreboard: autoregressive vs speculative decoding of the same prompt.

Both sides run in one thread and take turns: the side that has used less of its own decoding time
goes next. So at any moment the two texts show where each side would be after the same amount of
its own compute, which is a fair race on a machine too small to run both at full speed at once.
"""
from __future__ import annotations

from ..events import Event
from .steps import latest_metrics, run_finished

EXPLAINER = ("Both sides share this machine, so they take turns, one target forward at a time: whichever has "
             "used less of its **own** decoding time goes next. The texts therefore advance at each side's "
             "real measured pace (both at about half speed, since they alternate).")


def side_line(name: str, events: list[Event]) -> str:
    m = latest_metrics(events)
    if m is None:
        return f"**{name}:** waiting…"
    done = " ✔ finished" if run_finished(events) is not None else ""
    return (f"**{name}:** {m.tokens} tokens in {m.elapsed_s:.2f} s → **{m.tokens_per_s:.1f} tok/s**, "
            f"{m.steps} target forwards{done}")


def race_markdown(spec: list[Event], ar: list[Event]) -> str:
    lines = [side_line("Speculative", spec), side_line("Autoregressive", ar)]
    ms, ma = latest_metrics(spec), latest_metrics(ar)
    if ms is not None and ma is not None and ma.tokens_per_s > 0 and ms.tokens_per_s > 0:
        lines.append(f"**Speedup so far: {ms.tokens_per_s / ma.tokens_per_s:.2f}×** (tokens/s ratio)")
    return "  \n".join(lines)
