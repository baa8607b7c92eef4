"""Online Speculative Decoding, measured: acceptance before and after the drafter adapts as it serves.

    python -m specviz.train.osd --drafter distill-kd --passes 2 --json out/osd-distill-kd.json
    python -m specviz.train.osd --drafter distill-kd --adapt assets/prompts-heldout.jsonl --passes 1

One process: the shipped drafter (static) runs the prompt set once as the reference; the online
copy (`<drafter>-online`, its own weights) then runs it `--passes` times in a row, learning from
the target at every rejected position. With --adapt, the online drafter first serves that other
prompt file (adaptation on different prompts), then the evaluation set: a test of transfer, not of
memorizing the very prompts it is scored on. Every run is checked against the static run's output
under greedy decoding (the switch must not change what the target says).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

from ..config import RunConfig
from ..engine import Settings
from ..metrics import Metrics


def run_set(engine, encoded, settings) -> tuple[Metrics, list[list[int]]]:
    total, outputs = Metrics(), []
    for ids in encoded:
        r = engine.engine.run(ids, settings)
        total.add(r.metrics)
        outputs.append(r.token_ids)
    return total, outputs


def summary(m: Metrics) -> dict:
    return {"acceptance_rate": m.acceptance_rate, "tau": m.tau, "tokens_per_s": m.tokens_per_s, "c": m.c,
            "beta_by_depth": m.beta_by_depth, "drafted": m.drafted, "accepted": m.accepted}


def main(argv: list[str] | None = None) -> int:
    from ..api import build
    from ..prompts import DEFAULT_PROMPTS, read_prompts

    ap = argparse.ArgumentParser(prog="python -m specviz.train.osd")
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--drafter", default="distill-kd", help="a distilled drafter with an -online twin")
    ap.add_argument("--draft-len", type=int, default=3)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--prompts", default=str(DEFAULT_PROMPTS))
    ap.add_argument("--limit", type=int, default=0, help="only the first N prompts")
    ap.add_argument("--adapt", help="serve this prompt file first (online only), then evaluate")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    settings = Settings(a.max_new_tokens, a.temperature, seed=0)
    config = RunConfig(a.target, a.drafter, "chain", a.draft_len, settings=settings)
    static = build(config)
    online = build(replace(config, drafter=f"{a.drafter}-online"))
    prompts = [p["prompt"] for p in read_prompts(a.prompts)][: a.limit or None]
    encoded = [static.encode(p) for p in prompts]
    static.engine.run(encoded[0], Settings(8))  # warm-up
    ref, ref_out = run_set(static, encoded, settings)
    result = {"config": vars(a), "static": summary(ref), "passes": []}
    print(f"static {a.drafter}: acceptance {ref.acceptance_rate:.3f}, tau {ref.tau:.2f}, {ref.tokens_per_s:.1f} tok/s",
          file=sys.stderr)
    if a.adapt:
        t0 = time.perf_counter()
        adapt = [online.encode(p["prompt"]) for p in read_prompts(a.adapt)]
        m, _ = run_set(online, adapt, settings)
        result["adaptation"] = summary(m) | {"prompts": len(adapt), "seconds": time.perf_counter() - t0}
        print(f"adaptation on {a.adapt}: acceptance {m.acceptance_rate:.3f}", file=sys.stderr)
    learner = online.engine.drafter.online
    for n in range(a.passes):
        m, out = run_set(online, encoded, settings)
        same = sum(x == y for x, y in zip(out, ref_out)) if settings.warp.greedy else None
        result["passes"].append(summary(m) | {"identical_to_static": same, "updates_so_far": learner.updates,
                                               "learning_seconds_so_far": learner.seconds})
        print(f"online pass {n + 1}: acceptance {m.acceptance_rate:.3f}, tau {m.tau:.2f}, {m.tokens_per_s:.1f} tok/s, "
              f"{learner.updates} updates so far, outputs identical to static: {same}/{len(encoded)}", file=sys.stderr)
    if a.json:
        from ..trace import atomic_write_text

        atomic_write_text(a.json, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
