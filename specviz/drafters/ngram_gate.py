"""Tune the n-gram drafters' gate (NgramDrafter's `min_expected` and `prior`) for a measured
verification cost curve, by two-fold cross-validation on the corpus of the target's own outputs.

Only the corpus file is read (its training prompts and outputs), never the evaluation prompts.
The prompts are split into two folds (even / odd index: the corpus is ordered by category, so both
folds hold every category). For each fold the corpus table is counted from the OTHER fold's outputs
(as drafters/registry.py counts the whole corpus), and each held-out output is replayed as the
engine runs it under greedy verification: at every committed position the drafter sees the prompt
ids (chat template included, as the engine encodes them) plus the output so far, builds its tree
with NgramDrafter.draft (local counts + corpus counts, best_first_tree), and greedy verification
accepts the longest path of the tree that matches the true continuation; the step commits the
accepted tokens plus one. A step that drafts costs ratio(1 + nodes) one-token forwards (the
profile's cost curve, interpolated), a step that does not costs 1.

Greedy replay commits the true tokens whatever the gate does, so the text (and so the tree) at a
position does not depend on the gate: the trees are built once per position and prior, and every
`min_expected` is then a cheap walk over them.

    python -m specviz.drafters.ngram_gate --profile out/profile-smollm2.json
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
from bisect import bisect_left
from pathlib import Path
from typing import Callable, Iterable

from .ngram import NgramDrafter, NgramTable

MIN_EXPECTED = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)
PRIORS = (0.5, 1.0, 2.0)
DRAFTERS = (("ngram", 1), ("ngram-tree", 8))  # name, width (as drafters/registry.py builds them)


def current_defaults() -> dict[str, float]:
    params = inspect.signature(NgramDrafter.__init__).parameters
    return {"min_expected": params["min_expected"].default, "prior": params["prior"].default}


def cost_curve(profile: str | os.PathLike | dict, path: str = "fast") -> dict[int, float]:
    """The cost of a forward with n new positions relative to one (`ratio_to_first_size`)."""
    data = profile if isinstance(profile, dict) else json.loads(Path(profile).read_text())
    return {int(n): float(r) for n, r in data["ratio_to_first_size"][path].items()}


def interpolate(curve: dict[int, float], n: int) -> float:
    """Linear between the measured sizes; the end points' values beyond them."""
    xs = sorted(curve)
    if n <= xs[0]:
        return curve[xs[0]]
    if n >= xs[-1]:
        return curve[xs[-1]]
    i = bisect_left(xs, n)
    if xs[i] == n:
        return curve[n]
    lo, hi = xs[i - 1], xs[i]
    return curve[lo] + (curve[hi] - curve[lo]) * (n - lo) / (hi - lo)


def folds(n: int, k: int = 2) -> list[list[int]]:
    return [[i for i in range(n) if i % k == f] for f in range(k)]


def corpus_table(outputs: Iterable[list[int]], order: int = 4) -> NgramTable:
    table = NgramTable(order)
    for ids in outputs:
        table.add(list(ids))
    return table


def accepted_length(tree, truth: list[int]) -> int:
    """Drafts greedy verification accepts: the longest root path whose tokens are `truth`'s prefix."""
    node, depth = -1, 0
    while depth < len(truth):
        match = [c for c in tree.children(node) if tree.tokens[c] == truth[depth]]
        if not match:
            break
        node, depth = match[0], depth + 1
    return depth


def replay_positions(drafter: NgramDrafter, prompt_ids: list[int], output: list[int],
                     budget: int) -> list[tuple[float, int, int]]:
    """(expected, accepted, nodes) of the ungated tree at every position of `output`."""
    drafter.reset()
    rows = []
    for i in range(len(output)):
        tree, expected = drafter.draft(list(prompt_ids) + output[:i], budget)
        rows.append((expected, accepted_length(tree, output[i:]), len(tree)))
    return rows


def walk(rows: list[tuple[float, int, int]], min_expected: float,
         ratio: Callable[[int], float]) -> tuple[int, float, int, int]:
    """Replay one output under a gate: (tokens, cost, steps, drafting steps)."""
    i, cost, steps, drafting = 0, 0.0, 0, 0
    while i < len(rows):
        expected, accepted, nodes = rows[i]
        if expected >= min_expected:  # NgramDrafter.propose's gate
            cost += ratio(1 + nodes)
            drafting += nodes > 0
            i += accepted + 1
        else:
            cost += 1.0
            i += 1
        steps += 1
    return len(rows), cost, steps, drafting


_JOB: dict = {}  # what tune() shares with its replay tasks (inherited by forked workers)


def _replay_task(task: tuple[int, str, int, float]) -> list[list[tuple[float, int, int]]]:
    """The rows of every output held out in fold f, for one drafter and prior."""
    f, name, width, prior = task
    outputs, k = _JOB["outputs"], _JOB["k"]
    held = folds(len(outputs), k)[f]
    if f not in _JOB["tables"]:  # the corpus table of the other folds
        _JOB["tables"][f] = corpus_table(o for i, o in enumerate(outputs) if i % k != f)
    drafter = NgramDrafter(_JOB["vocab"], _JOB["tables"][f], budget=_JOB["budget"], width=width, prior=prior,
                           min_expected=0.0, name=name)
    return [replay_positions(drafter, _JOB["prompt_ids"][i], outputs[i], _JOB["budget"]) for i in held]


def target_encoder(target: str) -> Callable[[str], list[int]]:
    """Prompt text -> the ids the engine starts from (api.encode_prompt, chat template as api.build)."""
    from transformers import AutoTokenizer

    from .. import models
    from ..api import encode_prompt

    try:
        preset = models.get_preset(target)
    except Exception:
        preset = None
    tokenizer = AutoTokenizer.from_pretrained(models.hf_dir(target) if preset else target)
    chat = preset.chat if preset else bool(getattr(tokenizer, "chat_template", None))
    return lambda text: encode_prompt(tokenizer, text, chat)


def tune(corpus_path: str | os.PathLike, curve: dict[int, float], encode: Callable[[str], list[int]] | None = None,
         min_expected: Iterable[float] = MIN_EXPECTED, priors: Iterable[float] = PRIORS,
         drafters: Iterable[tuple[str, int]] = DRAFTERS, budget: int = 8, k: int = 2, tie: float = 0.002,
         jobs: int = 1, progress: Callable[[str], None] | None = None) -> dict:
    """Modeled tokens per unit of forward cost for every (drafter, prior, min_expected), averaged
    over the folds, and the chosen (min_expected, prior): the best mean over the drafters; the
    current defaults are kept when they are within `tie` (relative) of it."""
    data = json.loads(Path(corpus_path).read_text())
    if data.get("version") != 1 or not isinstance(data.get("outputs"), list):
        raise ValueError(f"{corpus_path}: not a specviz corpus")
    outputs = [list(o) for o in data["outputs"]]
    encode = encode or target_encoder(data["target"])
    prompt_ids = [encode(p["prompt"]) for p in data["prompts"]]
    vocab = max(max(ids, default=0) for ids in outputs + prompt_ids) + 1  # one-hot q only; no effect on counts
    ratio = lambda n: interpolate(curve, n)  # noqa: E731
    min_expected, priors, drafters = [float(m) for m in min_expected], [float(p) for p in priors], list(drafters)
    tasks = [(f, name, width, prior) for f in range(k) for name, width in drafters for prior in priors]
    _JOB.update(outputs=outputs, prompt_ids=prompt_ids, vocab=vocab, budget=budget, k=k, tables={})
    if jobs > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(min(jobs, len(tasks))) as pool:
            replays = pool.map(_replay_task, tasks, chunksize=1)
    else:
        replays = []
        for task in tasks:
            if progress:
                progress("fold {} {} prior {}".format(task[0] + 1, task[1], task[3]))
            replays.append(_replay_task(task))
    _JOB.clear()
    sums: dict[tuple, list] = {}  # (drafter, prior, min_expected) -> per fold [tokens, cost, steps, drafting]
    for (f, name, _, prior), per_output in zip(tasks, replays):
        for rows in per_output:
            for m in min_expected:
                acc = sums.setdefault((name, prior, m), [[0, 0.0, 0, 0] for _ in range(k)])[f]
                for j, v in enumerate(walk(rows, m, ratio)):
                    acc[j] += v
    grid = []
    for (name, prior, m), per_fold in sums.items():
        tpc = [t / c for t, c, _, _ in per_fold]
        grid.append({"drafter": name, "prior": prior, "min_expected": m,
                     "tokens_per_cost": sum(tpc) / len(tpc), "folds": tpc,
                     "tokens_per_step": sum(p[0] for p in per_fold) / sum(p[2] for p in per_fold),
                     "drafting_share": sum(p[3] for p in per_fold) / sum(p[2] for p in per_fold)})
    score = {}
    for row in grid:
        score.setdefault((row["prior"], row["min_expected"]), []).append(row["tokens_per_cost"])
    score = {key: sum(v) / len(v) for key, v in score.items()}
    best = max(score, key=lambda key: (score[key], -key[1], -key[0]))
    now = current_defaults()
    kept = (now["prior"], now["min_expected"])
    if kept in score and score[kept] >= score[best] * (1 - tie):
        best = kept
    per_drafter = {}
    for name, _ in drafters:
        rows = [r for r in grid if r["drafter"] == name]
        top = max(rows, key=lambda r: r["tokens_per_cost"])
        per_drafter[name] = {"prior": top["prior"], "min_expected": top["min_expected"],
                             "tokens_per_cost": top["tokens_per_cost"]}
    return {"corpus": str(corpus_path), "prompts": len(outputs), "folds": k, "budget": budget,
            "curve": {str(n): r for n, r in sorted(curve.items())}, "grid": grid,
            "mean_over_drafters": [{"prior": p, "min_expected": m, "tokens_per_cost": s}
                                   for (p, m), s in sorted(score.items())],
            "current": now, "chosen": {"prior": best[0], "min_expected": best[1], "tokens_per_cost": score[best]},
            "best_per_drafter": per_drafter}


def format_table(result: dict) -> str:
    names = list(dict.fromkeys(r["drafter"] for r in result["grid"]))
    priors = sorted({r["prior"] for r in result["grid"]})
    ms = sorted({r["min_expected"] for r in result["grid"]})
    cell = {(r["drafter"], r["prior"], r["min_expected"]): r for r in result["grid"]}
    lines = []
    for name in names:
        lines.append(f"{name}: modeled tokens per unit cost (mean of {result['folds']} folds)")
        lines.append("min_expected " + "".join(f"  prior {p:<5g}" for p in priors))
        for m in ms:
            lines.append(f"{m:>12g} " + "".join(f"  {cell[(name, p, m)]['tokens_per_cost']:>11.4f}" for p in priors))
        lines.append("")
    c = result["chosen"]
    lines.append(f"chosen: min_expected={c['min_expected']:g} prior={c['prior']:g} "
                 f"(mean over drafters {c['tokens_per_cost']:.4f}); current: min_expected="
                 f"{result['current']['min_expected']:g} prior={result['current']['prior']:g}")
    for name, b in result["best_per_drafter"].items():
        lines.append(f"best for {name} alone: min_expected={b['min_expected']:g} prior={b['prior']:g} "
                     f"({b['tokens_per_cost']:.4f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from ..paths import ASSETS

    ap = argparse.ArgumentParser(prog="python -m specviz.drafters.ngram_gate", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", required=True, help="a `specviz profile` JSON (ratio_to_first_size)")
    ap.add_argument("--path", default="fast", help="which forward path's cost curve (default: fast)")
    ap.add_argument("--corpus", default=str(ASSETS / "corpus-smollm2-135m.json"))
    ap.add_argument("--budget", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=1, help="replay tasks in this many processes (same result)")
    ap.add_argument("--json", help="also write the full result here")
    args = ap.parse_args(argv)
    result = tune(args.corpus, cost_curve(args.profile, args.path), budget=args.budget, jobs=args.jobs,
                  progress=lambda s: print(s, flush=True, file=__import__("sys").stderr))
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
