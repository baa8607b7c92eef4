"""Device and dtype discipline, in the form a CPU can show: with the target in float64, every drafter
whose tensors meet the target's must follow it (a float32 buffer, index or weight would fail the
forward, exactly as a CPU tensor fails against a CUDA target), and greedy output stays AR's."""
from dataclasses import replace

import pytest
import torch

from specviz import models
from specviz.config import RunConfig
from specviz.device_check import check
from specviz.engine import Settings

needs_smollm2 = pytest.mark.skipif(models.status("smollm2-135m") != "ready", reason="smollm2-135m not fetched")

# one configuration per code path that allocates its own tensors: the feature heads (chain and tree),
# the merged tree, DEL's exit adapters, the distilled LM (shipped and online copies), the tree verifier
# of a copying drafter, and `auto`, which builds its arms itself
CONFIGS = ("eagle3:dynamic:2,eagle3+ngram:chain:3,eagle:chain:3,del:chain:3,distill-kd:chain:3,"
           "distill-kd-online:chain:3,pld-tree:chain:4,auto:chain:4")


@needs_smollm2
def test_every_drafter_follows_a_float64_target():
    config = RunConfig(dtype="float64", settings=Settings(max_new_tokens=8))
    prompts = [{"prompt": "Write a Python function that adds two numbers. def add(a, b): return a + b", "category": "x"}]
    rows = check(config, CONFIGS, prompts, sampled=False, log=lambda *_: None)
    assert [r["device"] for r in rows] == ["cpu"] * len(rows)
    bad = {r["drafter"]: r.get("traceback", r["verdict"]) for r in rows if r["verdict"] != "identical"}
    assert not bad, bad
    target, _, _ = models.load_cached("smollm2-135m", "float64")
    assert next(target.parameters()).dtype == torch.float64


def test_an_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16, float64"):
        replace(RunConfig(), dtype="float16").checked()
