"""`python -m specviz check-device`: every registered drafter on the device the target is on (a GPU
when there is one), greedy against plain decoding on the same prompts, one line each.

It answers "does each drafter run here, and is its greedy output AR's token for token?" — not
"how fast" (that is `bench`). A drafter that fails to build or to run gets its error in its line and
the check goes on with the next one; the exit status is 1 if any line is not "identical".
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from dataclasses import replace

import torch

# (drafter, shape, length): every registered drafter once, the shape-taking ones also as a tree
DEFAULT = ("pld:chain:8,pld-tree:chain:8,ngram:chain:8,ngram-tree:chain:8,eagle3:chain:4,eagle3:dynamic:2,"
           "eagle3+ngram:dynamic:2,eagle3+ngram:chain:3,eagle:chain:4,del:chain:4,distill-kd:chain:4,"
           "distill-tvd:specinfer:3,distill-kd-online:chain:4,auto:chain:4,auto-online:chain:4")


def check(config, drafters: str, prompts: list[dict], sampled: bool = True, log=print) -> list[dict]:
    from .api import build
    from .bench_drafters import parse_configs, plain_engine

    base = build(replace(config, drafter="none"))
    target = base.engine.target
    ar = plain_engine(base)
    encoded = [base.encode(p["prompt"]) for p in prompts]
    settings = replace(config.settings, temperature=0.0)
    t0 = time.perf_counter()
    want = [ar.run(ids, settings).token_ids for ids in encoded]
    ar_s = time.perf_counter() - t0
    rows = []
    for name, shape, length in parse_configs(drafters):
        row = {"drafter": f"{name}:{shape}:{length}", "device": str(target.device)}
        try:
            spec = build(replace(config, drafter=name, shape=shape, draft_len=length))
            t0 = time.perf_counter()
            got = [spec.engine.run(ids, settings).token_ids for ids in encoded]
            row["seconds_vs_ar"] = (time.perf_counter() - t0) / ar_s
            row["identical"] = sum(g == w for g, w in zip(got, want))
            row["prompts"] = len(want)
            if sampled and getattr(spec.engine.drafter, "greedy_only", False):
                row["sampled"] = "greedy only"
            elif sampled:  # runs at T = 1 (exactness is the CPU suite's distribution test)
                spec.engine.run(encoded[0], replace(settings, temperature=1.0, seed=1))
                row["sampled"] = "ran"
            row["verdict"] = "identical" if row["identical"] == len(want) else "DIFFERS"
        except Exception as e:  # one line for the table, the traceback for the log
            row["verdict"] = f"ERROR {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            row["traceback"] = traceback.format_exc(limit=6)
        log(f"{row['drafter']:26s} {row['verdict']}")
        rows.append(row)
    return rows


def run_check(a, config) -> int:
    from .prompts import read_prompts

    prompts = read_prompts(a.prompts)[: a.limit or 4]
    rows = check(replace(config, settings=replace(config.settings, max_new_tokens=a.max_new_tokens or 48)),
                 a.drafters or DEFAULT, prompts, log=lambda s: print(s, file=sys.stderr))
    print("| drafter | device | greedy identical to AR | sampled | time vs AR |\n|---|---|---|---|---|")
    for r in rows:
        count = f" ({r['identical']}/{r['prompts']})" if "prompts" in r else ""
        ratio = f"{r['seconds_vs_ar']:.2f}×" if "seconds_vs_ar" in r else "–"
        print(f"| {r['drafter']} | {r['device']} | {r['verdict']}{count} | {r.get('sampled', '–')} | {ratio} |")
    if a.json:
        from .atomic import atomic_write_text

        atomic_write_text(a.json, json.dumps({"torch": torch.__version__, "rows": rows}, indent=2))
    return 0 if all(r["verdict"] == "identical" for r in rows) else 1
