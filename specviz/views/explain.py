"""Plain-language account of one speculative step, from its events alone (live or replayed).

    explain_step(events_of_step, rule="sampling") -> markdown
"""
from __future__ import annotations

from .. import rules
from ..events import Event, RunStarted
from . import stop_note
from .labels import esc, number, visible
from .sources import source_symbols
from .steps import Step, split_steps

MAX_LINES = 12  # tried nodes explained one by one at a position


def code(text) -> str:
    """A token as inline code, made visible and safe for markdown (no backticks can break out)."""
    return "`" + visible(text, 24).replace("`", "ˋ") + "`"


def names(nodes, limit: int = 8) -> str:
    return ", ".join(code(n.text) for n in nodes[:limit]) + (", …" if len(nodes) > limit else "")


def looks_greedy(step: Step) -> bool:
    values = [n.p for n in step.nodes if n.p is not None] + [t.p for t in step.tokens if t.kind != "accepted"]
    return bool(values) and all(v in (0.0, 1.0) for v in values)


def is_greedy(rule: str | None, start: RunStarted | None, step: Step) -> bool:
    """Was this step verified greedily? The rule says so, else the run's temperature, else its numbers."""
    if rule in ("greedy", "sampling"):
        return rule == "greedy"
    settings = start.settings if start is not None and isinstance(start.settings, dict) else {}
    temperature = settings.get("temperature")
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        return temperature == 0
    return looks_greedy(step)


def is_lossy(rule: str | None) -> bool:
    return rule in rules.VERIFY_RULES and not rules.VERIFY_RULES.get(rule).lossless


def stop_line(note, tree: bool, depth: int | None = None, subject: str = "Drafting stopped") -> str | None:
    """Why drafting ended this step, from the Drafted event's stop note (None without one). `depth`: the
    deepest drafted node, which the text gives (it is what the figure shows) where the note counts otherwise."""
    if not stop_note.is_note(note):
        return None
    if note.get("rule") == stop_note.MERGED_ALONE:
        return f"**Merged tree**: {esc(stop_note.why(note))}."
    depth = note["depth"] if depth is None else depth
    unit = ("level" if tree else "token") + ("s" if depth != 1 else "")
    numbers = ", ".join(f"{esc(k)} = {esc(v)}" for k, v in stop_note.numbers(note))
    return (f"**{subject}** after {depth} {unit}: {esc(stop_note.why(note))} "
            f"(stopping rule **{esc(stop_note.label(note))}**" + (f"; {numbers}" if numbers else "") + ").")


def merged_line(nodes, sources=None) -> str | None:
    """A tree merged from two drafters' (Node.source): how many nodes each proposed, in the figure's shapes."""
    shapes = source_symbols(nodes, sources)
    if not shapes:
        return None
    parts = [(f"{k} proposed by both" if src == "both" else f"{k} from the {esc(src)}") + f" ({shape}s)"
             for src, shape in shapes.items() for k in [sum(1 for n in nodes if n.source == src)]]
    parts += [f"none from the {esc(src)}" for src in sources or [] if src not in shapes]
    return "**Merged** from two drafters' trees, shared prefixes once: " + ", ".join(parts) + "."


def node_line(node, greedy: bool, target_choice, lossy: bool = False) -> str:
    numbers = f"q = {number(node.q)}, p = {number(node.p)}"
    if lossy and not greedy and node.status in ("accepted", "rejected"):
        verdict = "accepted" if node.status == "accepted" else "rejected"
        return (f"- {'✔' if verdict == 'accepted' else '✗'} {code(node.text)} **{verdict}** by the rule below "
                f"({numbers}; the rule's acceptance for it: {number(node.accept_prob)}).")
    if node.status == "accepted":
        if greedy:
            return f"- ✔ {code(node.text)} **accepted**: it is the target's top token here ({numbers})."
        return (f"- ✔ {code(node.text)} **accepted** ({numbers}): accept probability "
                f"`min(1, p/q)` = {number(node.accept_prob)}, and the coin came up below it.")
    if node.status == "rejected":
        if greedy:
            choice = f": the target's top token is {code(target_choice)}" if target_choice is not None else ""
            return f"- ✗ {code(node.text)} **rejected**{choice} ({numbers})."
        below = (node.p or 0) < (node.q or 0)
        why = "p < q, so it is kept only with probability p/q" if below else "tried against a residual"
        return (f"- ✗ {code(node.text)} **rejected** ({numbers}): accept probability {number(node.accept_prob)} "
                f"({why}), and the coin came up above it.")
    return f"- ⋯ {code(node.text)} never checked."


def explain_step(events: list[Event], rule: str | None = None) -> str:
    steps = split_steps(events)
    if not steps:
        return "*Pick a step to see what happened in it.*"
    step = steps[-1]
    start = next((e for e in events if isinstance(e, RunStarted)), None)
    rule = rule or (start.rule if start is not None else None)
    greedy, lossy = is_greedy(rule, start, step), is_lossy(rule)
    formula = rules.explain(rule, greedy)
    nodes, tokens = step.nodes, step.tokens
    path = step.verified.path if step.verified is not None else []
    final = tokens[len(path)] if len(tokens) > len(path) else None
    out = [f"### Step {step.index}: {len(tokens)} token{'s' if len(tokens) != 1 else ''} from one target forward"]
    if not nodes:
        out.append("**Nothing was drafted** (no drafter, or prompt lookup found no earlier repeat of the last "
                   "few tokens), so this is an ordinary autoregressive step: one forward of the target, one token"
                   + (f": {code(final.text)} (p = {number(final.p)})." if final is not None else "."))
        out.append(formula)
        return "\n\n".join(out)
    chain = all(n.parent == n.id - 1 for n in nodes)
    if chain:
        shape = " → ".join(code(n.text) for n in nodes[:12]) + (" → …" if len(nodes) > 12 else "")
        out.append(f"**Drafted** a chain of {len(nodes)} token{'s' if len(nodes) != 1 else ''}: {shape}")
    else:
        depth = max(n.depth for n in nodes)
        out.append(f"**Drafted** a tree of {len(nodes)} nodes, {depth} deep (several guesses per position).")
    merged = merged_line(nodes, step.drafted.sources if step.drafted is not None else None)
    if merged:
        out.append(merged)
    note = step.drafted.stop if step.drafted is not None else None
    if merged:  # the stopping rule bounds the first drafter only: its own depth, not the deepest graft
        stopped = stop_line(note, tree=True, subject="The first drafter stopped")
    else:
        stopped = stop_line(note, tree=not chain, depth=max(n.depth for n in nodes))
    if stopped:
        out.append(stopped)
    if step.verified is None:  # step-by-step, between its two clicks
        out[0] = f"### Step {step.index}: drafted, not verified yet"
        out.append(f"**Next**, one forward of the target will score all {len(nodes)} drafted position"
                   f"{'s' if len(nodes) != 1 else ''} at once and keep the longest run of drafts it agrees with.")
        return "\n\n".join(out)
    out.append("**Verified** all of them with a single forward of the target (it scores every position at once):")
    lines, parent = [], -1
    checked = set()
    children_of: dict[int, list] = {}
    for node in nodes:
        children_of.setdefault(node.parent, []).append(node)
    for depth in range(len(path) + 1):
        target_choice = final.text if (final is not None and depth == len(path)) else None
        tried = [n for n in children_of.get(parent, []) if n.status in ("accepted", "rejected")]
        checked.update(n.id for n in tried)
        shown = tried[:MAX_LINES] + [n for n in tried[MAX_LINES:] if n.status == "accepted"]
        rest = [n for n in tried[MAX_LINES:] if n.status != "accepted"]
        lines += [node_line(node, greedy, target_choice, lossy) for node in shown]
        if rest:  # a huge tree stays a readable (and small) explanation
            lines.append(f"- ✗ … and {len(rest)} more rejected here: {names(rest)}")
        if depth < len(path):
            parent = path[depth]
    on_path = {-1, *path}
    skipped = [n for n in nodes if n.id not in checked]
    spare = [n for n in skipped if n.parent in on_path]  # siblings left over once one was accepted
    beyond = [n for n in skipped if n.parent not in on_path]
    if spare:
        lines.append(f"- ⋯ {names(spare)}: not needed, a sibling tried before {'it' if len(spare) == 1 else 'them'} "
                     "was accepted.")
    if beyond:
        lines.append(f"- ⋯ {names(beyond)}: never checked, they continue a draft the target did not take.")
    out.append("\n".join(lines))
    if final is None:
        out.append("**Then** the run ended inside this step (end of text or the token budget).")
    elif final.kind == "resampled":
        if lossy and not greedy:
            out.append(f"**Then** the target added {code(final.text)} in the rejected draft's place, drawn as the "
                       f"rule below says (p = {number(final.p)}). This rule is **LOSSY**: the output is **not** "
                       "distributed exactly like the target's own.")
        elif greedy:
            out.append(f"**Then** the target's own top token {code(final.text)} takes the rejected draft's place.")
        else:
            out.append(f"**Then** {code(final.text)} was **resampled** from the residual `norm(max(0, p − q))`: the "
                       f"probability p puts beyond what q offered (p = {number(final.p)} before the residual). "
                       "This correction is what keeps the output distributed exactly like the target alone.")
    elif final.kind == "bonus":
        out.append(f"**Then**, since every draft was accepted, the same forward already holds the target's next "
                   f"distribution: it adds the **bonus** token {code(final.text)} for free (p = {number(final.p)}).")
    n_acc = sum(t.kind == "accepted" for t in tokens)
    own = len(tokens) - n_acc
    timing = ""
    if step.finished is not None:
        timing = f" Time: draft {1000 * step.finished.draft_s:.0f} ms, verify {1000 * step.finished.verify_s:.0f} ms."
    out.append(f"**Result:** {len(tokens)} token{'s' if len(tokens) != 1 else ''} ({n_acc} accepted "
               f"draft{'s' if n_acc != 1 else ''}" + (f" + {own} from the target" if own else "") +
               f") for the price of one target forward; autoregressive decoding would have needed "
               f"{len(tokens)}.{timing}")
    out.append(formula)
    return "\n\n".join(out)


def explain_run_step(events: list[Event], index: int | None = None) -> str:
    """explain_step for step `index` (default: the latest) of a whole run's events."""
    steps = split_steps(events)
    if not steps:
        return explain_step([])
    i = len(steps) - 1 if index is None else max(0, min(int(index), len(steps) - 1))
    start = next((e for e in events if isinstance(e, RunStarted)), None)
    return explain_step(([start] if start else []) + steps[i].events)
