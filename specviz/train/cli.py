"""`python -m specviz train-drafter eagle`: distillation data, then the EAGLE head, resumable.

    python -m specviz train-drafter eagle --shards 12 --steps 1500
    python -m specviz train-drafter eagle --data-only          # just (continue to) make the data
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


DEFAULTS = {"steps": 1500, "batch_tokens": 3072, "vocab": 16384, "threads": 2}
KIND_DEFAULTS = {"del": {"steps": 300, "batch_tokens": 512, "vocab": 8192, "threads": 1}}


def add_train_parser(sub) -> None:
    t = sub.add_parser("train-drafter", help="make distillation data with the target and train a drafter on it")
    t.add_argument("kind", choices=["eagle", "distill-kd", "distill-tvd", "del"],
                   help="eagle: a feature head on the target's hidden states; distill-kd / distill-tvd: a small "
                   "drafter LM fine-tuned by KD or TVD++ (specviz/train/distill.py); del: exit adapters for "
                   "DEL self-speculation (specviz/train/early_exit.py)")
    t.add_argument("--target", default="smollm2-135m")
    t.add_argument("--shards", type=int, default=12, help="generated shards to use (32 responses each; 0 = all)")
    t.add_argument("--no-corpus", action="store_true", help="skip the stored corpus (teacher-forced, cheap)")
    t.add_argument("--max-new-tokens", type=int, default=128)
    t.add_argument("--steps", type=int, help="default 1500 (del: 300)")
    t.add_argument("--batch-tokens", type=int, help="default 3072 (del: 512)")
    t.add_argument("--vocab", type=int, help="readout tokens (most frequent in the data); 0 = all; "
                   "default 16384 (del: 8192)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, help="default 2 (del: 1)")
    t.add_argument("--data-only", action="store_true")
    t.add_argument("--out", help="weights file (default assets/drafters/eagle-<target>.safetensors)")
    t.add_argument("--work", help="checkpoints and loss curve (default <cache>/distill/<target>/eagle-work)")
    t.set_defaults(func=cmd_train_drafter)


def write_card(a: argparse.Namespace, vocab: int, result: dict, out: Path, log) -> dict:
    """The trained drafter's JSON card next to its weights (atomically): the trainer's summary, the command
    that reproduces it, the weights' and loss curve's file names; logs where everything went."""
    import json

    from ..trace import atomic_write_text

    command = (f"python -m specviz train-drafter {a.kind} --shards {a.shards} --steps {a.steps} "
               f"--batch-tokens {a.batch_tokens} --vocab {vocab} --seed {a.seed} --threads {a.threads}")
    card = result["summary"] | {"command": command, "weights": out.name, "loss_curve": result["png"].name,
                                "weights_bytes": out.stat().st_size}
    atomic_write_text(out.with_suffix(".json"), json.dumps(card, indent=2))
    log(f"{a.kind}: weights {out} ({out.stat().st_size / 1e6:.1f} MB), card {out.with_suffix('.json')}, "
        f"loss curve {result['png']}, {card['train_seconds']} s of training")
    return card


def cmd_train_drafter(a: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ..api import load_model
    from ..drafters.feature_head import default_weights
    from . import data
    from .eagle import TrainConfig, train

    for key, value in (DEFAULTS | KIND_DEFAULTS.get(a.kind, {})).items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    torch.set_num_threads(a.threads)
    bar = lambda desc: (lambda items, **kw: tqdm(items, desc=desc, file=sys.stderr, mininterval=5, **kw))  # noqa: E731
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    roots = []
    if not a.no_corpus:
        roots.append(data.build_from_corpus(a.target, a.seed, progress=bar("corpus data"), log=log))
    roots.append(data.build(a.target, a.shards, a.seed, a.max_new_tokens, progress=bar("distill data"), log=log))
    log(f"data ready in {time.perf_counter() - t0:.0f} s")
    if a.data_only:
        return 0
    if a.kind == "del":
        from .early_exit import run_from_cli as run_del

        return run_del(a, roots)
    if a.kind.startswith("distill-"):
        from .distill import run_from_cli

        return run_from_cli(a, roots)
    model, _, _ = load_model(a.target)
    sets = [data.DistillSet(roots[0])] if not a.no_corpus else []
    sets.append(data.DistillSet(roots[-1], shards=a.shards))
    out = Path(a.out) if a.out else default_weights(a.target)
    work = Path(a.work) if a.work else data.data_dir(a.target).parent / "eagle-work"
    cfg = TrainConfig(steps=a.steps, batch_tokens=a.batch_tokens, vocab=a.vocab, seed=a.seed)
    result = train(model, sets, cfg, out, work, progress=bar("train eagle"), log=log)
    last = [h for h in result["history"] if "valid" in h][-1:]
    log(f"head written to {out} ({result['seconds']:.0f} s of training in this run); loss curve {work / 'loss.png'}")
    if last:
        log("final validation: " + " ".join(f"{k} {v:.3f}" for k, v in last[0].items() if k not in ("step", "valid")))
    return 0
