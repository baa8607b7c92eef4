"""Runs end cleanly when cancelled or out of time; one RunConfig check with one set of limits."""
import pytest

from specviz.config import RunConfig
from specviz.drafters.model import ModelDrafter, chain_builder
from specviz.engine import Engine, Settings
from specviz.events import RunFinished, StepFinished
from specviz.limits import APP, ENGINE

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = [1, 2, 3, 4, 5]


def test_cancel_ends_the_run_between_forwards_with_its_partial_result(tiny_target, tiny_drafter):
    engine = Engine(tiny_target, str, ModelDrafter(tiny_drafter, chain_builder(3)))
    full = engine.run(PROMPT, Settings(max_new_tokens=30)).token_ids
    steps, events = [], []
    for ev in engine.stream(PROMPT, Settings(max_new_tokens=30), cancel=lambda: len(steps) >= 2):
        events.append(ev)
        if isinstance(ev, StepFinished):
            steps.append(ev)
    end = events[-1]
    assert isinstance(end, RunFinished) and end.stop_reason == "cancelled"
    assert 0 < len(end.token_ids) < len(full) and full[: len(end.token_ids)] == end.token_ids
    assert engine.run(PROMPT, Settings(max_new_tokens=30)).token_ids == full  # the next run is right


def test_a_time_limit_ends_the_run_with_a_clear_reason(tiny_target):
    end = list(Engine(tiny_target, str).stream(PROMPT, Settings(max_new_tokens=30), time_limit_s=0.0))[-1]
    assert end.stop_reason == "time limit" and end.token_ids == []


def test_one_check_with_one_set_of_limits(monkeypatch):
    ok = RunConfig(drafter="pld", settings=Settings(max_new_tokens=600)).checked()
    assert ok.settings.max_new_tokens == 600 and ok.stop_params == {}
    with pytest.raises(ValueError, match="max_new_tokens must be in"):
        RunConfig(settings=Settings(max_new_tokens=600)).checked(APP)
    with pytest.raises(ValueError, match="temperature must be in"):
        RunConfig(settings=Settings(temperature=ENGINE.max_temperature + 1)).checked()
    with pytest.raises(ValueError, match="greedy decoding only"):
        RunConfig(drafter="qwen2.5-coder-0.5b", shape="dynamic", settings=Settings(temperature=0.5)).checked()
    with pytest.raises(ValueError, match="reads the drafter's distribution"):
        RunConfig(drafter="pld", stop="adaedl").checked()
    assert RunConfig(stop="adaedl", drafter="qwen2.5-coder-0.5b").checked().stop_params["gamma"] == 0.2
    monkeypatch.setenv("SPECVIZ_MAX_NEW_TOKENS", "64")
    assert APP.from_env().max_new_tokens == 64
    monkeypatch.setenv("SPECVIZ_MAX_NEW_TOKENS", "99999")
    assert APP.from_env().max_new_tokens == APP.max_new_tokens  # narrowed, never widened


def test_a_config_round_trips_through_a_dict():
    config = RunConfig(drafter="ngram-tree", draft_len=8, stop="schedule", settings=Settings(temperature=0.7)).checked()
    assert RunConfig.from_dict(config.as_dict()) == config
    with pytest.raises(ValueError, match="unknown run config field"):
        RunConfig.from_dict({**config.as_dict(), "evil": 1})
