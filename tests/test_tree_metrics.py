"""The run's figures on hand-built steps with known trees, verified paths and costs (specviz/metrics.py),
and on real runs, where the engine's own accounting must agree with the trees in its events."""
import pytest
from conftest import decode

from specviz import views
from specviz.drafters.model import ModelDrafter, chain_builder
from specviz.engine import Engine, Settings
from specviz.events import Drafted, Emitted, Node, RunStarted, StepFinished, StepStarted, Token, Verified
from specviz.metrics import CostCurve, Metrics, expected_speedup

# A tree of 6 nodes drafted in one step (parent -1 is the last committed token):
#
#   -1 ── 0 "a" accepted ── 2 "c" accepted ── 4 "e" rejected
#     │                   └ 3 "d" never checked (a sibling was accepted first)
#     └── 1 "b" rejected                     └ 5 "f" rejected
#
# The target checked drafts at 3 positions on its path (after -1, after 0, after 2), accepted 2, and
# replaced the rejected ones at depth 3 with a token of its own: 3 tokens from one forward.
TREE = [(0, -1, 1, "accepted"), (1, -1, 1, "rejected"), (2, 0, 2, "accepted"), (3, 0, 2, "unvisited"),
        (4, 2, 3, "rejected"), (5, 2, 3, "rejected")]
PATH = [0, 2]


def tree_step(m: Metrics, step: int, draft_s: float, verify_s: float, start: float) -> list:
    nodes = [Node(i, parent, depth, 10 + i, "abcdef"[i], 0.5, 1.0, 0.4, 0.8, status, 0.6)
             for i, parent, depth, status in TREE]
    betas = [(1, 0.9), (2, 0.7), (3, 0.2)]  # one per checked position, as the engine records them
    m.record_step(3, len(nodes), len(PATH), betas)
    m.elapsed_s += draft_s + verify_s
    m.draft_s += draft_s
    m.record_verify(verify_s, len(nodes))
    tokens = [Token(10, "a", "accepted", 0.4, 1.0, 0.5, 0.8, 0), Token(12, "c", "accepted", 0.4, 1.0, 0.5, 0.8, 2),
              Token(20, "x", "resampled", 0.3, 1.0)]
    return [StepStarted(step), Drafted(step, nodes, "iid"), Verified(step, nodes, PATH, "resampled"),
            Emitted(step, tokens), StepFinished(step, draft_s, verify_s, 0.0, m.snapshot(), start, start + draft_s)]


def tree_run(steps: int = 4) -> list:
    """A run of `steps` identical tree steps; the first one also reads the prompt (a slower forward)."""
    m = Metrics()
    events = [RunStarted("t", "tree", "sampling", {"temperature": 1.0}, "prompt", 40)]
    clock = 0.0
    for i in range(steps):
        verify = 0.5 if i == 0 else 0.06  # the first forward reads the 40-token prompt
        events += tree_step(m, i, 0.01, verify, clock)
        clock += 0.01 + verify
    return events


def test_acceptance_per_step_counts_the_verified_path_and_per_node_counts_the_tree():
    m = views.latest_metrics(tree_run())
    assert m.checked_positions == 4 * 3
    assert m.path_acceptance == pytest.approx(2 / 3)  # accepted / positions checked on the path
    assert m.acceptance_rate == pytest.approx(2 / 6)  # accepted / drafted nodes
    assert m.tau == pytest.approx(3.0)
    assert m.mean_verified_positions == pytest.approx(7.0)  # 6 nodes + the root, per verifying forward


def test_decode_speed_leaves_out_the_first_step_and_reports_the_prefill_apart():
    events = tree_run(4)
    first, decode = views.first_step_metrics(events), views.decode_metrics(events)
    assert first.elapsed_s == pytest.approx(0.51)  # the prefill: the first step's draft and forward
    assert decode.steps == 3 and decode.tokens == 9
    assert decode.elapsed_s == pytest.approx(3 * 0.07)
    assert decode.tokens_per_s == pytest.approx(9 / 0.21)
    assert views.latest_metrics(events).tokens_per_s == pytest.approx(12 / 0.72)  # overall, prefill included
    assert decode.path_acceptance == pytest.approx(2 / 3) and decode.checked_positions == 9
    assert views.decode_metrics(events[:6]) is None  # one step: no decode-only figure yet


def test_the_cost_curve_is_a_median_interpolated_between_measured_sizes_only():
    curve = CostCurve()
    for s in (0.05, 0.05, 0.20):  # one outlier: the median ignores it
        curve.add(1, s)
    for s in (0.07, 0.07, 0.07):
        curve.add(9, s)
    curve.add(32, 0.5)  # one forward: too few to use
    assert curve.sizes() == [1, 9]
    assert curve.seconds(1) == pytest.approx(0.05)
    assert curve.seconds(5) == pytest.approx(0.06)
    assert curve.ratio(7) == pytest.approx(0.065 / 0.05)
    assert curve.seconds(32) is None and curve.seconds(10) is None  # never extrapolated
    assert CostCurve().ratio(3) is None and CostCurve().count(3) == 0


def test_a_trees_varying_sizes_are_pooled_per_octave():
    curve = CostCurve({1: [0.05] * 3})
    for n, s in ((17, 0.08), (23, 0.09), (30, 0.10)):  # one forward each: together a point of the 17-32 octave
        curve.add(n, s)
    assert curve.sizes() == [1, pytest.approx(70 / 3)]
    assert curve.seconds(70 / 3) == pytest.approx(0.09) and curve.count(20) == 3
    assert curve.ratio(12) == pytest.approx((0.05 + (12 - 1) / (70 / 3 - 1) * 0.04) / 0.05)


def test_predicted_speedup_uses_the_trees_own_tokens_per_step_and_the_machines_costs():
    decode = views.decode_metrics(tree_run(4))
    curve = CostCurve({1: [0.05] * 3, 9: [0.07] * 3})
    # tau 3 tokens per step, each step: 0.01 s of drafting + a forward over 7 positions (0.065 s on the curve),
    # against 3 one-token forwards of 0.05 s
    assert expected_speedup(decode, curve) == pytest.approx(3 * 0.05 / (0.01 + 0.065))
    assert expected_speedup(decode, CostCurve({1: [0.05] * 3})) is None  # 7 positions not measured
    assert expected_speedup(decode, CostCurve({9: [0.07] * 3})) is None  # no one-token forward measured
    md = views.metrics_markdown(tree_run(4), curve=curve)
    assert f"**{3 * 0.05 / 0.075:.2f}×** from τ = 3.00" in md
    assert "chain formula" not in md  # Leviathan's formula assumes a chain
    assert "1.30× a one-token forward for 7.0 positions" in md
    assert "acceptance per step | **0.67**" in md and "acceptance per node | 0.33" in md


def test_a_step_without_drafts_costs_a_one_token_forward():
    m = Metrics()
    m.record_step(1, 0, 0, [])
    m.record_verify(0.05, 0)
    m.record_step(3, 2, 2, [(1, 1.0), (2, 1.0)])
    m.record_verify(0.06, 2)
    m.draft_s = 0.02
    curve = CostCurve({1: [0.05] * 3, 3: [0.06] * 3})
    assert m.mean_verified_positions == 3.0
    assert expected_speedup(m, curve) == pytest.approx(2.0 * 0.05 / (0.01 + (0.05 + 0.06) / 2))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_engines_counters_agree_with_the_trees_in_its_events(tiny_target, tiny_drafter, temperature):
    engine = Engine(tiny_target, decode, ModelDrafter(tiny_drafter, chain_builder(4), "tiny"))
    events = engine.run([1, 5, 7, 3], Settings(max_new_tokens=40, temperature=temperature, seed=2)).events
    checked = accepted = 0
    for step in views.split_steps(events):
        on_path = {-1, *step.verified.path}
        tried = {n.parent for n in step.nodes if n.status in ("accepted", "rejected")}
        assert tried <= on_path  # only children of the path are ever checked
        checked += len(tried)
        accepted += sum(t.kind == "accepted" for t in step.tokens)  # the last step may be cut to the budget
    m = views.latest_metrics(events)
    assert (m.checked_positions, m.accepted) == (checked, accepted)
    assert 0 < m.path_acceptance <= 1 and m.acceptance_rate <= m.path_acceptance
