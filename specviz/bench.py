"""`python -m specviz bench`: AR, speculative and (optionally) transformers' assisted generation
on the same prompts, in one process, interleaved per prompt after a warm-up.

Every figure comes from a run in this process; nothing is remembered between runs.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .api import build_engine
from .engine import Engine, Settings

DEFAULT_PROMPTS = Path(__file__).resolve().parent.parent / "assets" / "prompts.jsonl"


def read_prompts(path: str | os.PathLike | None) -> list[dict]:
    """JSONL lines with 'prompt' (or Spec-Bench 'turns': first turn used) and optional 'category'."""
    path = Path(path) if path else DEFAULT_PROMPTS
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{n}: not valid JSON") from None
        text = row.get("prompt") or (row.get("turns") or [None])[0]
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{path}:{n}: needs a non-empty 'prompt' or 'turns'")
        out.append({"prompt": text, "category": str(row.get("category", "all"))})
    if not out:
        raise ValueError(f"{path}: no prompts")
    return out


@dataclass
class Row:
    """Totals over the prompts of one category."""

    prompts: int = 0
    ar_tokens: int = 0
    ar_s: float = 0.0
    spec_tokens: int = 0
    spec_s: float = 0.0
    hf_tokens: int = 0
    hf_s: float = 0.0
    drafted: int = 0
    accepted: int = 0
    steps: int = 0
    forward_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0
    identical: int = 0
    hf_identical: int = 0
    divergences: list = field(default_factory=list)
    predicted: list = field(default_factory=list)

    def add(self, ar, spec, hf, identical: bool | None, hf_identical: bool | None, divergence):
        self.prompts += 1
        self.ar_tokens += ar.metrics.tokens
        self.ar_s += ar.metrics.elapsed_s
        self.spec_tokens += spec.metrics.tokens
        self.spec_s += spec.metrics.elapsed_s
        self.drafted += spec.metrics.drafted
        self.accepted += spec.metrics.accepted
        self.steps += spec.metrics.steps
        self.forward_s += spec.metrics.forward_s
        self.draft_s += spec.metrics.draft_s
        self.verify_s += spec.metrics.verify_s
        self.predicted.append(spec.metrics.predicted_speedup)
        self.identical += bool(identical)
        if hf is not None:
            self.hf_tokens += hf[0]
            self.hf_s += hf[1]
            self.hf_identical += bool(hf_identical)
        if divergence:
            self.divergences.append(divergence)

    def summary(self, greedy: bool, with_hf: bool) -> dict:
        ar_tps = self.ar_tokens / self.ar_s if self.ar_s else 0.0
        spec_tps = self.spec_tokens / self.spec_s if self.spec_s else 0.0
        out = {
            "prompts": self.prompts,
            "ar_tokens_per_s": ar_tps,
            "spec_tokens_per_s": spec_tps,
            "speedup": spec_tps / ar_tps if ar_tps else 0.0,
            "acceptance_rate": self.accepted / self.drafted if self.drafted else 0.0,
            "mean_accepted_length": self.accepted / self.steps if self.steps else 0.0,
            "tau": self.spec_tokens / self.steps if self.steps else 0.0,
            "predicted_speedup": sum(self.predicted) / len(self.predicted) if self.predicted else 0.0,
            "outside_forward_share": 1 - self.forward_s / self.spec_s if self.spec_s else 0.0,
            # drafter seconds per drafted token / target seconds per verification forward
            "c": (self.draft_s / self.drafted) / (self.verify_s / self.steps) if self.drafted and self.verify_s else 0.0,
            "outputs_identical": (self.identical == self.prompts) if greedy else None,
            "divergences": self.divergences,
        }
        if with_hf:
            hf_tps = self.hf_tokens / self.hf_s if self.hf_s else 0.0
            out["hf_tokens_per_s"] = hf_tps
            out["speedup_vs_hf"] = spec_tps / hf_tps if hf_tps else 0.0
            out["hf_outputs_identical"] = (self.hf_identical == self.prompts) if greedy else None
        return out


def first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


@torch.inference_mode()
def top2_gap(model, ids: list[int]) -> float:
    """Target's logit gap between its two best tokens after `ids` (cache-free forward)."""
    logits = model(torch.tensor([ids], device=next(model.parameters()).device)).logits[0, -1].float()
    top = torch.topk(logits, 2).values
    return float(top[0] - top[1])


def hf_generate(model, prompt_ids, settings: Settings, drafter: str, draft_len: int, assistant) -> tuple[int, float, list[int]]:
    """transformers' own assisted generation on the same pair; returns (tokens, seconds, ids)."""
    kwargs = dict(max_new_tokens=settings.max_new_tokens, do_sample=not settings.warp.greedy,
                  pad_token_id=model.generation_config.pad_token_id)
    if settings.warp.greedy:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k or None)
    if drafter in ("pld", "pld-tree"):  # transformers' prompt lookup drafts a chain
        kwargs["prompt_lookup_num_tokens"] = draft_len
    elif assistant is not None:
        kwargs["assistant_model"] = assistant
        kwargs["num_assistant_tokens"] = draft_len
        kwargs["num_assistant_tokens_schedule"] = "constant"
        kwargs["assistant_confidence_threshold"] = 0.0
    ids = torch.tensor([prompt_ids], device=next(model.parameters()).device)
    torch.manual_seed(settings.seed)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    seconds = time.perf_counter() - start
    new = out[0, len(prompt_ids):].tolist()
    return len(new), seconds, new


def run_bench(a) -> int:
    from tqdm import tqdm

    if a.compare_hf and a.drafter in ("none", "ngram", "ngram-tree"):
        raise ValueError(f"drafter '{a.drafter}' has no counterpart in transformers' assisted generation; "
                         "--compare-hf works with pld, pld-tree and model drafters")
    prompts = read_prompts(a.prompts)
    if a.limit:
        prompts = prompts[: a.limit]
    settings = Settings(a.max_new_tokens, a.temperature, a.top_k, a.top_p, a.seed)
    spec = build_engine(a.target, a.drafter, a.draft_len, a.rule, a.strategy)
    ar = Engine(spec.engine.target.model, spec.engine.decode, None, spec.engine.eos_ids, a.target)
    target_model = spec.engine.target.model
    assistant = getattr(spec.engine.drafter, "lm", None)
    assistant = assistant.model if assistant is not None else None
    greedy = settings.warp.greedy
    encoded = [spec.encode(p["prompt"], a.raw) for p in prompts]

    warm = Settings(8, a.temperature, a.top_k, a.top_p, a.seed)
    ar.run(encoded[0], warm)
    spec.engine.run(encoded[0], warm)
    if a.compare_hf:
        hf_generate(target_model, encoded[0], warm, a.drafter, a.draft_len, assistant)

    rows: dict[str, Row] = defaultdict(Row)
    per_prompt = []
    modes = 3 if a.compare_hf else 2
    bar = tqdm(total=len(prompts) * modes, desc="bench", unit="run", file=sys.stderr)
    for p, ids in zip(prompts, encoded):
        r_ar = ar.run(ids, settings)
        bar.update()
        r_spec = spec.engine.run(ids, settings)
        bar.update()
        hf = None
        if a.compare_hf:
            hf = hf_generate(target_model, ids, settings, a.drafter, a.draft_len, assistant)
            bar.update()
        identical = r_spec.token_ids == r_ar.token_ids if greedy else None
        hf_identical = (hf[2] == r_ar.token_ids) if (greedy and hf) else None
        divergence = None
        if greedy and not identical:
            at = first_divergence(r_ar.token_ids, r_spec.token_ids)
            divergence = {"category": p["category"], "position": at,
                          "top2_logit_gap": top2_gap(target_model, ids + r_ar.token_ids[:at])}
        for cat in (p["category"], "overall"):
            rows[cat].add(r_ar, r_spec, hf, identical, hf_identical, divergence)
        per_prompt.append({"category": p["category"], "ar_tokens_per_s": r_ar.metrics.tokens_per_s,
                           "spec_tokens_per_s": r_spec.metrics.tokens_per_s, "tau": r_spec.metrics.tau,
                           "outputs_identical": identical, "hf_tokens_per_s": hf[0] / hf[1] if hf else None})
    bar.close()
    results = {cat: row.summary(greedy, a.compare_hf) for cat, row in rows.items()}
    config = {k: getattr(a, k) for k in ("target", "drafter", "strategy", "draft_len", "rule", "max_new_tokens",
                                          "temperature", "top_k", "top_p", "seed")}
    config["threads"] = torch.get_num_threads()
    config["device"] = str(spec.engine.target.device)
    print(format_table(results, a.compare_hf))
    if a.json:
        from .trace import atomic_write_text

        atomic_write_text(a.json, json.dumps({"config": config, "results": results, "per_prompt": per_prompt}, indent=2))
        print(f"results written to {a.json}", file=sys.stderr)
    return 0


def format_table(results: dict, with_hf: bool) -> str:
    head = ["category", "n", "AR tok/s", "spec tok/s", "speedup", "accept", "τ", "predicted", "identical"]
    if with_hf:
        head[5:5] = ["HF tok/s", "vs HF"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = sorted(k for k in results if k != "overall") + ["overall"]
    for cat in order:
        r = results[cat]
        ident = {True: "yes", False: f"no ({len(r['divergences'])})", None: "n/a (sampling)"}[r["outputs_identical"]]
        cells = [cat, str(r["prompts"]), f"{r['ar_tokens_per_s']:.1f}", f"{r['spec_tokens_per_s']:.1f}",
                 f"{r['speedup']:.2f}×", f"{r['acceptance_rate']:.2f}", f"{r['tau']:.2f}",
                 f"{r['predicted_speedup']:.2f}×", ident]
        if with_hf:
            cells[5:5] = [f"{r['hf_tokens_per_s']:.1f}", f"{r['speedup_vs_hf']:.2f}×"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_drafter(name: str, strategy: str, nodes: int, target_model, target: str | None = None):
    """A drafter of `strategy` that drafts at most `nodes` nodes per step (equal target budgets)."""
    from .api import MODEL_FREE_DRAFTERS, load_model, make_drafter
    from .drafters.model import ModelDrafter
    from .drafters.strategies import budget_builder

    if strategy in MODEL_FREE_DRAFTERS:  # e.g. pld (a chain) vs pld-tree at the same node budget
        return make_drafter(strategy, target_model, nodes, target=target)
    if name in MODEL_FREE_DRAFTERS:
        raise ValueError(f"drafter '{name}' has no strategy '{strategy}'; for model-free drafters list "
                         f"their names in --strategies (e.g. pld,pld-tree,ngram,ngram-tree)")
    make_drafter(name, target_model, 1)  # the same checks (vocabulary, name) as everywhere else
    return ModelDrafter(load_model(name)[0], budget_builder(strategy, nodes), f"{name} ({strategy}, {nodes} nodes)")


def run_sweep(a) -> int:
    """Fixed-budget comparison (as in the RSD paper): at equal target tokens per forward, tau and
    tokens/s of every strategy, per category, with one AR run per prompt as the reference."""
    from tqdm import tqdm

    prompts = read_prompts(a.prompts)[: a.limit or None]
    budgets = [int(b) for b in a.budgets.split(",")]
    strategies = a.strategies.split(",")
    settings = Settings(a.max_new_tokens, a.temperature, a.top_k, a.top_p, a.seed)
    base = build_engine(a.target, "none")
    model = base.engine.target.model
    engines = {(s, n): Engine(model, base.engine.decode, sweep_drafter(a.drafter, s, n, model, a.target), base.engine.eos_ids,
                              a.target, a.rule)
               for s in strategies for n in budgets}
    encoded = [base.encode(p["prompt"], a.raw) for p in prompts]
    warm = Settings(8, a.temperature, a.top_k, a.top_p, a.seed)
    base.engine.run(encoded[0], warm)
    for e in engines.values():
        e.run(encoded[0], warm)
    cells: dict = defaultdict(lambda: {"tokens": 0, "seconds": 0.0, "steps": 0, "identical": 0, "prompts": 0})
    per_repeat: dict = defaultdict(list)  # (strategy, nodes) -> overall tokens/s of each repeat
    repeats = max(1, getattr(a, "repeats", 1))
    bar = tqdm(total=repeats * len(prompts) * (1 + len(engines)), desc="sweep", unit="run", file=sys.stderr)
    for _ in range(repeats):
        totals: dict = defaultdict(lambda: [0, 0.0])
        for p, ids in zip(prompts, encoded):
            ref = base.engine.run(ids, settings)
            bar.update()
            runs = [("autoregressive", 1, ref)]
            for (s, n), e in engines.items():
                runs.append((s, n, e.run(ids, settings)))
                bar.update()
            for s, n, r in runs:
                totals[(s, n)][0] += r.metrics.tokens
                totals[(s, n)][1] += r.metrics.elapsed_s
                for cat in (p["category"], "overall"):
                    c = cells[(s, n, cat)]
                    c["tokens"] += r.metrics.tokens; c["seconds"] += r.metrics.elapsed_s
                    c["steps"] += r.metrics.steps; c["prompts"] += 1
                    c["identical"] += r.token_ids == ref.token_ids
        for key, (tokens, seconds) in totals.items():
            per_repeat[key].append(tokens / seconds)
    bar.close()
    ar = cells[("autoregressive", 1, "overall")]
    ar_tps = ar["tokens"] / ar["seconds"]
    results = []
    for (s, n, cat), c in cells.items():
        tps = c["tokens"] / c["seconds"] if c["seconds"] else 0.0
        results.append({"strategy": s, "nodes": n, "category": cat, "tau": c["tokens"] / c["steps"],
                        "tokens_per_s": tps, "prompts": c["prompts"],
                        "tokens_per_s_by_repeat": per_repeat[(s, n)] if cat == "overall" else None,
                        "outputs_identical": (c["identical"] == c["prompts"]) if settings.warp.greedy else None})
    overall = {(r["strategy"], r["nodes"]): r for r in results if r["category"] == "overall"}
    head = "| strategy | " + " | ".join(f"{n} nodes: τ / tok/s" for n in budgets) + " |"
    def spread(key) -> str:  # the range over repeats, when there are several
        runs = per_repeat[key]
        return f" ({min(runs):.1f}–{max(runs):.1f})" if len(runs) > 1 else ""

    lines = [head, "|" + "---|" * (len(budgets) + 1), f"| autoregressive | " + " | ".join(
        f"1.00 / {ar_tps:.1f}{spread(('autoregressive', 1))}" for _ in budgets) + " |"]
    for s in strategies:
        row = [f"{overall[(s, n)]['tau']:.2f} / {overall[(s, n)]['tokens_per_s']:.1f}{spread((s, n))}"
               + ("" if overall[(s, n)]["outputs_identical"] in (True, None) else " (≠AR)") for n in budgets]
        lines.append(f"| {s} | " + " | ".join(row) + " |")
    print("\n".join(lines))
    if a.json:
        from .trace import atomic_write_text

        atomic_write_text(a.json, json.dumps({"config": vars(a) | {"func": None}, "results": results}, indent=2,
                                             default=str))
        print(f"results written to {a.json}", file=sys.stderr)
    return 0
