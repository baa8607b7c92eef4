"""The CLI end to end on the real default model, and its one-line errors on bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from specviz import models
from specviz.trace import load

ROOT = Path(__file__).resolve().parent.parent
needs_smollm2 = pytest.mark.skipif(models.status("smollm2-135m") != "ready", reason="smollm2-135m not fetched (make models)")


def cli(*args, timeout=600):
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "specviz", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


@needs_smollm2
def test_generate_streams_text_metrics_and_a_trace(tmp_path):
    out = cli("generate", "--prompt", "List three colors.", "--max-new-tokens", "16", "--trace", str(tmp_path / "t.json"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    assert "tok/s" in out.stderr and "tau" in out.stderr
    events = load(tmp_path / "t.json")
    assert events[-1].text.strip() == out.stdout.strip()
    replay = cli("replay", str(tmp_path / "t.json"))
    assert replay.returncode == 0 and replay.stdout.strip() == out.stdout.strip()


@needs_smollm2
def test_colored_output_marks_token_origins():
    out = cli("generate", "--prompt", "Repeat exactly: one two three one two three one two three",
              "--max-new-tokens", "24", "--color")
    assert out.returncode == 0, out.stderr
    assert "\033[32m" in out.stdout  # some prompt-lookup drafts were accepted


def test_models_lists_presets_and_status():
    out = cli("models")
    assert out.returncode == 0
    for name in models.PRESETS:
        assert name in out.stdout
    assert "pld" in out.stdout and "chain" in out.stdout


@needs_smollm2
@pytest.mark.parametrize("args, message", [
    (["--prompt", ""], "the prompt is empty"),
    (["--prompt", "hi", "--max-new-tokens", "0"], "max_new_tokens must be in"),
    (["--prompt", "hi", "--temperature", "-1"], "temperature must be in"),
    (["--prompt", "hi", "--top-p", "1.5"], "top_p must be in"),
    (["--prompt", "hi", "--draft-len", "99"], "draft length must be in"),
    (["--prompt", "word " * 9000], "context"),
    (["--prompt", "hi", "--target", "no-such-model"], "unknown model 'no-such-model'"),
    (["--prompt", "hi", "--drafter", "no-such-drafter"], "unknown model 'no-such-drafter'"),
    (["--prompt", "hi", "--strategy", "zigzag", "--drafter", "smollm2-135m"], "unknown strategy 'zigzag'"),
])
def test_bad_input_exits_nonzero_with_one_readable_line(args, message):
    out = cli("generate", *args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("specviz: error:") and message in lines[-1], out.stderr
    assert "Traceback" not in out.stderr


def test_fetch_unknown_model_is_one_line():
    out = cli("fetch", "nope")
    assert out.returncode == 2 and "unknown model 'nope'" in out.stderr and "Traceback" not in out.stderr


@needs_smollm2
def test_bench_smoke_writes_json(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"turns": ["Say hello twice: hello hello"], "category": "chat"}) + "\n")
    out = cli("bench", "--drafter", "pld", "--prompts", str(prompts), "--max-new-tokens", "8",
              "--compare-hf", "--json", str(tmp_path / "b.json"))
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "b.json").read_text())
    overall = data["results"]["overall"]
    for key in ("ar_tokens_per_s", "spec_tokens_per_s", "speedup", "acceptance_rate", "mean_accepted_length",
                "predicted_speedup", "outputs_identical", "hf_tokens_per_s", "speedup_vs_hf", "verify_cost_ratio"):
        assert key in overall
    assert overall["outputs_identical"] is True
    curve = data["config"]["profile"]["cost_ms"]  # the machine's forward cost next to the results
    assert set(next(iter(curve.values()))) == {"1", "2", "4", "8", "9", "16"}
    assert "| overall |" in out.stdout


@needs_smollm2
def test_corpus_records_the_targets_outputs(tmp_path):
    out = cli("corpus", "--limit", "1", "--max-new-tokens", "4", "--out", str(tmp_path / "c.json"))
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "c.json").read_text())
    assert len(data["prompts"]) == len(data["outputs"]) == 1 and 1 <= len(data["outputs"][0]) <= 4
    assert data["target"] == "smollm2-135m" and data["digest"]


def test_compare_hf_refuses_drafters_transformers_does_not_have(tmp_path):
    out = cli("bench", "--drafter", "ngram", "--compare-hf")
    assert out.returncode == 2 and "no counterpart in transformers" in out.stderr


def test_bench_rejects_a_bad_prompt_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    out = cli("bench", "--prompts", str(bad))
    assert out.returncode == 2 and "not valid JSON" in out.stderr


def test_trained_drafter_card_names_command_weights_and_curve(tmp_path):
    """Every trainer's CLI ends with one card writer: the JSON card sits next to the weights and holds the
    command that reproduces them."""
    import argparse
    import json

    from specviz.train.card import write_card

    out = tmp_path / "del-x.safetensors"
    out.write_bytes(b"0" * 1000)
    a = argparse.Namespace(kind="del", shards=3, steps=5, batch_tokens=64, seed=1, threads=1)
    logged = []
    card = write_card(a, 128, {"summary": {"train_seconds": 2}, "png": tmp_path / "loss.png"}, out, logged.append)
    stored = json.loads(out.with_suffix(".json").read_text())
    assert stored == card and stored["weights"] == out.name and stored["weights_bytes"] == 1000
    assert stored["command"] == ("python -m specviz train-drafter del --shards 3 --steps 5 --batch-tokens 64 "
                                 "--vocab 128 --seed 1 --threads 1")
    assert stored["loss_curve"] == "loss.png" and stored["train_seconds"] == 2
    assert len(logged) == 1 and str(out) in logged[0]
    a.positions = 200_000  # DEL's sample of recomputed states, when set, is part of what reproduces it
    assert write_card(a, 128, {"summary": {"train_seconds": 2}, "png": tmp_path / "loss.png"}, out,
                      logged.append)["command"].endswith("--threads 1 --positions 200000")


@needs_smollm2
def test_bench_drafters_side_by_side(tmp_path):
    """Several configurations against AR in one run: a row per drafter and category, greedy outputs
    identical to AR (or a near-tie), results written."""
    from specviz.bench_drafters import parse_configs

    assert parse_configs("pld:chain:8, ngram") == [("pld", "chain", 8), ("ngram", "chain", 4)]
    with pytest.raises(ValueError, match="whole number"):
        parse_configs("pld:chain:x")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"category": "a", "prompt": "Repeat exactly: one two three one two three one"}\n'
                       '{"category": "b", "prompt": "List four colors."}\n')
    out = tmp_path / "r.json"
    run = cli("bench", "--drafters", "pld:chain:4,pld-tree:chain:4,eagle3+ngram:dynamic:2", "--prompts", str(prompts),
              "--max-new-tokens", "12", "--json", str(out), "--oracle")
    assert run.returncode == 0, run.stderr
    assert "pld:chain:4" in run.stdout and "pld-tree:chain:4" in run.stdout
    results = json.loads(out.read_text())["results"]
    oracle = results.pop("oracle (best fixed arm per prompt)")  # the fastest of AR and each arm, per prompt
    assert oracle["overall"]["tokens_per_s"] >= max(r["overall"]["tokens_per_s"] for r in results.values()) * 0.999
    assert set(results) == {"pld:chain:4", "pld-tree:chain:4", "eagle3+ngram:dynamic:2"}
    merged = results["eagle3+ngram:dynamic:2"]["overall"]  # a merged tree says what its graft added
    assert 0 <= merged["grafted_share"] <= 1 and "grafted_share" not in results["pld:chain:4"]["overall"]
    assert 0 <= merged["alone_share"] <= 1 and "alone_share" not in results["pld:chain:4"]["overall"]
    assert merged["identical_count"] == 2
    for rows in results.values():
        assert set(rows) == {"a", "b", "overall"} and rows["overall"]["prompts"] == 2
        assert rows["overall"]["speedup"] > 0 and rows["overall"]["tau"] >= 1


@needs_smollm2
def test_check_device_reports_each_drafter_and_keeps_going(tmp_path):
    """A drafter that cannot be built gets its error in its own row; the others still run; the exit
    status says not every row is identical."""
    out = tmp_path / "check.json"
    run = cli("check-device", "--drafters", "nosuch-drafter:chain:4,pld:chain:4", "--limit", "1",
              "--max-new-tokens", "8", "--json", str(out))
    assert run.returncode == 1, run.stderr
    rows = {r["drafter"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["nosuch-drafter:chain:4"]["verdict"].startswith("ERROR")
    assert rows["pld:chain:4"]["verdict"] == "identical" and rows["pld:chain:4"]["device"] == "cpu"
    assert "| pld:chain:4 | cpu | identical (1/1) |" in run.stdout


@needs_smollm2
def test_check_lossless_prints_the_distributions_and_the_verdict():
    run = cli("check-lossless", "--prompt", "Repeat exactly: one two three one two three one two", "--drafter", "pld",
              "--samples", "40", "--k", "2", "--temperature", "1.0")
    assert run.returncode == 0, run.stderr
    assert "| sequence | exact | plain | speculative |" in run.stdout
    assert "speculative: chi-square" in run.stdout and "Lossless as far as 40 samples can tell" in run.stdout
    bad = cli("check-lossless", "--prompt", "x", "--k", "5")
    assert bad.returncode == 2 and "--k must be 1 to 3" in bad.stderr


def test_trainer_progress_bars_take_a_stage_name():
    """DEL names each stage's bar (`progress(items, desc=...)`); the CLI's bar factory used to pass desc twice
    and `train-drafter del` died before its first step."""
    from specviz.train.card import progress_bar

    bar = progress_bar(mininterval=10)(range(3), desc="states (train)")
    assert list(bar) == [0, 1, 2] and bar.desc.startswith("states (train)")
    assert progress_bar("kd")(range(2)).desc.startswith("kd")
