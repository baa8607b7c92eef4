"""Teaching mode: the lossless check (passes for lossless rules, fails for lossy and broken ones, derandomized),
the what-if explorer (the bench's formulas for the same inputs), the guided lesson (traces only, no model) and
the acceptance map."""
from collections import Counter

import pytest
import torch
from conftest import perturbed, tiny_llama

from specviz import models, views
from specviz.drafters.model import ModelDrafter, chain_builder
from specviz.drafters.strategies import STRATEGIES
from specviz.engine import Engine, Settings
from specviz.lossless_check import (CheckResult, MemoLM, broken_sampling, chi_square, noise_floor, run_check,
                                    tv_distance)
from specviz.metrics import CostCurve, Metrics, expected_speedup, predicted_speedup
from specviz.rules import VERIFY_RULES, make_rule
from specviz.views import acceptance_map as amap
from specviz.views import lesson, whatif

PROMPT = [1, 2, 3, 4, 5]
K, N = 2, 600
SETTINGS = Settings(temperature=0.7, seed=0)


@pytest.fixture(scope="module")
def models_pair():
    target = tiny_llama(0)
    return target, perturbed(target, 1.0, seed=1)


def check(models_pair, rule, shape="chain", n=N) -> CheckResult:
    target, draft = models_pair

    def make(memo):
        return ModelDrafter(MemoLM(draft, PROMPT, horizon=memo.horizon), STRATEGIES.get(shape).build(3), "tiny",
                            fast_path=False)

    *progress, result = run_check(target, PROMPT, SETTINGS, K, n, make, rule)
    assert progress and all(p.total == n for p in progress)
    return result


# ---------------------------------------------------------------- the lossless check


@torch.inference_mode()
def test_the_memo_answers_what_the_model_says(models_pair):
    target, _ = models_pair
    memo = MemoLM(target, PROMPT)
    texts = [tuple(PROMPT) + t for t in ((7,), (7, 3), (9, 9), (0, 1))]
    memo.ensure(texts)
    for text in texts:
        want = target(torch.tensor([list(text)])).logits[0, -1]
        assert torch.allclose(memo.logits[text], want, atol=1e-4)
    # through the engine: the memoized target decodes greedily exactly as the real one
    real = Engine(target, str).run(PROMPT, Settings(6)).token_ids
    assert Engine(MemoLM(target, PROMPT), str, fast_path=False).run(PROMPT, Settings(6)).token_ids == real


@pytest.mark.parametrize("shape", ["chain", "gumbel-top-k"])
def test_speculative_sampling_passes_the_check(models_pair, shape):
    r = check(models_pair, "sampling", shape)
    print(f"sampling {shape}: p={r.speculative.pvalue:.3g} tv={r.speculative.tv:.3f} noise={r.noise} "
          f"accepted {r.speculative.accepted}/{r.speculative.drafted}")
    assert r.passed and r.plain.passed and r.speculative.accepted > N / 4
    assert "Lossless" in r.sentence()


def test_greedy_passes_the_check_trivially(models_pair):
    target, draft = models_pair
    *_, r = run_check(target, PROMPT, Settings(), K, 50,
                      lambda memo: ModelDrafter(draft, chain_builder(3), "tiny", fast_path=False), "greedy")
    assert r.passed and len(r.speculative.counts) == 1 and r.speculative.counts == r.plain.counts
    assert "deterministic" in r.sentence()


LOSSY = {
    "typical-lossy": lambda target: "typical-lossy",
    "lantern-lossy": lambda target: make_rule("lantern-lossy", target),
    "broken": lambda target: broken_sampling,
}


@pytest.mark.parametrize("rule", LOSSY)
def test_lossy_rules_and_a_broken_verifier_fail_the_check(models_pair, rule):
    assert rule == "broken" or not VERIFY_RULES.get(rule).lossless
    r = check(models_pair, LOSSY[rule](models_pair[0]))
    print(f"{rule}: p={r.speculative.pvalue:.3g} tv={r.speculative.tv:.3f} noise={r.noise}")
    assert not r.passed and r.plain.passed
    assert r.speculative.tv > r.noise[1]
    assert "Not lossless" in r.sentence()


def test_chi_square_and_noise_floor_on_known_counts():
    cells = {(0,): 0.5, (1,): 0.3}
    fair = Counter({(0,): 500, (1,): 300, (2,): 200})
    stat, df, p = chi_square(fair, cells, 1000)
    assert stat == pytest.approx(0.0) and df == 2 and p == pytest.approx(1.0)
    skewed = Counter({(0,): 600, (1,): 250, (2,): 150})
    assert chi_square(skewed, cells, 1000)[2] < 1e-6
    assert tv_distance(skewed, cells, 1000) == pytest.approx(0.1)
    median, high = noise_floor(cells, 1000)
    assert 0 < median < high < 0.06


# ---------------------------------------------------------------- what if


@pytest.mark.parametrize("alpha,gamma,c", [(0.0, 1, 0.0), (0.6, 4, 0.05), (0.9, 8, 0.2), (0.99, 16, 0.5)])
def test_the_explorer_chain_is_the_bench_formula_on_a_flat_cost_curve(alpha, gamma, c):
    assert whatif.chain_speedup(alpha, gamma, c, whatif.flat_curve()) == pytest.approx(
        predicted_speedup(alpha, gamma, c))


def test_the_explorer_prices_a_measured_run_as_the_metrics_table_does(tiny_target, tiny_drafter):
    engine = Engine(tiny_target, str, ModelDrafter(tiny_drafter, STRATEGIES.get("gumbel-top-k").build(3), "tiny"),
                    rule="sampling")
    m = views.decode_metrics(engine.run(PROMPT, Settings(24, temperature=1.0)).events)
    assert m.drafted and m.single_steps == 0
    curve = whatif.linear_curve(0.1, seconds=0.01)
    nodes = m.drafted / m.steps
    c_one = m.draft_s / m.drafted / curve.seconds(1)
    assert whatif.speedup(m.tau, nodes, c_one, curve) == pytest.approx(expected_speedup(m, curve))
    point = whatif.run_point("run", m, curve)
    assert point.predicted == pytest.approx(expected_speedup(m, curve)) and point.alpha == m.alpha


def test_the_tree_formula_reduces_to_the_chain_and_width_helps():
    assert whatif.tree_tau(0.6, (1, 1, 1, 1)) == pytest.approx(whatif.chain_tau(0.6, 4))
    assert whatif.tree_tau(0.6, (2, 2, 1, 1)) > whatif.chain_tau(0.6, 4)
    assert whatif.tree_nodes((2, 2, 1)) == 2 + 4 + 4
    curve = whatif.linear_curve(0.3)
    assert whatif.chain_speedup(0.3, 8, 0.2, curve) < 1 < whatif.chain_speedup(0.9, 4, 0.0, whatif.flat_curve())
    text = whatif.verdict(0.3, 8, 0.2, curve, "linear")
    assert "Slower than plain decoding" in text
    fig = whatif.figure(0.7, 4, 0.05, curve, (2, 2, 1), [whatif.Point("d", 0.5, 4, 0.1, 1.2, 1.1)])
    assert {t.type for t in fig.data} >= {"scatter", "heatmap", "contour"}


def test_the_explorer_stays_within_a_measured_curve():
    curve = CostCurve({1: [0.05] * 3, 2: [0.06] * 3, 4: [0.07] * 3})
    assert whatif.chain_speedup(0.8, 3, 0.0, curve) is not None
    assert whatif.chain_speedup(0.8, 8, 0.0, curve) is None  # 9 positions: never extrapolated


# ---------------------------------------------------------------- the guided lesson, without any model


def test_the_lesson_has_five_to_seven_steps_each_on_a_shipped_trace():
    assert 5 <= len(lesson.STEPS) <= 7
    for i, step in enumerate(lesson.STEPS):
        events = lesson.lesson_events(step)
        at = lesson.pick_step(events, step.want)
        s = views.split_steps(events)[at]
        kinds = [t.kind for t in s.tokens]
        if step.want == "resampled":
            assert kinds[-1] == "resampled"
        if step.want == "bonus":
            assert kinds[-1] == "bonus"
        if step.want == "branch":
            parents = [n.parent for n in s.nodes]
            assert len(set(parents)) < len(parents)
        assert f"Lesson {i + 1} of {len(lesson.STEPS)}" in lesson.lesson_markdown(i, at)


def test_the_lesson_walks_with_model_loading_disabled(monkeypatch):
    from specviz.ui import teach
    from specviz.ui.session import Session

    def no_models(*a, **k):
        raise AssertionError("the lesson must not load a model")

    monkeypatch.setattr(models, "load_cached", no_models)
    monkeypatch.setattr(models, "load", no_models)
    session = Session()
    out = teach.lesson_start({}, session)
    for i in range(len(lesson.STEPS)):
        assert out["lesson_index"] == i and out["lesson_panel"] == lesson.STEPS[i].panel
        assert out["tree"] is not None and out["explain"] and "Lesson" in out["lesson_text"]
        assert views.run_started(session.events).prompt == out["prompt"]
        out = teach.lesson_next(dict(lesson_index=i), session)
    assert out["lesson_index"] == len(lesson.STEPS) - 1  # Next on the last step stays there
    assert teach.lesson_back(dict(lesson_index=3), session)["lesson_index"] == 2


# ---------------------------------------------------------------- the acceptance map


def test_the_acceptance_map_reads_every_bench_shape_and_session_runs():
    row = {"beta_by_depth": [0.9, 0.7, 0.5], "tau": 2.0}
    one = amap.from_bench({"config": {"drafter": "pld"}, "results": {"code": row, "overall": row}})
    assert one == {("pld", "code"): [0.9, 0.7, 0.5], ("pld", "overall"): [0.9, 0.7, 0.5]}
    many = amap.from_bench({"results": {"pld": {"code": row}, "ngram": {"math": row}}})
    assert set(many) == {("pld", "code"), ("ngram", "math")}
    tree = amap.from_bench({"results": [dict(row, category="qa", strategy="beam", nodes=8)]})
    assert set(tree) == {("beam 8", "qa")}
    with pytest.raises(ValueError, match="beta_by_depth"):
        amap.from_bench({"results": {"code": {"tau": 1}}})
    a, b = Metrics(beta_sum=[0.8, 0.4], beta_count=[1, 1]), Metrics(beta_sum=[0.6], beta_count=[1])
    table = amap.from_runs([("code", "pld", a), ("code", "pld", b), ("math", "pld", Metrics())])
    assert table == {("pld", "code"): [pytest.approx(0.7), pytest.approx(0.4)]}
    fig = amap.acceptance_figure(one)
    assert fig.data[0].type == "heatmap" and list(fig.data[0].x) == [1, 2, 3]
    assert amap.category_of(lesson.lesson_events(lesson.STEPS[0])[0].prompt) == "summarization"


def test_a_rare_rest_cell_is_merged_instead_of_failing_on_one_sample():
    cells = {(0,): 0.6, (1,): 0.39, (2,): 0.0099}  # the rest expects 0.1 of 1000 samples
    counts = Counter({(0,): 600, (1,): 388, (2,): 11, (3,): 1})
    assert chi_square(counts, cells, 1000)[2] > 0.05
    assert chi_square(Counter({(0,): 1000}), {(0,): 1.0}, 1000)[:2] == (0.0, 0)


def test_a_check_cut_short_keeps_both_sides_equal_and_says_why(models_pair):
    target, draft = models_pair
    asked = []

    def cancel():
        asked.append(1)
        return len(asked) > 30

    *_, r = run_check(target, PROMPT, SETTINGS, K, 200, lambda memo: ModelDrafter(draft, chain_builder(3), "tiny"),
                      "sampling", cancel=cancel)
    assert r.note == "cancelled" and r.n == r.plain.n == r.speculative.n == 30
    assert sum(r.plain.counts.values()) == sum(r.speculative.counts.values()) == 30
    assert all(p * 30 >= 5 for p in r.cells.values())  # cells re-chosen for the samples drawn
    with pytest.raises(ValueError, match="no sample"):
        list(run_check(target, PROMPT, SETTINGS, K, 200, lambda memo: None, "sampling", cancel=lambda: True))
