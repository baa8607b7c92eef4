"""The draft of one step as a tree (a chain is a tree with one child per node), laid out with
networkx by depth and drawn with plotly: nodes colored by outcome, the accepted path highlighted,
and the token the target added after it (resampled / bonus / target) drawn at the end of the path.

A depth with more than LEVEL_WIDTH nodes is summarized, so that every node drawn keeps a legible
label at any width and the figure stays cheap whatever the trace holds: the verified path first,
then the nodes the target tried, then the drafter's likeliest, and a "+K more" note for the rest
(a node left out takes its descendants with it; hovering the note lists what it holds)."""
from __future__ import annotations

from collections import Counter, defaultdict

import networkx as nx
import plotly.graph_objects as go

from .labels import esc_plot, number, ratio, visible
from .palette import MARKER, SHORT
from .sources import source_symbols
from .steps import Step, run_started, split_steps
from .tokens_html import greedy_run

ROOT, FINAL = "root", "final"
HEIGHT = 340
ROW_PX = 46  # vertical room per node of the widest depth: a marker and its label above it
LEVEL_WIDTH = 7  # nodes drawn at one depth; the rest are counted in a "+K more" note
LABEL_CHARS = 9  # a label's characters at most (hover shows the whole token)
PLOT_PX = 420  # the tree's plot width on a 1280-pixel screen: deep trees get shorter labels to fit it
CHAR_PX = 8  # one label character at the label's font size
MORE = "more"  # kind of the notes


def drawn(nodes, path: list[int]) -> tuple[set[int] | None, dict[int, list]]:
    """The ids of the nodes to draw (None: all) and, per depth, the nodes left out."""
    by_depth: dict[int, list] = defaultdict(list)
    for node in nodes:
        by_depth[node.depth].append(node)
    if all(len(level) <= LEVEL_WIDTH for level in by_depth.values()):
        return None, {}
    on_path = set(path)
    keep: set[int] = set()
    left_out: dict[int, list] = {}
    for depth in sorted(by_depth):
        level = by_depth[depth]
        eligible = [n for n in level if n.parent < 0 or n.parent in keep]
        eligible.sort(key=lambda n: (n.id not in on_path, n.status not in ("accepted", "rejected"), -n.q, n.id))
        chosen = {n.id for n in eligible[:LEVEL_WIDTH]}
        keep |= chosen
        rest = [n for n in level if n.id not in chosen]
        if rest:
            left_out[depth] = rest
    return keep, left_out


def draft_graph(step: Step, context: str = "") -> nx.DiGraph:
    """Nodes: the root (last committed token), each drafted node, and the final emitted token.

    Nodes are added in depth-first order, so within each depth they keep their parents' order and
    the drawing has no crossing edges.
    """
    g = nx.DiGraph()
    nodes = step.nodes
    path = step.verified.path if step.verified is not None else []
    g.add_node(ROOT, depth=0, kind="context", text=context)
    children: dict[int, list] = {}
    for node in nodes:
        children.setdefault(node.parent, []).append(node)

    keep, left_out = drawn(nodes, path)
    stack = [(ROOT, node) for node in reversed(children.get(-1, []))]
    while stack:  # depth first, children in order (no recursion: a chain may be hundreds deep)
        parent_key, node = stack.pop()
        if keep is not None and node.id not in keep:
            continue
        kind = node.status or ("pending" if step.verified is None else "unvisited")
        g.add_node(node.id, depth=node.depth, kind=kind, node=node)
        g.add_edge(parent_key, node.id, on_path=node.id in path)
        stack += [(node.id, child) for child in reversed(children.get(node.id, []))]
    for depth, rest in left_out.items():
        g.add_node((MORE, depth), depth=depth, kind=MORE, rest=rest)
    tokens = step.tokens
    if step.verified is not None and len(tokens) == len(path) + 1:
        final = tokens[-1]
        g.add_node(FINAL, depth=len(path) + 1, kind=final.kind, token=final)
        g.add_edge(path[-1] if path else ROOT, FINAL, on_path=True)
    return g


def layout(g: nx.DiGraph) -> dict:
    """x = depth (reading order, left to right), y = spread within a depth."""
    pos = nx.multipartite_layout(g, subset_key="depth", align="vertical")
    # multipartite rescales x; put depth back on the x axis so a chain reads like text
    # and flip y, so the first child drawn (the first one tried) is at the top
    return {key: (g.nodes[key]["depth"], -float(y)) for key, (_, y) in pos.items()}


def hover(g: nx.DiGraph, key, greedy: bool = False) -> str:
    data = g.nodes[key]
    if key == ROOT:
        return f"last committed token: {esc_plot(visible(data['text'], 40))}<br>the target's forward starts here"
    if data["kind"] == MORE:
        counts = Counter(SHORT.get(n.status, str(n.status)) for n in data["rest"])
        return (f"{len(data['rest'])} more drafted nodes at depth {data['depth']} are not drawn<br>"
                + " · ".join(f"{n} {esc_plot(name)}" for name, n in counts.most_common()))
    if key == FINAL:
        tok = data["token"]
        extra = {"resampled": ("the target's own top token, in the rejected draft's place" if greedy else
                               "drawn from norm(max(0, p − q)) after the rejection"),
                 "bonus": ("every draft was accepted: the target's top token after the last one, free" if greedy
                           else "every draft was accepted: drawn from p after the last one, free"),
                 "target": "nothing drafted: an ordinary autoregressive token"}[tok.kind] if tok.kind in (
                     "resampled", "bonus", "target") else ""
        return (f"<b>{esc_plot(visible(tok.text, 40))}</b> — {esc_plot(SHORT.get(tok.kind, tok.kind))}<br>"
                f"p (target) = {number(tok.p)}<br>{extra}")
    node = data["node"]
    status = esc_plot(SHORT.get(node.status, str(node.status)))
    lines = [f"<b>{esc_plot(visible(node.text, 40))}</b> — {status} (depth {node.depth})",
             f"q (drafter) = {number(node.q)}", f"p (target) = {number(node.p)}"]
    line = acceptance_line(node.p, node.q, node.accept_prob)
    if line:
        lines.append(line)
    if node.beta is not None:
        lines.append(f"β here = Σ min(p, q) = {number(node.beta)}")
    lines.append(f"drafter entropy = {number(node.q_entropy, 2)} nats")
    if node.source is not None:
        lines.append("proposed by both drafters" if node.source == "both" else f"proposed by the {esc_plot(node.source)}")
    return "<br>".join(lines)


def acceptance_line(p, q, a) -> str | None:
    if a is None:
        return None
    plain = None if p is None or not q else min(1.0, float(p) / float(q))
    if plain is not None and abs(plain - float(a)) < 1e-6:
        return f"acceptance {ratio(p, q)}"
    return f"acceptance = {number(a)} (tried against the residual left by rejected siblings)"


def tree_figure(step: Step | None, context: str = "", title: str | None = None, greedy: bool = False) -> go.Figure:
    """Built from plain dicts and validated once: several times cheaper than add_trace/update_* calls."""
    layout_ = dict(height=HEIGHT, margin=dict(l=10, r=10, t=58, b=10), showlegend=True,
                   plot_bgcolor="white", paper_bgcolor="white", hoverlabel=dict(align="left"),
                   legend=dict(orientation="h", yanchor="top", y=-0.02, x=0, font=dict(size=11)),
                   xaxis=dict(visible=False), yaxis=dict(visible=False))
    if step is None:
        layout_["title"] = dict(text=title or "drafted tokens of a step appear here", font=dict(size=14))
        return go.Figure(dict(data=[], layout=layout_))
    g = draft_graph(step, context)
    pos = layout(g)
    traces = []
    for on_path in (False, True):
        xs, ys = [], []
        for a, b, data in g.edges(data=True):
            if data["on_path"] == on_path:
                xs += [pos[a][0], pos[b][0], None]
                ys += [pos[a][1], pos[b][1], None]
        traces.append(dict(type="scatter", x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=on_path,
                           name="verified path",
                           line=dict(color="#16a34a" if on_path else "#94a3b8", width=5 if on_path else 1.5)))
    widest = max(Counter(g.nodes[k]["depth"] for k in g.nodes).values())
    notes = [k for k in g.nodes if g.nodes[k]["kind"] == MORE]
    if notes:
        traces.append(dict(type="scatter", x=[pos[k][0] for k in notes], y=[pos[k][1] for k in notes], mode="text",
                           text=[f"+{len(g.nodes[k]['rest'])} more" for k in notes], showlegend=False,
                           textfont=dict(size=12, color="#64748b"), hovertext=[hover(g, k, greedy) for k in notes],
                           hoverinfo="text", name="not drawn"))
    depth = max(g.nodes[k]["depth"] for k in g.nodes)
    chars = label_chars(depth)
    shapes = source_symbols(step.nodes, step.drafted.sources if step.drafted is not None else None)
    for kind in ("context", "pending", "accepted", "rejected", "unvisited", "resampled", "bonus", "target"):
        keys = [k for k in g.nodes if g.nodes[k]["kind"] == kind]
        if not keys:
            continue
        traces.append(dict(  # every node drawn is labelled: long levels were collapsed into "+K more"
            type="scatter", x=[pos[k][0] for k in keys], y=[pos[k][1] for k in keys], mode="markers+text",
            name={"context": "context (last token)"}.get(kind, SHORT.get(kind, kind)),
            text=[label(g, k, chars) for k in keys], textfont=dict(size=13, color="#0f172a"),
            textposition=[label_position(g.nodes[k]["depth"], kind) for k in keys],
            hovertext=[hover(g, k, greedy) for k in keys], hoverinfo="text",
            marker=dict(size=20 if kind != "context" else 14, color=MARKER[kind],
                        symbol="diamond" if kind in ("resampled", "bonus", "target") else
                        [node_symbol(g, k, shapes) for k in keys],
                        line=dict(color="#0f172a", width=1.5 if kind in ("target", "context") else 1)),
        ))
    for source, symbol in shapes.items():  # a merged tree: the legend says which drafter each shape is
        traces.append(dict(type="scatter", x=[None], y=[None], mode="markers",
                           name="proposed by both drafters" if source == "both" else f"proposed by the {source}",
                           marker=dict(size=12, color="#cbd5e1", symbol=symbol, line=dict(color="#0f172a", width=1))))
    ys = [y for _, y in pos.values()]
    layout_["xaxis"]["range"] = [-1.3, depth + 0.6]
    span = max(ys) - min(ys)
    pad = 0.5 * span / max(1, widest - 1) if span else 0.5  # half a row: the labels above and below fit
    layout_["yaxis"]["range"] = [min(ys) - 1.2 * pad, max(ys) + 1.2 * pad]
    layout_["title"] = dict(text=esc_plot(title) if title else step_title(step), font=dict(size=13), x=0.01,
                            xanchor="left")
    layout_["height"] = max(HEIGHT, 120 + ROW_PX * widest)  # a row per node of the widest depth
    return go.Figure(dict(data=traces, layout=layout_))


def node_symbol(g: nx.DiGraph, key, shapes: dict[str, str]) -> str:
    node = g.nodes[key].get("node")
    return shapes.get(node.source, "circle") if node is not None else "circle"


def label_chars(depth: int) -> int:
    """Characters a label may take so that neighbouring labels do not overlap: labels alternate above and
    below their nodes, so each has two levels' width of the plot (PLOT_PX over depth + the margins)."""
    per_level = PLOT_PX / (depth + 1.9)
    return max(2, min(LABEL_CHARS, int(2 * per_level / CHAR_PX) - 1))


def label_position(depth: int, kind: str) -> str:
    """The root's label to its left (it clears depth 1); the others above at even depths, below at odd ones."""
    if kind == "context":
        return "middle left"
    return "top center" if depth % 2 == 0 else "bottom center"


def label(g: nx.DiGraph, key, chars: int = LABEL_CHARS) -> str:
    data = g.nodes[key]
    if key == ROOT:
        return "▶ " + esc_plot(visible(data["text"], chars))
    return esc_plot(visible((data["token"] if key == FINAL else data["node"]).text, chars))


def step_title(step: Step) -> str:
    drafted = len(step.nodes)
    accepted = len(step.verified.path) if step.verified is not None else 0
    emitted = len(step.tokens)
    if not drafted:
        return f"step {step.index}: nothing drafted<br>the target made {emitted} token on its own"
    depth = max(n.depth for n in step.nodes)
    shape = (f"a chain of {drafted}" if all(n.parent == n.id - 1 for n in step.nodes) else
             f"a tree of {drafted} nodes, {depth} deep")
    verdict = (f"accepted {accepted}, {emitted} token{'s' if emitted != 1 else ''} from one target forward"
               if step.verified is not None else "not verified yet")
    return f"step {step.index}: drafted {shape}<br>{verdict}"


def step_tree_figure(events: list, index: int | None = None) -> go.Figure:
    """The tree of step `index` (default: the latest step) of a run's events."""
    steps = split_steps(events)
    if not steps:
        return tree_figure(None)
    i = len(steps) - 1 if index is None else max(0, min(int(index), len(steps) - 1))
    if i > 0 and steps[i - 1].tokens:
        context = steps[i - 1].tokens[-1].text
    else:
        start = run_started(events)
        context = start.prompt[-12:] if start is not None and isinstance(start.prompt, str) else ""
    return tree_figure(steps[i], context, greedy=greedy_run(events))
