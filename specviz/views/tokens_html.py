"""The generated text as colored HTML: each token styled by how it came, the numbers behind each token
in its hover title. The rejected drafts are named in the title of the token that replaced them; with
show_rejected they are also drawn inline, struck through, where they were proposed (the page's toggle:
a tree drafter's rejected siblings would otherwise crowd the text).

All token text is escaped: tokens (and traces) are untrusted input. The HTML stays bounded
whatever the trace holds: at most MAX_REJECTED rejected drafts are shown at one position (then a
"+K" note), a token's text at most MAX_CHARS characters (no real token comes near), and a run
costing more than MAX_SPANS spans (a span of 100 characters counting double) is shown as a window
around the focused step.
"""
from __future__ import annotations

from ..events import Event
from .labels import esc, number, ratio
from .palette import MEANING, SHORT, TEXT_STYLE
from .steps import Step, run_started, split_steps

BOX = ("font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:15px;line-height:1.9;"
       "white-space:pre-wrap;word-break:break-word;padding:10px 12px;border-radius:8px;"
       "border:1px solid #cbd5e1;min-height:4em;max-height:480px;overflow-y:auto;")
TOKEN = "border-radius:3px;padding:1px 0;"
PROMPT_STYLE = "color:#64748b;font-style:italic;"
# Tokens of one step (one target forward) share an underline; steps alternate its shade.
STEP_MARK = ("box-shadow:inset 0 -2px 0 #64748b;", "box-shadow:inset 0 -2px 0 #cbd5e1;")
FOCUS = "outline:2px solid #6366f1;outline-offset:1px;"  # the step shown in the step explorer
MAX_REJECTED = 8  # rejected drafts shown at one position
MAX_SPANS = 3000  # token and rejected-draft spans in one rendering (a window around the focus beyond)
MAX_CHARS = 200  # characters of one token's text shown (a trace may hold up to 1000)
NOTE_STYLE = "color:#94a3b8;font-style:italic;"


def legend_html(include_rejected: bool = True) -> str:
    kinds = ["accepted", "resampled", "bonus", "target"] + (["rejected"] if include_rejected else [])
    chips = []
    for kind in kinds:
        label = SHORT[kind] if kind != "target" else "plain = target only (no draft)"
        chips.append(f'<span title="{esc(MEANING[kind])}" style="{TOKEN}{TEXT_STYLE[kind]}padding:2px 6px;'
                     f'margin-right:6px;white-space:nowrap;{"border:1px solid #cbd5e1;" if kind == "target" else ""}">'
                     f"{esc(label)}</span>")
    return ('<div class="specviz-legend" style="font-size:13px;line-height:2.1;">' + "".join(chips)
            + '<div style="color:#64748b;line-height:1.4;">Grey italics: your prompt. An underline groups the tokens '
              'one target forward produced (shades alternate). A blue outline marks the step shown in the step '
              'explorer. Hover a token for q, p and min(1, p/q), and the drafts rejected at its place (tick '
              '<i>show rejected drafts</i> to see them struck through in the text).</div></div>')


def token_title(kind: str, step: int, p=None, q=None, accept_prob=None, greedy: bool = False,
                rejected: list | None = None) -> str:
    lines = [f"{SHORT[kind]} (step {step})"]
    if q is not None:
        lines.append(f"q (drafter) = {number(q)}")
    if p is not None:
        lines.append(f"p (target) = {number(p)}" + (" before the residual" if kind == "resampled" else ""))
    if q is not None and p is not None:
        lines.append(f"acceptance {ratio(p, q)}")
    elif accept_prob is not None:
        lines.append(f"acceptance probability = {number(accept_prob)}")
    if kind == "resampled" and greedy:
        lines.append("the target's own top token, in the rejected draft's place")
    elif kind == "resampled":
        lines.append("drawn from norm(max(0, p - q))")
    elif kind == "bonus":
        lines.append("the target's top token after the last accepted draft" if greedy else
                     "drawn from p after the last accepted draft")
    if rejected:
        names = ", ".join(repr(n.text) for n in rejected[:MAX_REJECTED])
        more = f" and {len(rejected) - MAX_REJECTED} more" if len(rejected) > MAX_REJECTED else ""
        lines.append(f"rejected here: {names}{more}")
    return "\n".join(lines)


def greedy_run(events: list[Event]) -> bool:
    """Decoded greedily: the greedy rule, or temperature 0 (tokens are then the target's top tokens)."""
    start = run_started(events)
    if start is None:
        return False
    if start.rule == "greedy":
        return True
    settings = start.settings if isinstance(start.settings, dict) else {}
    t = settings.get("temperature")
    return isinstance(t, (int, float)) and not isinstance(t, bool) and t == 0


def span(text: str, style: str, title: str, kind: str) -> str:
    text = text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + "…"
    return f'<span class="tok tok-{kind}" style="{TOKEN}{style}" title="{esc(title)}">{esc(text)}</span>'


def rejected_at(step: Step) -> list[list]:
    """For each emitted token of the step, the rejected drafts at its position (children of the
    path node before it)."""
    if step.verified is None:
        return [[] for _ in step.tokens]
    path = step.verified.path
    by_parent: dict[int, list] = {}
    for node in step.nodes:
        if node.status == "rejected":
            by_parent.setdefault(node.parent, []).append(node)
    parents = [-1 if i == 0 else (path[i - 1] if i - 1 < len(path) else None) for i in range(len(step.tokens))]
    return [by_parent.get(parent, []) if parent is not None else [] for parent in parents]


def step_spans(step: Step, show_rejected: bool = False) -> int:
    """What step_html writes for the step, in spans (plus one per 100 characters of text)."""
    shown = list(step.tokens)
    for rejected in rejected_at(step) if show_rejected else ():
        shown += rejected[:MAX_REJECTED] + ([None] if len(rejected) > MAX_REJECTED else [])
    return len(shown) + sum(min(len(x.text), MAX_CHARS) for x in shown if x is not None) // 100


def step_html(step: Step, show_rejected: bool = False, focus: bool = False, greedy: bool = False) -> str:
    """One step: at each position of the accepted path, its rejected alternatives (inline with
    show_rejected, else named in the token's title), then the token."""
    mark = STEP_MARK[step.index % 2] + (FOCUS if focus else "")
    out = []
    for tok, rejected in zip(step.tokens, rejected_at(step)):
        if show_rejected:
            for node in rejected[:MAX_REJECTED]:
                out.append(span(node.text, TEXT_STYLE["rejected"] + (FOCUS if focus else ""),
                                token_title("rejected", step.index, node.p, node.q), "rejected"))
            if len(rejected) > MAX_REJECTED:
                more = len(rejected) - MAX_REJECTED
                out.append(f'<span class="more" style="{NOTE_STYLE}" title="{more} more rejected drafts here '
                           f'(step {step.index}): see the step explorer">+{more}</span>')
        out.append(span(tok.text, TEXT_STYLE.get(tok.kind, "") + mark,
                        token_title(tok.kind, step.index, tok.p, tok.q, tok.accept_prob, greedy,
                                    None if show_rejected else rejected), tok.kind))
    return "".join(out)


def window(steps: list[Step], focus: int | None, show_rejected: bool = False) -> tuple[int, int]:
    """steps[lo:hi], the steps around the focused one (default: the last) whose spans fit MAX_SPANS."""
    sizes = [step_spans(step, show_rejected) for step in steps]
    if sum(sizes) <= MAX_SPANS:
        return 0, len(steps)
    at = next((i for i, step in enumerate(steps) if step.index == focus), len(steps) - 1)
    lo, hi, total = at, at + 1, sizes[at]
    while True:
        grown = False
        for side in (1, -1):  # grow later, then earlier, while it fits
            i = hi if side == 1 else lo - 1
            if 0 <= i < len(steps) and total + sizes[i] <= MAX_SPANS:
                total += sizes[i]
                lo, hi = (lo, hi + 1) if side == 1 else (lo - 1, hi)
                grown = True
        if not grown:
            return lo, hi


def left_out(steps: list[Step], where: str) -> str:
    tokens = sum(len(step.tokens) for step in steps)
    return (f'<span class="more" style="{NOTE_STYLE}">[… {tokens} {where} tokens (steps {steps[0].index}–'
            f'{steps[-1].index}) not shown here: pick a step there to see them …]</span>')


def tokens_html(events: list[Event], show_rejected: bool = False, show_prompt: bool = True, focus: int | None = None,
                prompt_chars: int = 300, placeholder: str = "Run a prompt or load a trace to see tokens here.") -> str:
    """The whole text so far; `focus` outlines the tokens of one step (the one the step explorer shows)."""
    start = run_started(events)
    body = []
    if show_prompt and start is not None and isinstance(start.prompt, str) and start.prompt:
        prompt = start.prompt if len(start.prompt) <= prompt_chars else "…" + start.prompt[-prompt_chars:]
        body.append(f'<span class="prompt" style="{PROMPT_STYLE}" title="the prompt">{esc(prompt)}</span>\n')
    steps = split_steps(events)
    lo, hi = window(steps, focus, show_rejected)
    if lo > 0:
        body.append(left_out(steps[:lo], "earlier"))
    greedy = greedy_run(events)
    body += [step_html(step, show_rejected, step.index == focus, greedy) for step in steps[lo:hi]]
    if hi < len(steps):
        body.append(left_out(steps[hi:], "later"))
    if not steps:
        body.append(f'<span style="color:#94a3b8;">{esc(placeholder)}</span>')
    return f'<div class="specviz-tokens" style="{BOX}">{"".join(body)}</div>'
