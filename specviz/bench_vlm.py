"""`python -m specviz bench-vlm`: a vision-language target on image prompts, plain decoding against
text-only drafters, side by side in one run (the LLaVA speculative-decoding seed's comparison).

Each row of the prompt file names a category (caption, question, reading), an image in
assets/images/ and a prompt. Per drafter and category: tokens/s and the ratio to plain decoding,
tau (tokens per target forward), acceptance per step and the first draft token's agreement (beta
at depth 1); every run's tokens are checked against plain decoding's (greedy).
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

from .config import RunConfig
from .engine import Settings
from .metrics import Metrics
from .paths import ASSETS

PROMPTS = ASSETS / "images" / "prompts.jsonl"


def read(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    for r in rows:
        if not {"category", "image", "prompt"} <= set(r):
            raise ValueError(f"{path}: every row needs category, image and prompt")
    return rows


def run(target: str, drafters: list[tuple[str, str, int]], rows: list[dict], images: Path, max_new_tokens: int,
        log=print) -> dict:
    from PIL import Image

    from .api import build
    from .bench_drafters import label

    settings = Settings(max_new_tokens=max_new_tokens)
    pictures = {r["image"]: Image.open(images / r["image"]).convert("RGB") for r in rows}
    configs = [("none", "chain", 1)] + drafters
    engines = {c: build(RunConfig(target, c[0], c[1], c[2], settings=settings)) for c in configs}
    for e in engines.values():  # warm: models loaded, fast-path weights prepared
        e.generate(rows[0]["prompt"], pictures[rows[0]["image"]], Settings(max_new_tokens=2))
    totals: dict = defaultdict(lambda: defaultdict(Metrics))
    identical: dict = defaultdict(lambda: True)
    for r in rows:
        plain = None
        for c, e in engines.items():
            out = e.generate(r["prompt"], pictures[r["image"]], settings)
            plain = out.token_ids if plain is None else plain
            identical[c] &= out.token_ids == plain
            decode = out.metrics  # the whole run; the prefill (image included) is in its first step
            totals[c][r["category"]].add(decode)
            totals[c]["overall"].add(decode)
        log(f"  {r['category']:9s} {r['image']}: done")
    table = {}
    for c in configs:
        name = "plain (AR)" if c[0] == "none" else label(*c)
        table[name] = {cat: dict(tok_s=round(m.tokens_per_s, 2),
                                 vs_plain=round(m.tokens_per_s / totals[configs[0]][cat].tokens_per_s, 2),
                                 tau=round(m.tau, 2), acceptance=round(m.path_acceptance, 3),
                                 beta1=round(m.beta_by_depth[0], 3) if m.beta_by_depth else None)
                       for cat, m in totals[c].items()}
        table[name]["identical_to_plain"] = identical[c]
    return dict(target=target, max_new_tokens=max_new_tokens, prompts=len(rows), table=table)


def add_parser(sub) -> None:
    p = sub.add_parser("bench-vlm", help="a vision-language target on image prompts: plain vs text-only drafters")
    p.add_argument("--target", required=True, help="a VLM: a hub id (e.g. HuggingFaceTB/SmolVLM-256M-Instruct) "
                                                   "or a local directory")
    p.add_argument("--drafters", default="pld:chain:4,ngram-tree:chain:8,smollm2-135m:chain:4")
    p.add_argument("--prompts", default=str(PROMPTS))
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--json", help="write the results here")
    p.set_defaults(func=cmd)


def cmd(args) -> int:
    from .atomic import atomic_write_text
    from .bench_drafters import parse_configs
    from .machine import cpu_model

    path = Path(args.prompts)
    report = run(args.target, parse_configs(args.drafters), read(path), path.parent, args.max_new_tokens)
    report["machine"], report["date"] = cpu_model(), time.strftime("%Y-%m-%d")
    for name, cats in report["table"].items():
        print(f"{name:24s} " + " · ".join(f"{cat} {v['tok_s']} tok/s ({v['vs_plain']}x, tau {v['tau']}, "
                                           f"beta1 {v['beta1']})" for cat, v in cats.items()
                                           if isinstance(v, dict)) + f" · identical {cats['identical_to_plain']}")
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=1))
    return 0 if all(c["identical_to_plain"] for c in report["table"].values()) else 1
