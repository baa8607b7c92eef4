"""What runs measured on this machine (specviz/ui/measured.py): the forward-cost curve and drafter speeds,
kept per machine across restarts, and the warning for a drafter that measured slower than plain decoding."""
import pytest
from test_tree_metrics import tree_run

from specviz.events import RunStarted
from specviz.ui import measured


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECVIZ_CACHE", str(tmp_path))
    measured.forget()
    yield tmp_path
    measured.forget()


def run(drafter: str, steps: int = 4, scale: float = 1.0, fast: bool = True) -> list:
    """tree_run's events, recorded as a run of `drafter`, its step times scaled."""
    events = tree_run(steps)
    start = events[0]
    config = {"target": "tgt", "drafter": drafter, "fast_path": fast, "parallel": False}
    events[0] = RunStarted(start.target, drafter, start.rule, start.settings, start.prompt, start.prompt_tokens, config)
    for ev in events[1:]:
        if hasattr(ev, "verify_s"):
            ev.verify_s *= scale
            ev.metrics.elapsed_s *= scale
    return events


def test_decode_forwards_make_the_cost_curve_and_it_survives_a_restart(store):
    for _ in range(3):
        measured.record(run("tree"))
    curve = measured.curve("tgt", True)
    assert curve.samples == {7: [0.06] * 9}  # the first step of each run (the prefill) is left out
    assert measured.curve("tgt", False).samples == {}  # the other path is another curve
    measured.forget()
    assert measured.curve("tgt", True).samples == {7: [0.06] * 9}
    assert measured.path().parent == store / "measured"


def test_a_drafter_slower_than_plain_decoding_is_warned_about(store):
    assert measured.slower_warning("tgt", "tree") is None  # nothing measured: nothing claimed
    measured.record(run("tree", scale=2.0))
    assert measured.speed("tgt", "tree").ratio is None  # plain decoding not measured yet
    measured.record(run("none"))
    s = measured.speed("tgt", "tree")
    assert s.runs == 1 and 0 < s.ratio < 1
    assert f"{s.ratio:.2f}×" in measured.slower_warning("tgt", "tree")
    measured.record(run("fast", scale=0.5))
    assert measured.speed("tgt", "fast").ratio > 1 and measured.slower_warning("tgt", "fast") is None


def test_an_unwritable_cache_only_means_nothing_is_remembered(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("SPECVIZ_CACHE", str(blocker))  # a file where the folder would go
    measured.forget()
    measured.record(run("tree"))
    assert measured.curve("tgt").samples  # still known in this process
    measured.forget()
