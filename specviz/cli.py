"""Command line: generate (colored streaming), models, fetch, bench, replay, collect and train-policy."""
from __future__ import annotations

import argparse
import os
import sys

from .events import Emitted, RunFinished, StepStarted, Verified

# ANSI styles per token origin: the same legend as the app.
STYLE = {"accepted": "\033[32m", "resampled": "\033[33m", "bonus": "\033[36m", "target": "", "rejected": "\033[9;2;31m"}
RESET = "\033[0m"
LEGEND = "green = accepted draft, yellow = resampled after a rejection, cyan = bonus, plain = target only"


def _add_decoding_args(p: argparse.ArgumentParser) -> None:
    """The RunConfig's fields as options; choices and help come from the registries."""
    from .drafters.registry import DRAFTERS
    from .drafters.strategies import STRATEGIES
    from .rules import VERIFY_RULES
    from .stop_rules import STOP_RULES

    rules = ", ".join(f"{e.name}{'' if e.lossless else ' (LOSSY)'}" for e in VERIFY_RULES.entries())
    stops = "; ".join(f"{e.name}: " + (", ".join(f"{q.name}={q.default:g}" for q in e.params) or "no parameters")
                      for e in STOP_RULES.entries())
    p.add_argument("--target", default="smollm2-135m", help="preset name, local directory or hub id")
    p.add_argument("--drafter", default="pld", help=f"one of {', '.join(DRAFTERS)}, or a model "
                   "(preset, directory, hub id) with the target's vocabulary")
    p.add_argument("--strategy", "--shape", dest="strategy", default="chain",
                   help=f"how a model drafter shapes its proposal: {', '.join(STRATEGIES)}")
    p.add_argument("--draft-len", type=int, default=4, help="draft length (tree depth for tree shapes)")
    p.add_argument("--rule", default=None, help=f"verification rule: {rules}; default: greedy at temperature 0, "
                   "else sampling (both lossless)")
    p.add_argument("--stop", default="static", help=f"stopping rule ({stops})")
    p.add_argument("--stop-param", action="append", default=[], metavar="NAME=VALUE",
                   help="a stopping rule parameter (repeatable)")
    p.add_argument("--no-fast-path", action="store_true", help="plain transformers forwards (for comparison)")
    p.add_argument("--parallel", action="store_true", help="PEARL: drafter and target run at the same time, each "
                   "on its share of the cores (a model drafter, chain shape)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw", action="store_true", help="no chat template")
    p.add_argument("--dtype", default="float32", help="the target's weights and compute: float32 (default), bfloat16 "
                   "(packed, ~1.4x faster on a CPU with native bf16; greedy text may leave AR's at bf16 near-ties, so "
                   "lossless only up to bf16 rounding), or float64 (a check: every drafter tensor that meets the "
                   "target's follows it)")


def _settings(a):
    from .engine import Settings

    return Settings(a.max_new_tokens, a.temperature, a.top_k, a.top_p, a.seed)


def run_config(a, drafter: str | None = None):
    """The RunConfig the decoding options describe (validated when the engine is built)."""
    import torch

    from .config import RunConfig
    from .machine import native_bf16

    params = {}
    for item in a.stop_param:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--stop-param takes NAME=VALUE, got {item!r}")
        params[name.strip()] = value.strip()
    if a.dtype == "bfloat16" and not native_bf16() and not torch.cuda.is_available():
        print("specviz: note: this CPU has no native bf16 (AVX512_BF16 or AMX): bfloat16 is emulated here and "
              "usually slower than float32", file=sys.stderr)
    return RunConfig(a.target, a.drafter if drafter is None else drafter, a.strategy, a.draft_len, a.rule or "auto",
                     a.stop, params, _settings(a), not a.no_fast_path, a.raw, parallel=a.parallel, dtype=a.dtype)


def cmd_generate(a) -> int:
    from . import trace
    from .api import build

    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR") or a.color
    engine = build(run_config(a))
    if engine.config.lossy:
        print(f"note: rule '{a.rule}' is LOSSY: its output distribution is not the target's", file=sys.stderr)
    events = []
    if color:
        print(LEGEND + (" , red strike = rejected draft" if a.show_rejected else ""), file=sys.stderr)
    if a.image:
        from .vlm import VisionEngine

        if not isinstance(engine, VisionEngine):
            raise ValueError(f"--image needs a vision-language target; '{a.target}' is text-only")
        try:
            from PIL import Image

            image = Image.open(a.image).convert("RGB")
        except (OSError, ValueError) as err:  # PIL's UnidentifiedImageError is an OSError
            raise ValueError(f"cannot read the image {a.image!r}: {str(err).splitlines()[0]}") from None
        stream = engine.stream_image(a.prompt, image)
    else:
        stream = engine.stream_text(a.prompt)
    for ev in stream:
        events.append(ev)
        if isinstance(ev, StepStarted) and ev.choice:  # an `auto` run (re)decided which drafter drafts
            print(f"\n[auto, step {ev.step}] {ev.choice['arm']}: {ev.choice.get('reason', '')}", file=sys.stderr)
        if isinstance(ev, Verified) and a.show_rejected and color:
            for node in ev.nodes:
                if node.status == "rejected":
                    sys.stdout.write(f"{STYLE['rejected']}{node.text}{RESET}")
        if isinstance(ev, Emitted):
            for tok in ev.tokens:
                sys.stdout.write(f"{STYLE[tok.kind]}{tok.text}{RESET}" if color and STYLE[tok.kind] else tok.text)
            sys.stdout.flush()
        if isinstance(ev, RunFinished):
            print()
            print(format_metrics(ev.metrics), file=sys.stderr)
    if a.trace:
        print(f"trace written to {trace.save(events, a.trace)}", file=sys.stderr)
    return 0


def format_metrics(m) -> str:
    return (f"{m.tokens} tokens in {m.elapsed_s:.2f} s = {m.tokens_per_s:.1f} tok/s | target forwards {m.steps} | "
            f"tau {m.tau:.2f} | acceptance per step {m.path_acceptance:.2f} (per drafted node {m.acceptance_rate:.2f}) | "
            f"alpha {m.alpha:.2f} | c {m.c:.3f} | draft {m.draft_s:.2f}s verify {m.verify_s:.2f}s "
            f"overhead {m.overhead_s:.2f}s")


def cmd_models(a) -> int:
    from . import models
    from .drafters.registry import DRAFTERS
    from .drafters.strategies import STRATEGIES
    from .rules import VERIFY_RULES
    from .stop_rules import STOP_RULES

    print("model presets (target or drafter):")
    for name, p in sorted(models.PRESETS.items(), key=lambda kv: models.status(kv[0]) != "ready"):
        print(f"  {name:22s} {models.status(name):14s} {p.hub_id}")
    print("drafters (any model preset above also drafts, in every shape):")
    for e in DRAFTERS.entries():
        print(f"  {e.name:22s} [{e.kind}] {e.label}: {e.about}" + (" (greedy only)" if e.greedy_only else ""))
    print("draft shapes (strategies) for model drafters:")
    for e in STRATEGIES.entries():
        print(f"  {e.name:22s} {e.label}")
    print("verification rules:")
    for e in VERIFY_RULES.entries():
        print(f"  {e.name:22s} {'lossless' if e.lossless else 'LOSSY: accepts more than the target would sample'}"
              f" ({e.label})")
    print("stopping rules:")
    for e in STOP_RULES.entries():
        params = ", ".join(f"{q.name}={q.default:g} in [{q.lo:g}, {q.hi:g}]" for q in e.params)
        print(f"  {e.name:22s} {e.label}" + (f"; parameters: {params}" if params else ""))
    return 0


def cmd_fetch(a) -> int:
    from . import models

    for name in a.names:
        path = models.convert(name) if not a.gguf_only else models.fetch(name)
        print(f"{name}: {path}")
    return 0


def cmd_bench(a) -> int:
    from .bench import run_bench, run_sweep

    if a.drafters:
        from .bench_drafters import run_drafters

        return run_drafters(a, run_config(a))
    return run_sweep(a, run_config(a)) if a.budgets else run_bench(a, run_config(a))


def cmd_check_device(a) -> int:
    from .device_check import run_check

    return run_check(a, run_config(a))


def cmd_check_lossless(a) -> int:
    """One line per frequent sequence (exact probability, plain and speculative frequencies), then the
    tests and the verdict in a sentence; exit status 1 when the speculative side fails."""
    from tqdm import tqdm

    from .lossless_check import CheckResult, check_config

    if not 1 <= a.k <= 3:
        raise ValueError(f"--k must be 1 to 3, got {a.k}")
    if not 10 <= a.samples <= 20_000:
        raise ValueError(f"--samples must be 10 to 20000, got {a.samples}")
    bar, result = None, None
    for item in check_config(run_config(a), a.prompt, a.k, a.samples, a.broken):
        if isinstance(item, CheckResult):
            result = item
        else:
            if bar is None or bar.desc != item.phase:
                if bar is not None:
                    bar.close()
                bar = tqdm(total=item.total, desc=item.phase, unit="run", file=sys.stderr)
            bar.n = item.done
            bar.refresh()
    if bar is not None:
        bar.close()
    r = result
    print("| sequence | exact | plain | speculative |\n|---|---|---|---|")
    for seq, prob in sorted(r.cells.items(), key=lambda kv: -kv[1])[: a.top]:
        print(f"| {r.labels.get(seq, str(seq))!r} | {prob:.3f} | {r.plain.counts[seq] / r.n:.3f} | "
              f"{r.speculative.counts[seq] / r.n:.3f} |")
    for side in (r.plain, r.speculative):
        print(f"{side.name}: chi-square {side.chi2:.1f} on {side.df} df, p = {side.pvalue:.3g}, TV {side.tv:.3f} "
              f"(noise floor {r.noise[0]:.3f}, 95th percentile {r.noise[1]:.3f})")
    print(r.sentence())
    return 0 if r.passed else 1


def cmd_corpus(a) -> int:
    from tqdm import tqdm

    from . import record_corpus

    path = record_corpus.build(a.target, a.max_new_tokens, a.limit, a.out,
                        progress=lambda rows: tqdm(rows, desc="corpus", unit="prompt", file=sys.stderr))
    print(f"corpus written to {path}")
    return 0


def cmd_replay(a) -> int:
    from . import trace

    events = trace.load(a.trace)
    for ev in events:
        if isinstance(ev, Emitted):
            sys.stdout.write("".join(t.text for t in ev.tokens))
        if isinstance(ev, RunFinished):
            print()
            print(format_metrics(ev.metrics), file=sys.stderr)
    if not events.complete:
        print()
        print("note: the recorded run ended early (the trace has no RunFinished)", file=sys.stderr)
    return 0


def cmd_profile(a) -> int:
    import json

    from tqdm import tqdm

    from .api import load_model
    from .profile import format_profile, profile_target

    bar = lambda items, desc: tqdm(items, desc=desc, file=sys.stderr, leave=False)  # noqa: E731
    result = profile_target(a.target, fast=not a.no_fast_path, ar_prompts=a.ar_prompts,
                            max_new_tokens=a.max_new_tokens, repeats=a.repeats, progress=bar, load=load_model,
                            quiet=a.quiet, kernels=a.kernels or a.compile, compile=a.compile)
    print(format_profile(result))
    if a.json:
        from .trace import atomic_write_text

        atomic_write_text(a.json, json.dumps(result, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m specviz", description="Speculative decoding lab")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="stream a generation, colored by how each token came")
    g.add_argument("--prompt", required=True)
    _add_decoding_args(g)
    g.add_argument("--show-rejected", action="store_true", help="also print rejected drafts (struck through)")
    g.add_argument("--color", action="store_true", help="force colors when not on a terminal")
    g.add_argument("--trace", help="write the run's JSON trace here")
    g.add_argument("--image", help="an image file for a vision-language target (e.g. a SmolVLM directory or hub id "
                                   "as --target); the drafter reads the text only")
    g.set_defaults(func=cmd_generate)
    m = sub.add_parser("models", help="list presets, drafters and strategies")
    m.set_defaults(func=cmd_models)
    f = sub.add_parser("fetch", help="download, verify and convert presets")
    f.add_argument("names", nargs="+")
    f.add_argument("--gguf-only", action="store_true", help="download and verify only")
    f.set_defaults(func=cmd_fetch)
    b = sub.add_parser("bench", help="AR vs speculative (vs transformers) on a prompt set")
    _add_decoding_args(b)
    b.set_defaults(max_new_tokens=96)
    b.add_argument("--prompts", help="JSONL with 'prompt' or 'turns' and optional 'category'")
    b.add_argument("--limit", type=int, default=0, help="use only the first N prompts")
    b.add_argument("--compare-hf", action="store_true", help="also run transformers' assisted generation")
    b.add_argument("--json", help="write results here")
    b.add_argument("--drafters", help="several configurations side by side against AR, e.g. "
                   "pld:chain:8,eagle3:chain:4,eagle3:dynamic:8 (drafter[:shape[:length]], comma-separated)")
    b.add_argument("--oracle", action="store_true", help="with --drafters, greedy: also the per-prompt oracle, "
                   "the fastest of AR and the fixed configurations on each prompt in hindsight")
    b.add_argument("--budgets", help="fixed-budget sweep: comma-separated node counts, e.g. 4,8,16,32")
    b.add_argument("--strategies", default="chain", help="with --budgets: comma-separated strategies of the --drafter model, "
                   "or model-free drafters (pld, pld-tree, ngram, ngram-tree)")
    b.add_argument("--stops", help="with --budgets: comma-separated stopping rules to compare (default: --stop)")
    b.add_argument("--repeats", type=int, default=1, help="with --budgets: run the prompt set this many times "
                   "(tokens/s is then the total, with the range over repeats)")
    b.set_defaults(func=cmd_bench)
    d = sub.add_parser("check-device", help="every drafter on the device the target loads on (a GPU when there is "
                       "one): runs, and greedy output identical to AR")
    _add_decoding_args(d)
    d.set_defaults(max_new_tokens=48)
    d.add_argument("--prompts", default="assets/prompts-heldout.jsonl", help="JSONL prompt file")
    d.add_argument("--limit", type=int, default=4, help="the first N prompts")
    d.add_argument("--drafters", help="drafter:shape:length items, comma-separated (default: every registered drafter)")
    d.add_argument("--json", help="write the rows here")
    d.set_defaults(func=cmd_check_device)
    lc = sub.add_parser("check-lossless", help="is it really lossless? N samples of the first k tokens from plain and "
                        "from speculative decoding against the target's exact distribution")
    _add_decoding_args(lc)
    lc.set_defaults(temperature=0.8, drafter="pld")
    lc.add_argument("--prompt", required=True)
    lc.add_argument("--k", type=int, default=2, help="tokens per sample (1-3)")
    lc.add_argument("--samples", type=int, default=1000, help="runs per side")
    lc.add_argument("--broken", action="store_true", help="a deliberately broken verifier (it must fail)")
    lc.add_argument("--top", type=int, default=8, help="sequences to list")
    lc.set_defaults(func=cmd_check_lossless)
    c = sub.add_parser("corpus", help="record the target's greedy outputs on the training prompts (for ngram drafters)")
    c.add_argument("--target", default="smollm2-135m")
    c.add_argument("--max-new-tokens", type=int, default=128)
    c.add_argument("--limit", type=int, default=0, help="use only the first N training prompts")
    c.add_argument("--out", help="where to write (default assets/corpus-<target>.json)")
    c.set_defaults(func=cmd_corpus)
    from .train.cli import add_train_parser

    add_train_parser(sub)  # train-drafter: distillation data + a trained drafter (specviz/train)
    from .choice.train import add_parser as add_policy_parser
    from .collect import add_parser as add_collect_parser

    add_collect_parser(sub)  # collect: every drafter arm on training prompts, logged (issue 18)
    from .bench_serving import add_parser as add_serving_parser

    add_serving_parser(sub)  # bench-serving: concurrent runs through the shared decoding thread (issue 20)
    from .bench_vlm import add_parser as add_vlm_parser

    add_vlm_parser(sub)  # bench-vlm: a vision-language target, plain vs text-only drafters (issue 22)
    add_policy_parser(sub)  # train-policy: the `auto` drafter's policy from those logs
    pr = sub.add_parser("profile", help="forward cost of 1..32 new tokens, plain vs fast path, and where the time goes")
    pr.add_argument("--target", default="smollm2-135m")
    pr.add_argument("--no-fast-path", action="store_true", help="profile transformers' own forward only")
    pr.add_argument("--repeats", type=int, default=7, help="interleaved runs per size (medians are reported)")
    pr.add_argument("--ar-prompts", type=int, default=0, help="also decode the first N prompts of "
                    "assets/prompts.jsonl autoregressively (greedy) on each path and report tokens/s")
    pr.add_argument("--max-new-tokens", type=int, default=64, help="with --ar-prompts")
    pr.add_argument("--quiet", type=float, metavar="SHARE", help="on a shared machine: time only while other "
                    "jobs keep the CPU less than SHARE busy (e.g. 0.1; waits as long as it takes)")
    pr.add_argument("--kernels", action="store_true", help="also time every GEMM route this CPU build offers "
                    "(oneDNN packed, MKL, MKL packed) on the model's matrices at 1-16 rows")
    pr.add_argument("--compile", action="store_true", help="with --kernels: also torch.compile (freezing, "
                    "max-autotune), compiled once per row count (minutes on 2 cores)")
    pr.add_argument("--json", help="write the results here")
    pr.set_defaults(func=cmd_profile)
    r = sub.add_parser("replay", help="print a saved trace without any model")
    r.add_argument("trace")
    r.set_defaults(func=cmd_replay)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as err:  # ModelError is a ValueError
        print(f"specviz: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("specviz: interrupted", file=sys.stderr)
        return 130
