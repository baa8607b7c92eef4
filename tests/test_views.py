"""The pure views (event list -> HTML / plotly / markdown) on events of a tiny random model."""
import json
import re
from dataclasses import replace

import pytest
from conftest import decode

from specviz import trace, views
from specviz.drafters.model import ModelDrafter, chain_builder
from specviz.engine import Engine, Settings
from specviz.events import Drafted, Emitted, Node, RunFinished, RunStarted, StepFinished, StepStarted, Token, Verified
from specviz.metrics import Metrics
from specviz.views.entropy_figure import caption as entropy_caption
from specviz.views.palette import SHORT
from specviz.views.tree_figure import draft_graph, layout

PROMPT = [1, 5, 7, 3, 9, 2]


@pytest.fixture(scope="module")
def sampled(tiny_target, tiny_drafter):
    """A sampling run with a model drafter: accepted, rejected, unvisited, resampled and bonus all occur."""
    engine = Engine(tiny_target, decode, ModelDrafter(tiny_drafter, chain_builder(4), "tiny"))
    return engine.run(PROMPT, Settings(max_new_tokens=60, temperature=1.0, seed=3), prompt="<1><5><7>").events


@pytest.fixture(scope="module")
def greedy(tiny_target, tiny_drafter):
    engine = Engine(tiny_target, decode, ModelDrafter(tiny_drafter, chain_builder(3), "tiny"))
    return engine.run(PROMPT, Settings(max_new_tokens=30), prompt="p").events


def kinds(events):
    return [t.kind for s in views.split_steps(events) for t in s.tokens]


def test_the_sampled_run_covers_every_outcome(sampled):
    assert {"accepted", "resampled", "bonus"} <= set(kinds(sampled))
    statuses = {n.status for s in views.split_steps(sampled) for n in s.nodes}
    assert statuses == {"accepted", "rejected", "unvisited"}


def test_steps_positions_and_text(sampled):
    steps = views.split_steps(sampled)
    end = views.run_finished(sampled)
    assert [s.index for s in steps] == list(range(len(steps))) == list(range(end.metrics.steps))
    assert all(b.position == a.position + len(a.tokens) for a, b in zip(steps, steps[1:]))
    assert sum(len(s.tokens) for s in steps) == end.metrics.tokens
    assert views.generated_text(sampled) == end.text
    assert views.generated_text(sampled[:-1]) == end.text  # while running: the emitted pieces


def test_tokens_html_colors_every_token_and_strikes_rejected_drafts(sampled):
    html = views.tokens_html(sampled, show_rejected=True)
    steps = views.split_steps(sampled)
    for kind in ("accepted", "resampled", "bonus"):
        assert html.count(f"tok-{kind}\"") == kinds(sampled).count(kind)
    rejected = sum(n.status == "rejected" for s in steps for n in s.nodes)
    assert html.count('tok-rejected"') == rejected > 0
    assert "line-through" in html
    # a rejected draft sits right before the token that replaced it
    assert re.search(r'tok-rejected"[^>]*>[^<]*</span><span class="tok tok-resampled"', html)
    assert "acceptance min(1, " in html and "q (drafter) = " in html and "p (target) = " in html
    hidden = views.tokens_html(sampled)  # by default the text is the accepted text, rejections in titles
    assert "tok-rejected" not in hidden and "rejected here: " in hidden
    for kind in ("accepted", "resampled", "bonus"):
        assert hidden.count(f"tok-{kind}\"") == kinds(sampled).count(kind)


def test_token_text_is_escaped_everywhere(sampled):
    evil = '<img src=x onerror="alert(1)">'
    patched = []  # copies: the events are shared with other tests
    for ev in sampled:
        if isinstance(ev, RunStarted):
            ev = replace(ev, prompt=evil)
        elif isinstance(ev, Emitted):
            ev = replace(ev, tokens=[replace(t, text=evil) for t in ev.tokens])
        elif isinstance(ev, (Verified, Drafted)):
            ev = replace(ev, nodes=[replace(n, text=evil) for n in ev.nodes])
        patched.append(ev)
    html = views.tokens_html(patched)
    assert "<img" not in html and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    fig = views.step_tree_figure(patched, 2).to_json() + views.entropy_figure(patched).to_json()
    assert "<img" not in fig
    assert "<img" not in views.explain_run_step(patched, 2).replace("`<img", "")  # only inside code spans


def test_tree_figure_colors_nodes_by_outcome_and_marks_the_path(sampled):
    steps = views.split_steps(sampled)
    step = next(s for s in steps if any(n.status == "rejected" for n in s.nodes))
    fig = views.tree_figure(step, "ctx")
    by_name = {t.name: t for t in fig.data}
    for status in ("accepted", "rejected", "unvisited"):
        n = sum(node.status == status for node in step.nodes)
        if n:
            assert len(by_name[SHORT[status]].x) == n
    final = by_name[SHORT[step.tokens[-1].kind]]
    assert len(final.x) == 1 and final.marker.symbol == "diamond"
    path_edges = [t for t in fig.data if t.name == "verified path" and t.showlegend][0]
    assert len(path_edges.x) == 3 * (len(step.verified.path) + 1)  # root→path→final, with None separators
    hover = " ".join(h for t in fig.data if t.hovertext for h in t.hovertext)
    assert "q (drafter)" in hover and "p (target)" in hover and "acceptance min(1" in hover
    assert f"step {step.index}" in fig.layout.title.text


def test_a_merged_tree_shows_which_drafter_proposed_each_node():
    nodes = [Node(0, -1, 1, 5, "a", 0.5, 1.0, 0.4, 1.0, "accepted", source="EAGLE-3 head"),
             Node(1, 0, 2, 6, "b", 0.3, 1.0, 0.5, 1.0, "accepted", source="both"),
             Node(2, 1, 3, 7, "c", 1.0, 0.0, 0.9, 1.0, "accepted", source="n-gram tree"),
             Node(3, 0, 2, 8, "d", 1.0, 0.0, None, None, "unvisited", source="n-gram tree")]
    drafted = [replace(n, p=None, accept_prob=None, status=None) for n in nodes]
    events = [RunStarted("t", "d", "greedy", {}, "prompt", 3), StepStarted(0),
              Drafted(0, drafted, "iid", sources=["EAGLE-3 head", "n-gram tree"]), Verified(0, nodes, [0, 1, 2], "bonus"),
              Emitted(0, [Token(5, "a", "accepted", 0.4, 1.0, 0.5, 1.0, 0), Token(6, "b", "accepted", 0.5, 1.0, 0.3, 1.0, 1),
                          Token(7, "c", "accepted", 0.9, 1.0, 1.0, 1.0, 2), Token(2, "g", "bonus", 0.2, 1.0)])]
    fig = views.tree_figure(views.split_steps(events)[0])
    legend = {t.name: t.marker.symbol for t in fig.data if t.mode == "markers"}
    assert legend == {"proposed by the EAGLE-3 head": "circle", "proposed by both drafters": "hexagon",
                      "proposed by the n-gram tree": "square"}
    accepted = next(t for t in fig.data if t.name == SHORT["accepted"])
    assert list(accepted.marker.symbol) == ["circle", "hexagon", "square"]
    assert any("proposed by the n-gram tree" in h for h in accepted.hovertext)
    assert "1 from the EAGLE-3 head (circles), 2 from the n-gram tree (squares), 1 proposed by both" in \
        views.explain_step(events)
    assert trace.loads(trace.dumps(events))[2].nodes[2].source == "n-gram tree"  # traces keep it
    # a step where the head's nodes were all shared: the n-gram tree keeps its square
    shared = [replace(n, source="both") if n.source == "EAGLE-3 head" else n for n in nodes]
    fig = views.tree_figure(views.split_steps(events[:2] + [replace(events[2], nodes=[replace(n, source=s.source)
                            for n, s in zip(drafted, shared)]), replace(events[3], nodes=shared), events[4]])[0])
    assert {t.name: t.marker.symbol for t in fig.data if t.mode == "markers"} == {
        "proposed by the n-gram tree": "square", "proposed by both drafters": "hexagon"}
    plain = views.tree_figure(views.split_steps([replace(e, nodes=[replace(n, source=None) for n in e.nodes])
                                                 if hasattr(e, "nodes") else e for e in events])[0])
    assert not [t for t in plain.data if t.mode == "markers"]  # one drafter: no shapes legend


def test_tree_figure_draws_general_trees_by_depth():
    nodes = [Node(0, -1, 1, 5, "a", 0.5, 1.0, 0.4, 0.8, "rejected", 0.7),
             Node(1, -1, 1, 6, "b", 0.3, 1.0, 0.5, 1.0, "accepted", 0.7),
             Node(2, 0, 2, 7, "c", 0.9, 0.2, None, None, "unvisited"),
             Node(3, 1, 2, 8, "d", 0.6, 0.5, 0.1, 0.2, "rejected", 0.4),
             Node(4, 1, 2, 9, "e", 0.2, 0.5, 0.3, 1.0, "accepted", 0.4),
             Node(5, 4, 3, 3, "f", 0.8, 0.1, 0.1, 0.1, "rejected", 0.3)]
    events = [RunStarted("t", "d", "sampling", {}, "prompt", 3), StepStarted(0), Drafted(0, nodes, "iid"),
              Verified(0, nodes, [1, 4], "resampled"),
              Emitted(0, [Token(6, "b", "accepted", 0.5, 1.0, 0.3, 1.0, 1),
                          Token(9, "e", "accepted", 0.3, 1.0, 0.2, 1.0, 4), Token(2, "g", "resampled", 0.2, 1.0)])]
    step = views.split_steps(events)[0]
    g = draft_graph(step, "x")
    pos = layout(g)
    assert all(pos[k][0] == g.nodes[k]["depth"] for k in g.nodes)
    assert len({pos[k] for k in g.nodes}) == len(g.nodes)  # no two nodes on one spot
    fig = views.tree_figure(step)
    assert sum(len(t.x) for t in fig.data if t.mode == "markers+text") == len(nodes) + 2  # + root + final
    text = views.explain_step(events)
    assert "tree of 6 nodes" in text and "residual" in text and "`c`" in text  # c: never checked
    html = views.tokens_html(events, show_rejected=True)
    order = [html.index(f">{t}<") for t in "abdefg"]  # rejected a before b, d before e, f before g
    assert order == sorted(order)


def test_entropy_figure_has_one_point_per_token_and_per_draft(sampled):
    fig = views.entropy_figure(sampled)
    steps = views.split_steps(sampled)
    target = fig.data[0]
    assert len(target.y) == sum(len(s.tokens) for s in steps)
    assert sum(len(t.y) for t in fig.data[1:]) == sum(len(s.nodes) for s in steps)
    assert not fig.layout.shapes
    assert not [t for t in fig.data if t.name.startswith("drafting")]  # no stopping rule, no stop notes


@pytest.fixture(scope="module")
def stopped(tiny_target, tiny_drafter):
    """A run whose stopping rule ends some rounds early (and others at their length limit)."""
    from specviz.stop_rules import make_stop_rule

    config = {"stop": "confidence", "stop_params": {"threshold": 0.1}}
    engine = Engine(tiny_target, decode, ModelDrafter(tiny_drafter, chain_builder(4), "tiny"),
                    stop=make_stop_rule("confidence", 4, config["stop_params"]))
    return engine.run(PROMPT, Settings(max_new_tokens=40), prompt="p", config=config).events


def test_entropy_figure_marks_where_and_why_each_drafting_round_stopped(stopped):
    steps = views.split_steps(stopped)
    notes = [s.drafted.stop for s in steps if s.drafted is not None and s.drafted.stop]
    early = [n for n in notes if n["reason"] != "limit"]
    assert early and len(early) < len(notes), "the fixture should stop some rounds early and some at the limit"
    fig = views.entropy_figure(stopped)
    marks = {t.name: t for t in fig.data if t.name.startswith("drafting")}
    assert len(marks["drafting stopped early by the stopping rule"].x) == len(early)
    assert len(marks["drafting round ended (length limit, or the drafter ran out)"].x) == len(notes) - len(early)
    hover = " ".join(marks["drafting stopped early by the stopping rule"].hovertext)
    assert "stopping rule: confidence threshold" in hover and "top probability" in hover and "threshold = 0.1" in hover
    assert "stopping rule: confidence" in fig.layout.title.text  # from RunStarted.config
    # drafter points are still one per drafted node
    drafted = [t for t in fig.data[1:] if t.name.startswith("drafter entropy")]
    assert sum(len(t.y) for t in drafted) == sum(len(s.nodes) for s in steps)
    # an older trace (no config) still draws the marks, without naming the rule in the title
    old = [replace(stopped[0], config=None)] + stopped[1:]
    assert "stopping rule" not in views.entropy_figure(old).layout.title.text


def test_the_step_explanation_says_why_drafting_stopped(stopped):
    steps = views.split_steps(stopped)
    early = next(s for s in steps if s.drafted.stop and s.drafted.stop["reason"] != "limit")
    text = views.explain_run_step(stopped, early.index)
    assert "**Drafting stopped** after" in text and "ended it early: top probability" in text
    assert "stopping rule **confidence threshold**" in text
    full = next(s for s in steps if s.drafted.stop and s.drafted.stop["reason"] == "limit")
    assert "it reached the most the stopping rule allows" in views.explain_run_step(stopped, full.index)
    # prompt lookup whose match ran out before the rule's length: the drafter had nothing more
    note = {"rule": "static", "depth": 2, "reason": "limit", "length": 4}
    short = [replace(ev, stop=note) if isinstance(ev, Drafted) else ev for ev in full.events]
    text = views.explain_step(short)
    assert "the drafter had nothing more to propose (the stopping rule allowed 4)" in text
    evil = {"rule": "<img src=x>", "depth": 1, "reason": "<img src=x onerror=1>", "<b>": "<b>"}  # a hostile trace
    hostile = [replace(ev, stop=evil) if isinstance(ev, Drafted) else ev for ev in stopped]
    assert "<img" not in views.explain_run_step(hostile, 1) and "<b>" not in views.explain_run_step(hostile, 1)
    assert "<img" not in views.entropy_figure(hostile).to_json()


def test_a_lossy_rule_at_temperature_is_not_explained_as_exact(tiny_target, tiny_drafter):
    engine = Engine(tiny_target, decode, ModelDrafter(tiny_drafter, chain_builder(4), "tiny"), rule="typical-lossy")
    events = engine.run(PROMPT, Settings(max_new_tokens=60, temperature=1.0, seed=3), prompt="p").events
    steps = views.split_steps(events)
    step = next(s for s in steps if s.tokens[-1].kind == "resampled")
    text = views.explain_run_step(events, step.index)
    assert "typical acceptance" in text and "LOSSY" in text and "**not**" in text
    assert "exactly the target's distribution" not in text and "exactly like the target alone" not in text
    assert "residual" not in text and "coin" not in text  # typical acceptance has neither
    # the same rule at temperature 0 is exactly greedy, and says so
    greedy = engine.run(PROMPT, Settings(max_new_tokens=20), prompt="p").events
    text = views.explain_run_step(greedy, 0)
    assert "typical acceptance" in text and "exactly greedy" in text


def test_metrics_views(sampled):
    m, d = views.latest_metrics(sampled), views.decode_metrics(sampled)
    md = views.metrics_markdown(sampled)
    for needle in (f"{m.tau:.2f}", f"{m.acceptance_rate:.2f}", f"{m.path_acceptance:.2f}", f"{d.tokens_per_s:.1f} tok/s",
                   f"{d.predicted_speedup:.2f}×", "tick *measure against AR*", "prompt read (prefill)"):
        assert needle in md
    assert m.path_acceptance > m.acceptance_rate  # nodes after a rejection are never checked
    ref = Metrics(tokens=10, elapsed_s=10 / (d.tokens_per_s / 2))
    assert "**2.00×**" in views.metrics_markdown(sampled, ref)
    fig = views.metrics_figure(sampled)
    assert list(fig.data[0].y) == pytest.approx(m.beta_by_depth)
    assert list(fig.data[1].y) == m.accepted_hist
    assert views.metrics_markdown([]).startswith("*Metrics appear")


def test_explain_step_tells_what_happened(sampled, greedy):
    steps = views.split_steps(sampled)
    bonus = next(s for s in steps if s.tokens[-1].kind == "bonus")
    text = views.explain_run_step(sampled, bonus.index)
    assert "**bonus** token" in text and "for free" in text and "min(1, p/q)" in text
    resampled = next(s for s in steps if s.tokens[-1].kind == "resampled")
    text = views.explain_step(resampled.events, rule="sampling")
    assert "✗" in text and "**rejected**" in text and "norm(max(0, p − q))" in text and "coin came up above" in text
    g = next(s for s in views.split_steps(greedy) if any(n.status == "rejected" for n in s.nodes))
    text = views.explain_run_step(greedy, g.index)
    assert "the target's top token is" in text and "equals plain greedy decoding" in text
    ar = [RunStarted("t", "none", "greedy", {}, "p", 1), StepStarted(0), Drafted(0, [], "iid"),
          Verified(0, [], [], "target"), Emitted(0, [Token(4, "x", "target", 1.0, 0.5)])]
    assert "Nothing was drafted" in views.explain_step(ar)


def test_drafter_panel_aggregates_runs(sampled, greedy):
    recs = [views.record(sampled), views.record(greedy), views.record(greedy)]
    md = views.drafter_markdown(recs, "tiny", "your pick")
    assert "**Drafter used:** `tiny`" in md and "| tiny | target | 3 |" in md
    assert views.record(sampled[:-1]) is None  # unfinished runs are not counted


def test_a_replayed_trace_renders_exactly_like_the_live_run(sampled):
    replayed = trace.loads(trace.dumps(sampled))
    assert views.tokens_html(replayed) == views.tokens_html(sampled)
    for i in (0, 3, None):
        assert views.step_tree_figure(replayed, i).to_json() == views.step_tree_figure(sampled, i).to_json()
        assert views.explain_run_step(replayed, i) == views.explain_run_step(sampled, i)
    assert views.entropy_figure(replayed).to_json() == views.entropy_figure(sampled).to_json()
    assert views.metrics_markdown(replayed) == views.metrics_markdown(sampled)
    assert views.metrics_figure(replayed).to_json() == views.metrics_figure(sampled).to_json()
    json.loads(views.entropy_figure(replayed).to_json())


def test_views_of_a_partial_run_and_of_nothing(sampled):
    cut = next(i for i, ev in enumerate(sampled) if isinstance(ev, Verified) and ev.step == 2)
    partial = sampled[: cut + 1]  # step 2 verified but not yet emitted
    assert views.tokens_html(partial)
    views.step_tree_figure(partial)
    views.explain_run_step(partial)
    for fn in (views.tokens_html, views.entropy_figure, views.metrics_figure, views.step_tree_figure):
        fn([])
    assert "Pick a step" in views.explain_run_step([])
    assert isinstance(sampled[-1], RunFinished) and isinstance(sampled[-2], StepFinished)


# ---- the views of adaptive drafting: entropy bound panel, timeline, draft vs accepted lengths

@pytest.fixture(scope="module")
def adaedl(tiny_target, tiny_drafter):
    """A sampling run whose rounds AdaEDL stops (the bound 1 − sqrt(γ·H) against an adapting λ)."""
    from specviz.stop_rules import make_stop_rule

    config = {"stop": "adaedl", "stop_params": {"gamma": 0.05, "lambda0": 0.6}}  # γ for this random drafter's H ≈ 3
    engine = Engine(tiny_target, decode, ModelDrafter(tiny_drafter, chain_builder(6), "tiny"),
                    stop=make_stop_rule("adaedl", 6, config["stop_params"]))
    return engine.run(PROMPT, Settings(max_new_tokens=40, temperature=1.0, seed=3), prompt="p", config=config).events


def test_entropy_figure_of_an_adaedl_run_draws_the_bound_against_measured_beta(adaedl):
    from specviz.stop_rules.adaedl import acceptance_bound

    steps = views.split_steps(adaedl)
    nodes = [(s, n) for s in steps for n in s.nodes]
    fig = views.entropy_figure(adaedl)
    by_name = {t.name: t for t in fig.data}
    bound = by_name["AdaEDL bound 1 − √(γ·H) (predicted acceptance)"]
    beta = by_name["measured β = Σ min(p, q)"]
    lam = by_name["threshold λ (adapts each round)"]
    assert bound.yaxis == beta.yaxis == lam.yaxis == "y2" and fig.layout.yaxis2.domain is not None
    # one bound per drafted node, at the node's position, from its own entropy; β where it was verified
    assert list(bound.x) == [s.position + n.depth - 1 for s, n in nodes]
    assert list(bound.y) == pytest.approx([acceptance_bound(n.q_entropy, 0.05) for _, n in nodes])
    assert list(beta.y) == pytest.approx([n.beta for _, n in nodes if n.beta is not None]) and len(beta.y) > 0
    # λ: the rounds' recorded thresholds, held to the end
    lambdas = [s.drafted.stop["lambda"] for s in steps if s.drafted is not None and s.drafted.stop]
    assert list(lam.y[:-1]) == pytest.approx(lambdas) and lam.line.shape == "hv"
    assert len(set(round(v, 6) for v in lambdas)) > 1, "λ should adapt over the run"
    # the existing parts stay: target entropy first, one drafter point per node, stop marks with the bound in hover
    assert len(fig.data[0].y) == sum(len(s.tokens) for s in steps)
    drafted = [t for t in fig.data if t.name.startswith("drafter entropy")]
    assert sum(len(t.y) for t in drafted) == len(nodes)
    early = [t for t in fig.data if t.name == "drafting stopped early by the stopping rule"]
    assert early and "1 − √(γ·H)" in " ".join(early[0].hovertext) and "lambda = " in " ".join(early[0].hovertext)
    assert "stopping rule: adaedl" in fig.layout.title.text
    assert "AdaEDL" in entropy_caption(adaedl) and "AdaEDL" not in entropy_caption(views_sampled_free(adaedl))
    # a run without AdaEDL has no bound panel
    assert not [t for t in views.entropy_figure(views_sampled_free(adaedl)).data if t.name.startswith("AdaEDL")]


def views_sampled_free(events):
    """The same events as if recorded by another rule (no config, static notes): no AdaEDL panel."""
    out = []
    for ev in events:
        if isinstance(ev, RunStarted):
            ev = replace(ev, config=None)
        elif isinstance(ev, Drafted) and ev.stop:
            ev = replace(ev, stop={"rule": "static", "depth": ev.stop["depth"], "reason": "limit", "length": 6})
        out.append(ev)
    return out


def test_timeline_has_one_bar_per_phase_per_step(adaedl):
    fig = views.timeline_figure(adaedl)
    finished = [ev for ev in adaedl if isinstance(ev, StepFinished)]
    bars = {t.name: t for t in fig.data}
    assert set(bars) == {"draft", "verify"}
    for phase in ("draft", "verify"):
        assert len(bars[phase].x) == len(bars[phase].base) == len(finished)
    assert list(bars["draft"].base) == [f.draft_start_s for f in finished]
    assert list(bars["verify"].x) == [f.verify_s for f in finished]
    assert all(a < b for a, b in zip(bars["verify"].base, bars["verify"].base[1:]))  # the wall clock runs forward
    assert all(f.draft_start_s <= f.verify_start_s for f in finished)
    assert "older trace" not in fig.layout.title.text
    # a race: the autoregressive run as a second group of rows, verification only
    ar = [ev for ev in adaedl if not isinstance(ev, (Drafted,))]  # stand-in: what matters is its rows
    ar = [replace(ev, drafter="none") if isinstance(ev, RunStarted) else ev for ev in ar]
    race = views.timeline_figure(adaedl, ar)
    rows = [t.y[0] for t in race.data]
    assert rows == ["speculative · draft", "speculative · verify", "autoregressive · verify"]
    assert sum(t.showlegend for t in race.data) == 2  # one legend entry per phase
    assert views.timeline_figure([]).data == ()


def test_lengths_figure_draft_against_accepted_per_step(adaedl):
    fig = views.lengths_figure(adaedl)
    steps = [s for s in views.split_steps(adaedl) if s.verified is not None]
    drafted, accepted = fig.data
    assert list(drafted.y) == [len(s.nodes) for s in steps]
    # accepted by verification (the last step's emitted tokens may be fewer: the length cut)
    assert list(accepted.y) == [sum(n.status == "accepted" for n in s.nodes) for s in steps]
    assert list(accepted.y[:-1]) == [sum(t.kind == "accepted" for t in s.tokens) for s in steps[:-1]]
    assert all(a <= d for a, d in zip(accepted.y, drafted.y)) and max(drafted.y) > min(drafted.y)
    views.lengths_figure([])


def test_the_new_views_replay_exactly_and_render_old_traces():
    from pathlib import Path

    for path in sorted(Path(__file__).parent.parent.glob("assets/*.trace.json")):
        events = trace.load(path)
        replayed = trace.loads(trace.dumps(events))
        for fn in (views.entropy_figure, views.timeline_figure, views.lengths_figure):
            assert fn(replayed).to_json() == fn(events).to_json(), (path.name, fn.__name__)
        fig = views.timeline_figure(events)
        finished = [ev for ev in events if isinstance(ev, StepFinished)]
        verify = next(t for t in fig.data if t.name == "verify")
        assert len(verify.x) == len(finished) > 0
        if all(f.draft_start_s == f.verify_start_s == 0 for f in finished):  # version 1: laid end to end
            assert "older trace" in fig.layout.title.text
            assert all(a < b for a, b in zip(verify.base, verify.base[1:]))
        json.loads(fig.to_json())


def test_the_step_explorer_opens_on_a_step_that_shows_both_verdicts(sampled):
    steps = views.split_steps(sampled)
    best = steps[views.instructive_step(steps)]
    statuses = {n.status for n in best.nodes}
    assert {"accepted", "rejected"} <= statuses
    assert all(sum(n.status == "accepted" for n in s.nodes) <= sum(n.status == "accepted" for n in best.nodes)
               for s in steps if {"accepted", "rejected"} <= {n.status for n in s.nodes})
    assert views.instructive_step([]) == -1
    empty = [views.Step(0), views.Step(1)]
    assert views.instructive_step(empty) == 0  # nothing drafted anywhere: the first step


def test_tree_labels_fit_between_neighbours_at_any_depth():
    from specviz.views.tree_figure import CHAR_PX, PLOT_PX, label_chars, label_position

    for depth in (1, 4, 8, 16, 33):
        chars = label_chars(depth)
        assert 2 <= chars <= 9
        # labels alternate above and below, so one may use two levels' width
        assert depth > 30 or (chars + 1) * CHAR_PX <= 2 * PLOT_PX / (depth + 1.9)
    assert label_position(1, "accepted") != label_position(2, "accepted")
    nodes = [Node(i, i - 1, i + 1, 5, "word", 0.5, 1.0, 0.5, 1.0, "accepted", 0.9) for i in range(12)]
    events = [RunStarted("t", "d", "greedy", {"temperature": 0}, "prompt", 3), StepStarted(0), Drafted(0, nodes, "iid"),
              Verified(0, nodes, list(range(12)), "bonus"),
              Emitted(0, [Token(5, "word", "accepted", 0.5, 1.0, 0.5, 1.0, i) for i in range(12)]
                      + [Token(6, "end", "bonus", 0.9, 1.0)])]
    fig = views.step_tree_figure(events, 0)
    texts = [t for tr in fig.data if tr.mode == "markers+text" for t in tr.text]
    assert len(texts) == 14 and all(t for t in texts)  # root, 12 drafts, the bonus token: every one labelled
    hover = " ".join(h for tr in fig.data if tr.hovertext for h in tr.hovertext)
    assert "norm(max" not in hover and "drawn from p" not in hover  # greedy: no sampling words


def test_greedy_tooltips_say_top_token_not_residual(greedy, sampled):
    html = views.tokens_html(greedy)
    assert "tok-resampled" in html and "norm(max" not in html
    assert "the target&#x27;s own top token" in html  # escaped in the title attribute
    assert "norm(max(0, p - q))" in views.tokens_html(sampled)  # sampling: the residual it was drawn from
