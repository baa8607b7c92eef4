"""`python -m specviz bench --drafters pld:chain:8,eagle3:chain:4,...`: several drafter configurations
against AR, side by side in one process.

Per prompt, plain decoding runs once and then every configuration, in the same order, so a slow spell
of a shared machine hits them all alike; speed is reported as a ratio to the AR runs of the same
prompts. Per configuration and category: speedup, tau, beta by depth (the first draft token's
agreement is beta_1), the drafter's cost c per step relative to a target forward, and whether every
greedy output equals AR's.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from dataclasses import replace

import torch

from .api import build
from .engine import Engine
from .events import Drafted
from .metrics import Metrics
from .prompts import read_prompts
from .stop_rules import MERGED_ALONE


ORACLE = "oracle (best fixed arm per prompt)"


def parse_configs(text: str) -> list[tuple[str, str, int]]:
    """"name[:shape[:length]]" items, comma-separated -> (drafter, shape, draft length)."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        parts = item.split(":")
        if len(parts) > 3:
            raise ValueError(f"'{item}': expected drafter[:shape[:length]]")
        name = parts[0]
        shape = parts[1] if len(parts) > 1 and parts[1] else "chain"
        try:
            length = int(parts[2]) if len(parts) > 2 else 4
        except ValueError:
            raise ValueError(f"'{item}': the draft length must be a whole number") from None
        out.append((name, shape, length))
    if not out:
        raise ValueError("--drafters names no configuration")
    return out


def plain_engine(spec) -> Engine:
    """Plain decoding on the same target (and the same fast-path choice) as a built TextEngine."""
    e = spec.engine
    return Engine(e.target.model, e.decode, None, e.eos_ids, e.target_name, fast_path=e.target.fast_path)


def label(name: str, shape: str, length: int) -> str:
    return f"{name}:{shape}:{length}"


def run_drafters(a, config) -> int:
    from tqdm import tqdm

    configs = parse_configs(a.drafters)
    prompts = read_prompts(a.prompts)
    if a.limit:
        prompts = prompts[: a.limit]
    settings = config.settings
    greedy = settings.warp.greedy
    engines = {label(*c): build(replace(config, drafter=c[0], shape=c[1], draft_len=c[2])) for c in configs}
    first = next(iter(engines.values()))
    target = first.engine.target
    ar = plain_engine(first)
    encoded = [first.encode(p["prompt"]) for p in prompts]
    warm = replace(settings, max_new_tokens=8)
    ar.run(encoded[0], warm)
    for spec in engines.values():
        spec.engine.run(encoded[0], warm)
    ar_m: dict[str, Metrics] = defaultdict(Metrics)
    spec_m: dict[tuple[str, str], Metrics] = defaultdict(Metrics)
    identical: dict[tuple[str, str], list[bool]] = defaultdict(list)
    diverged: dict[str, list[dict]] = defaultdict(list)  # where greedy text left AR's, and how close the tie was
    grafted: dict[tuple[str, str], int] = defaultdict(int)  # merged trees: accepted drafts only the graft proposed
    alone: dict[tuple[str, str], int] = defaultdict(int)  # merged trees: steps the second drafter drafted alone
    merged = {name for name, spec in engines.items() if hasattr(spec.engine.drafter, "grafted_accepted")}
    oracle = getattr(a, "oracle", False)
    if oracle and not greedy:
        raise ValueError("--oracle compares arms that write the same text: use temperature 0")
    bar = tqdm(total=len(prompts) * (1 + len(engines)), desc="bench drafters", unit="run", file=sys.stderr)
    for p, ids in zip(prompts, encoded):
        r_ar = ar.run(ids, settings)
        bar.update()
        for cat in (p["category"], "overall"):
            ar_m[cat].add(r_ar.metrics)
        fixed = [r_ar.metrics]  # what each fixed arm (AR included) did on this prompt, for the oracle
        for name, spec in engines.items():
            r = spec.engine.run(ids, settings)
            bar.update()
            for cat in (p["category"], "overall"):
                spec_m[name, cat].add(r.metrics)
                identical[name, cat].append(r.token_ids == r_ar.token_ids)
                if name in merged:
                    grafted[name, cat] += spec.engine.drafter.grafted_accepted
                    alone[name, cat] += sum(isinstance(e, Drafted) and bool(e.stop)
                                            and e.stop.get("rule") == MERGED_ALONE for e in r.events)
            if greedy and r.token_ids != r_ar.token_ids:
                from .bench import first_divergence, top2_gap

                at = first_divergence(r_ar.token_ids, r.token_ids)
                diverged[name].append({"category": p["category"], "position": at,
                                       "top2_logit_gap": top2_gap(target.model, ids + r_ar.token_ids[:at])})
            if not name.startswith("auto"):
                fixed.append(r.metrics)
        if oracle:  # the best fixed arm of this prompt in hindsight (greedy: every arm writes the same tokens)
            best = max(fixed, key=lambda m: m.tokens_per_s)
            for cat in (p["category"], "overall"):
                spec_m[ORACLE, cat].add(best)
                identical[ORACLE, cat].append(True)
    bar.close()
    results = {}
    for (name, cat), m in spec_m.items():
        base = ar_m[cat]
        results.setdefault(name, {})[cat] = {
            "prompts": len(identical[name, cat]), "ar_tokens_per_s": base.tokens_per_s,
            "tokens_per_s": m.tokens_per_s, "speedup": m.tokens_per_s / base.tokens_per_s if base.tokens_per_s else 0.0,
            "tau": m.tau, "beta_by_depth": m.beta_by_depth, "c": m.c, "path_acceptance": m.path_acceptance,
            "identical": all(identical[name, cat]) if greedy else None,
            "identical_count": sum(identical[name, cat]) if greedy else None,
            "divergences": [d for d in diverged[name] if cat in ("overall", d["category"])]}
        if name in merged:
            results[name][cat]["grafted_share"] = grafted[name, cat] / m.accepted if m.accepted else 0.0
            results[name][cat]["alone_share"] = alone[name, cat] / m.steps if m.steps else 0.0
    print(format_table(results))
    if a.json:
        from .atomic import atomic_write_text

        recorded = config.as_dict() | {"drafters": a.drafters, "prompts": a.prompts or "default",
                                       "threads": torch.get_num_threads(), "device": str(target.device)}
        atomic_write_text(a.json, json.dumps({"config": recorded, "results": results}, indent=2))
        print(f"results written to {a.json}", file=sys.stderr)
    return 0


def format_table(results: dict) -> str:
    head = ["drafter", "category", "n", "AR tok/s", "tok/s", "speedup", "τ", "β1", "β2", "β3", "β4", "c", "identical"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, by_cat in results.items():
        for cat in sorted(k for k in by_cat if k != "overall") + ["overall"]:
            r = by_cat[cat]
            betas = [f"{b:.2f}" for b in r["beta_by_depth"][:4]] + ["–"] * (4 - min(4, len(r["beta_by_depth"])))
            ident = "n/a" if r["identical"] is None else ("yes" if r["identical"] else f"{r['identical_count']}/{r['prompts']}")
            if r.get("divergences"):
                ident += f" (top-2 gap ≤ {max(d['top2_logit_gap'] for d in r['divergences']):.2f})"
            if "grafted_share" in r:  # a merged tree: how much of what was accepted only the graft proposed
                ident += f"; graft {r['grafted_share']:.0%} of accepted"
            if "alone_share" in r:  # ... and how often it switched to the second drafter alone for a step
                ident += f", alone {r['alone_share']:.0%} of steps"
            lines.append("| " + " | ".join([name, cat, str(r["prompts"]), f"{r['ar_tokens_per_s']:.1f}",
                                            f"{r['tokens_per_s']:.1f}", f"{r['speedup']:.2f}×", f"{r['tau']:.2f}",
                                            *betas, f"{r['c']:.3f}", ident]) + " |")
    return "\n".join(lines)
