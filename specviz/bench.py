"""`python -m specviz bench`: AR, speculative and (optionally) transformers' assisted generation
on the same prompts, in one process, interleaved per prompt after a warm-up.

Every figure comes from a run in this process; nothing is remembered between runs.
"""
from __future__ import annotations

import copy
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace

import torch

from .api import build
from .drafters.registry import DRAFTERS, DraftRequest, drafter_entry, make_drafter
from .engine import Engine, Settings
from .metrics import Metrics
from .prompts import DEFAULT_PROMPTS, read_prompts  # noqa: F401  (read_prompts: the bench's prompt files)

@dataclass
class Row:
    """Totals over the prompts of one category: the runs' Metrics added up (metrics.py defines
    every figure once), plus what only the bench knows (transformers' runs, output identity)."""

    prompts: int = 0
    ar: Metrics = field(default_factory=Metrics)
    spec: Metrics = field(default_factory=Metrics)
    hf_tokens: int = 0
    hf_s: float = 0.0
    hf_ar_tokens: int = 0
    hf_ar_s: float = 0.0
    identical: int = 0
    hf_identical: int = 0
    divergences: list = field(default_factory=list)
    predicted: list = field(default_factory=list)
    seq: Metrics = field(default_factory=Metrics)  # with --parallel: the same drafter run sequentially
    seq_identical: int = 0

    def add(self, ar, spec, hf, hf_ar, identical: bool | None, hf_identical: bool | None, divergence, seq=None):
        self.prompts += 1
        self.ar.add(ar.metrics)
        self.spec.add(spec.metrics)
        if seq is not None:
            self.seq.add(seq.metrics)
            self.seq_identical += seq.token_ids == ar.token_ids
        self.predicted.append(spec.metrics.predicted_speedup)
        self.identical += bool(identical)
        if hf is not None:
            self.hf_tokens += hf[0]
            self.hf_s += hf[1]
            self.hf_identical += bool(hf_identical)
        if hf_ar is not None:
            self.hf_ar_tokens += hf_ar[0]
            self.hf_ar_s += hf_ar[1]
        if divergence:
            self.divergences.append(divergence)

    def summary(self, greedy: bool, with_hf: bool) -> dict:
        ar_tps, spec_tps = self.ar.tokens_per_s, self.spec.tokens_per_s
        m = self.spec
        out = {
            "prompts": self.prompts,
            "ar_tokens_per_s": ar_tps,
            "spec_tokens_per_s": spec_tps,
            "speedup": spec_tps / ar_tps if ar_tps else 0.0,
            "acceptance_rate": m.acceptance_rate,  # per drafted node (a tree's siblings count)
            "path_acceptance": m.path_acceptance,  # accepted / checked positions on the verified path
            "mean_accepted_length": m.mean_accepted_length,
            "tau": m.tau,
            "beta_by_depth": m.beta_by_depth,
            "alpha": m.alpha,
            "predicted_speedup": sum(self.predicted) / len(self.predicted) if self.predicted else 0.0,
            "outside_forward_share": m.outside_forward_share,
            "c": m.c,  # drafter seconds per drafted token / target seconds per verification forward
            "verify_cost_ratio": m.verify_cost_ratio,  # a forward that verified drafts / a one-token forward
            "mean_verified_positions": m.mean_verified_positions,
            "wasted_forwards": m.wasted_forwards,
            "outputs_identical": (self.identical == self.prompts) if greedy else None,
            "divergences": self.divergences,
        }
        if self.seq.steps:  # --parallel: spec is the parallel run, seq the sequential one
            seq_tps = self.seq.tokens_per_s
            out["sequential_tokens_per_s"] = seq_tps
            out["parallel_vs_sequential"] = spec_tps / seq_tps if seq_tps else 0.0
            out["sequential_tau"] = self.seq.tau
            out["sequential_outputs_identical"] = (self.seq_identical == self.prompts) if greedy else None
        if with_hf:
            hf_tps = self.hf_tokens / self.hf_s if self.hf_s else 0.0
            hf_ar_tps = self.hf_ar_tokens / self.hf_ar_s if self.hf_ar_s else 0.0
            out["hf_tokens_per_s"] = hf_tps
            out["speedup_vs_hf"] = spec_tps / hf_tps if hf_tps else 0.0
            out["hf_ar_tokens_per_s"] = hf_ar_tps  # transformers' own plain generate()
            out["ar_vs_hf_ar"] = ar_tps / hf_ar_tps if hf_ar_tps else 0.0
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


def hf_generate(model, prompt_ids, settings: Settings, assisted: dict) -> tuple[int, float, list[int]]:
    """transformers' own generate() on the same prompt: `assisted` holds its assisted-generation
    kwargs (the drafter entry's `hf`), {} for its plain autoregressive decoding. (tokens, s, ids)"""
    kwargs = dict(max_new_tokens=settings.max_new_tokens, do_sample=not settings.warp.greedy,
                  pad_token_id=model.generation_config.pad_token_id, **assisted)
    if settings.warp.greedy:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k or None)
    ids = torch.tensor([prompt_ids], device=next(model.parameters()).device)
    torch.manual_seed(settings.seed)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    seconds = time.perf_counter() - start
    new = out[0, len(prompt_ids):].tolist()
    return len(new), seconds, new


def run_bench(a, config) -> int:
    """AR vs the configured speculative run (a RunConfig) on the prompt set; `a` holds the bench options."""
    from tqdm import tqdm

    entry = drafter_entry(a.drafter)
    if a.compare_hf and entry.hf is None:
        raise ValueError(f"drafter '{a.drafter}' has no counterpart in transformers' assisted generation; "
                         f"--compare-hf works with {', '.join(e.name for e in DRAFTERS.entries() if e.hf)} "
                         "and model drafters")
    prompts = read_prompts(a.prompts)
    if a.limit:
        prompts = prompts[: a.limit]
    settings = config.settings
    spec = build(config)
    seq = build(replace(config, parallel=False)) if config.parallel else None  # parallel vs sequential too
    ar = Engine(spec.engine.target.model, spec.engine.decode, None, spec.engine.eos_ids, a.target,
                fast_path=spec.engine.target.fast_path)
    target_model = spec.engine.target.model
    assisted = entry.hf(config.draft_len, spec.engine.drafter) if a.compare_hf else {}
    greedy = settings.warp.greedy
    encoded = [spec.encode(p["prompt"]) for p in prompts]

    warm = Settings(8, a.temperature, a.top_k, a.top_p, a.seed)
    ar.run(encoded[0], warm)
    spec.engine.run(encoded[0], warm)
    if seq is not None:
        seq.engine.run(encoded[0], warm)
    if a.compare_hf:
        hf_generate(target_model, encoded[0], warm, assisted)
        hf_generate(target_model, encoded[0], warm, {})

    rows: dict[str, Row] = defaultdict(Row)
    per_prompt = []
    modes = (4 if a.compare_hf else 2) + (seq is not None)
    bar = tqdm(total=len(prompts) * modes, desc="bench", unit="run", file=sys.stderr)
    for p, ids in zip(prompts, encoded):
        r_ar = ar.run(ids, settings)
        bar.update()
        r_seq = seq.engine.run(ids, settings) if seq is not None else None
        bar.update(seq is not None)
        r_spec = spec.engine.run(ids, settings)
        bar.update()
        hf = hf_ar = None
        if a.compare_hf:
            hf = hf_generate(target_model, ids, settings, assisted)
            bar.update()
            hf_ar = hf_generate(target_model, ids, settings, {})
            bar.update()
        identical = r_spec.token_ids == r_ar.token_ids if greedy else None
        hf_identical = (hf[2] == r_ar.token_ids) if (greedy and hf) else None
        divergence = None
        if greedy and not identical:
            at = first_divergence(r_ar.token_ids, r_spec.token_ids)
            divergence = {"category": p["category"], "position": at,
                          "top2_logit_gap": top2_gap(target_model, ids + r_ar.token_ids[:at])}
        for cat in (p["category"], "overall"):
            rows[cat].add(r_ar, r_spec, hf, hf_ar, identical, hf_identical, divergence, r_seq)
        per_prompt.append({"category": p["category"], "ar_tokens_per_s": r_ar.metrics.tokens_per_s,
                           "spec_tokens_per_s": r_spec.metrics.tokens_per_s, "tau": r_spec.metrics.tau,
                           "sequential_tokens_per_s": r_seq.metrics.tokens_per_s if r_seq else None,
                           "outputs_identical": identical, "hf_tokens_per_s": hf[0] / hf[1] if hf else None})
    bar.close()
    results = {cat: row.summary(greedy, a.compare_hf) for cat, row in rows.items()}
    recorded = spec.config.as_dict() | {"threads": torch.get_num_threads(), "device": str(spec.engine.target.device),
                                        "parallel_threads": getattr(spec.engine, "threads", None)}
    print(format_table(results, a.compare_hf))
    if a.json:  # the machine's cost curve next to the results it explains (a few seconds)
        from .profile import profile

        recorded["profile"] = profile(target_model, paths=("fast" if spec.config.fast_path is not False else "plain",),
                                      sizes=(1, 2, 4, 8, 9, 16), repeats=3, breakdown_steps=0)
        from .trace import atomic_write_text

        atomic_write_text(a.json, json.dumps({"config": recorded, "results": results, "per_prompt": per_prompt},
                                             indent=2))
        print(f"results written to {a.json}", file=sys.stderr)
    return 0


def format_table(results: dict, with_hf: bool) -> str:
    head = ["category", "n", "AR tok/s", "spec tok/s", "speedup", "accept (path)", "τ", "c", "verify cost",
            "predicted (chain formula)", "identical"]
    with_seq = "sequential_tokens_per_s" in results.get("overall", {})
    if with_hf:
        head[5:5] = ["HF AR tok/s", "HF tok/s", "vs HF"]
    if with_seq:  # spec is the parallel run
        head[3:5] = ["seq tok/s", "parallel tok/s", "speedup", "vs seq"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = sorted(k for k in results if k != "overall") + ["overall"]
    for cat in order:
        r = results[cat]
        ident = {True: "yes", False: f"no ({len(r['divergences'])})", None: "n/a (sampling)"}[r["outputs_identical"]]
        cells = [cat, str(r["prompts"]), f"{r['ar_tokens_per_s']:.1f}", f"{r['spec_tokens_per_s']:.1f}",
                 f"{r['speedup']:.2f}×", f"{r['path_acceptance']:.2f}", f"{r['tau']:.2f}", f"{r['c']:.3f}",
                 f"{r['verify_cost_ratio']:.2f}×" if r["verify_cost_ratio"] else "–", f"{r['predicted_speedup']:.2f}×",
                 ident]
        if with_hf:
            cells[5:5] = [f"{r['hf_ar_tokens_per_s']:.1f}", f"{r['hf_tokens_per_s']:.1f}", f"{r['speedup_vs_hf']:.2f}×"]
        if with_seq:
            cells[3:3] = [f"{r['sequential_tokens_per_s']:.1f}"]
            cells[6:6] = [f"{r['parallel_vs_sequential']:.2f}×"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_drafter(name: str, strategy: str, nodes: int, target_model, target: str | None = None):
    """A drafter of `strategy` that drafts at most `nodes` nodes per step (equal target budgets).
    `strategy` is a registered drafter (pld vs pld-tree, ...) or a shape of the model drafter `name`."""
    from .drafters.strategies import STRATEGIES, budget_builder

    if strategy in DRAFTERS:  # e.g. pld (a chain) vs pld-tree at the same node budget
        return make_drafter(DraftRequest(strategy, target_model, target, nodes, "chain"))
    if not drafter_entry(name).takes_shape:
        raise ValueError(f"drafter '{name}' has no strategy '{strategy}'; list registered drafters in "
                         f"--strategies ({', '.join(DRAFTERS)}) or shapes of a model drafter ({', '.join(STRATEGIES)})")
    base = make_drafter(DraftRequest(name, target_model, target, 1, "chain"))  # the usual checks (vocabulary)
    # The same drafter (its weights, readout and caches: a small LM, a feature head, a distilled LM) with
    # another shape; a shallow copy is enough because sweep runs are sequential.
    shaped = copy.copy(base)
    shaped.builder = budget_builder(strategy, nodes)
    shaped.name = f"{name} ({strategy}, {nodes} nodes)"
    shaped.greedy_only = STRATEGIES.get(strategy).greedy_only
    return shaped


def runs_in(cat: str, prompts: list[dict], repeats: int) -> int:
    """How many runs went into a sweep cell: the category's prompts times the repeats."""
    return repeats * sum(1 for p in prompts if cat in ("overall", p["category"]))


def run_sweep(a, config) -> int:
    """Fixed-budget comparison (as in the RSD paper): at equal target tokens per forward, tau and
    tokens/s of every strategy (x every stopping rule in --stops), per category, with one AR run per
    prompt as the reference."""
    from tqdm import tqdm

    from .stop_rules import make_stop_rule

    prompts = read_prompts(a.prompts)[: a.limit or None]
    budgets = [int(b) for b in a.budgets.split(",")]
    stops = (a.stops or a.stop).split(",")
    settings = config.settings
    if config.parallel:
        raise ValueError("--parallel compares with AR and the sequential run without --budgets; the sweep is sequential")
    base = build(replace(config, drafter="none"))  # the AR reference; its model serves every drafter below
    model = base.engine.target.model
    labels = {(s, stop): s if len(stops) == 1 and stop == "static" else f"{s} · {stop}"
              for s in a.strategies.split(",") for stop in stops}
    strategies = list(labels.values())

    def engine(s: str, stop: str, n: int) -> Engine:
        # a static length is the budget builder's own; other rules get the budget as their limit
        rule = None if stop == "static" else make_stop_rule(stop, n, config.stop_params if stop == a.stop else None)
        return Engine(model, base.engine.decode, sweep_drafter(a.drafter, s, n, model, a.target), base.engine.eos_ids,
                      a.target, a.rule, stop=rule, fast_path=base.engine.target.fast_path)

    engines = {(label, n): engine(s, stop, n) for (s, stop), label in labels.items() for n in budgets}
    encoded = [base.encode(p["prompt"]) for p in prompts]
    warm = Settings(8, a.temperature, a.top_k, a.top_p, a.seed)
    base.engine.run(encoded[0], warm)
    for e in engines.values():
        e.run(encoded[0], warm)
    cells: dict = defaultdict(Metrics)  # (strategy, nodes, category) -> the runs' metrics added up
    identical: dict = defaultdict(int)
    per_repeat: dict = defaultdict(list)  # (strategy, nodes) -> overall tokens/s of each repeat
    repeats = max(1, getattr(a, "repeats", 1))
    bar = tqdm(total=repeats * len(prompts) * (1 + len(engines)), desc="sweep", unit="run", file=sys.stderr)
    for _ in range(repeats):
        totals: dict = defaultdict(Metrics)
        for p, ids in zip(prompts, encoded):
            ref = base.engine.run(ids, settings)
            bar.update()
            runs = [("autoregressive", 1, ref)]
            for (s, n), e in engines.items():
                runs.append((s, n, e.run(ids, settings)))
                bar.update()
            for s, n, r in runs:
                totals[(s, n)].add(r.metrics)
                for cat in (p["category"], "overall"):
                    cells[(s, n, cat)].add(r.metrics)
                    identical[(s, n, cat)] += r.token_ids == ref.token_ids
        for key, m in totals.items():
            per_repeat[key].append(m.tokens_per_s)
    bar.close()
    ar_tps = cells[("autoregressive", 1, "overall")].tokens_per_s
    results = []
    for (s, n, cat), m in cells.items():
        prompts_run = runs_in(cat, prompts, repeats)
        results.append({"strategy": s, "nodes": n, "category": cat, "tau": m.tau, "tokens_per_s": m.tokens_per_s,
                        "speedup": m.tokens_per_s / ar_tps if ar_tps else 0.0, "prompts": prompts_run,
                        "acceptance_rate": m.acceptance_rate, "c": m.c, "beta_by_depth": m.beta_by_depth,
                        "wasted_draft_tokens": m.drafted - m.accepted, "wasted_forwards": m.wasted_forwards,
                        "mean_draft_length": m.mean_draft_length,
                        "tokens_per_s_by_repeat": per_repeat[(s, n)] if cat == "overall" else None,
                        "outputs_identical": (identical[(s, n, cat)] == prompts_run) if settings.warp.greedy
                        else None})
    overall = {(r["strategy"], r["nodes"]): r for r in results if r["category"] == "overall"}
    wasted = len(stops) > 1 or stops != ["static"]  # stopping rules compared: show what drafting wasted
    cell = "τ / tok/s / wasted drafts" if wasted else "τ / tok/s"
    head = "| strategy | " + " | ".join(f"{n} nodes: {cell}" for n in budgets) + " |"
    def spread(key) -> str:  # the range over repeats, when there are several
        runs = per_repeat[key]
        return f" ({min(runs):.1f}–{max(runs):.1f})" if len(runs) > 1 else ""

    ar_cell = f"1.00 / {ar_tps:.1f}{spread(('autoregressive', 1))}" + (" / 0" if wasted else "")
    lines = [head, "|" + "---|" * (len(budgets) + 1), "| autoregressive | " + " | ".join(
        ar_cell for _ in budgets) + " |"]
    for s in strategies:
        row = [f"{overall[(s, n)]['tau']:.2f} / {overall[(s, n)]['tokens_per_s']:.1f}{spread((s, n))}"
               + (f" / {overall[(s, n)]['wasted_draft_tokens']} (+{overall[(s, n)]['wasted_forwards']} fwd)"
                  if wasted else "")
               + ("" if overall[(s, n)]["outputs_identical"] in (True, None) else " (≠AR)") for n in budgets]
        lines.append(f"| {s} | " + " | ".join(row) + " |")
    print("\n".join(lines))
    if a.json:
        from .trace import atomic_write_text

        atomic_write_text(a.json, json.dumps({"config": vars(a) | {"func": None}, "results": results}, indent=2,
                                             default=str))
        print(f"results written to {a.json}", file=sys.stderr)
    return 0
