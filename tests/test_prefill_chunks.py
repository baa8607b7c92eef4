"""A long prompt is read in chunks (engine.PREFILL_CHUNK) with progress between them: the run's tokens are
those of reading it in one forward, and drafters that read the target's layers still see every position."""
import pytest

from conftest import decode
from specviz import engine as engine_module, models
from specviz.drafters.model import ModelDrafter
from specviz.drafters.strategies import STRATEGIES
from specviz.engine import Engine, Settings
from specviz.events import Prefilled, RunFinished, StepStarted
from specviz.trace import dumps, loads


def run(monkeypatch, chunk, make, prompt, settings):
    monkeypatch.setattr(engine_module, "PREFILL_CHUNK", chunk)
    return list(make().stream(prompt, settings))


def test_chunked_reading_gives_the_tokens_of_one_forward(monkeypatch, tiny_target, tiny_drafter, one_thread):
    prompt = [(7 * i + 3) % 31 + 1 for i in range(300)]
    for make, settings in [(lambda: Engine(tiny_target, decode), Settings(max_new_tokens=20)),
                           (lambda: Engine(tiny_target, decode, ModelDrafter(tiny_drafter, STRATEGIES.get("chain").build(3))),
                            Settings(max_new_tokens=20)),
                           (lambda: Engine(tiny_target, decode, ModelDrafter(tiny_drafter, STRATEGIES.get("chain").build(3))),
                            Settings(max_new_tokens=20, temperature=1.0, seed=4))]:
        whole = run(monkeypatch, 10**9, make, prompt, settings)
        chunked = run(monkeypatch, 64, make, prompt, settings)
        assert chunked[-1].token_ids == whole[-1].token_ids
        assert not any(isinstance(ev, Prefilled) for ev in whole)
        progress = [(ev.done, ev.total) for ev in chunked if isinstance(ev, Prefilled)]
        assert progress == [(64, 300), (128, 300), (192, 300), (256, 300)]
        # before the first step; the trace leaves them out
        assert all(isinstance(ev, Prefilled) for ev in chunked[1:5]) and isinstance(chunked[5], StepStarted)
        assert not any(isinstance(ev, Prefilled) for ev in loads(dumps(chunked)))


def test_a_stop_while_reading_ends_the_run(monkeypatch, tiny_target, one_thread):
    monkeypatch.setattr(engine_module, "PREFILL_CHUNK", 50)
    asked = []
    events = list(Engine(tiny_target, decode).stream(list(range(1, 31)) * 10, Settings(max_new_tokens=10),
                                                     cancel=lambda: asked.append(1) or len(asked) > 2))
    assert isinstance(events[-1], RunFinished) and events[-1].stop_reason == "cancelled"
    assert events[-1].token_ids == [] and sum(isinstance(ev, Prefilled) for ev in events) == 2


@pytest.mark.skipif(models.status("smollm2-135m") != "ready", reason="smollm2-135m not fetched")
def test_a_trained_head_reads_every_chunk(monkeypatch):
    """EAGLE-3 reads three of the target's layers at every committed position: read in chunks, the prompt's
    states reach it all the same (same tokens, same acceptance as one forward)."""
    from specviz.api import build
    from specviz.config import RunConfig

    text = " ".join(f"Item {i}: the {['red', 'green', 'blue'][i % 3]} box holds {i * 7 % 13} stones." for i in range(60))
    config = RunConfig(drafter="eagle3", shape="chain", draft_len=3, settings=Settings(max_new_tokens=24))

    def once(chunk):
        monkeypatch.setattr(engine_module, "PREFILL_CHUNK", chunk)
        events = list(build(config).stream_text("Summarize the list in one sentence.\n\n" + text))
        return events[-1], sum(isinstance(ev, Prefilled) for ev in events)

    (whole, none), (chunked, chunks) = once(10**9), once(256)
    assert none == 0 and chunks >= 3
    assert chunked.token_ids == whole.token_ids
    assert chunked.metrics.accepted == whole.metrics.accepted
