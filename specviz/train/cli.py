"""`python -m specviz train-drafter eagle3|eagle|distill-kd|distill-tvd|del`: distillation data, then the drafter,
resumable. The data step is shared; eagle trains here, the others hand over to their trainer's `run_from_cli`
(specviz/train/distill.py, specviz/train/early_exit.py), which end with the card writer in train/card.py.

    python -m specviz train-drafter eagle3 --shards 0 --steps 6000 --parts 2   # data v2 in 2 processes, then EAGLE-3
    python -m specviz train-drafter eagle --shards 12 --steps 1500
    python -m specviz train-drafter eagle --data-only          # just (continue to) make the data
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path


DEFAULTS = {"steps": 1500, "batch_tokens": 3072, "vocab": 16384, "threads": 2}
KIND_DEFAULTS = {"eagle3": {"steps": 6000, "batch_tokens": 4096, "vocab": 8192, "threads": 2},
                 "del": {"steps": 300, "batch_tokens": 512, "vocab": 8192, "threads": 1}}


def add_train_parser(sub) -> None:
    t = sub.add_parser("train-drafter", help="make distillation data with the target and train a drafter on it")
    t.add_argument("kind", choices=["eagle3", "eagle", "distill-kd", "distill-tvd", "del"],
                   help="eagle3: a feature head on the target's low, middle and last states, trained with "
                   "training-time test (EAGLE-3); eagle: a feature head on the target's hidden states; distill-kd / distill-tvd: a small "
                   "drafter LM fine-tuned by KD or TVD++ (specviz/train/distill.py); del: exit adapters for "
                   "DEL self-speculation (specviz/train/early_exit.py)")
    t.add_argument("--target", default="smollm2-135m")
    t.add_argument("--shards", type=int, default=12, help="generated shards to use (64 responses each; 0 = all)")
    t.add_argument("--no-corpus", action="store_true", help="skip the stored corpus (teacher-forced, cheap)")
    t.add_argument("--max-new-tokens", type=int, help="response length of the generated data (default 192)")
    t.add_argument("--steps", type=int, help="default 1500 (del: 300)")
    t.add_argument("--batch-tokens", type=int, help="default 3072 (del: 512)")
    t.add_argument("--vocab", type=int, help="readout tokens (most frequent in the data); 0 = all; "
                   "default 16384 (del: 8192)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, help="default 2 (del: 1)")
    t.add_argument("--data-only", action="store_true")
    t.add_argument("--parts", type=int, default=1, help="make the data in this many single-threaded processes "
                   "side by side (use the core count: one multi-threaded process stalls whenever anything else runs)")
    t.add_argument("--device", default="cpu", help="where the data is made and the head trained (eagle, eagle3): "
                   "cpu (default) or cuda")
    t.add_argument("--group", type=int, help="shards generated as one batch (default 1 on the CPU, 8 on a GPU)")
    t.add_argument("--minutes", type=float, default=0.0, help="eagle, eagle3: a training time budget; the learning-rate "
                   "schedule runs on the larger of step and time fraction and training ends at either limit")
    t.add_argument("--lr", type=float, help="eagle, eagle3: peak learning rate (default 1e-3)")
    t.add_argument("--positions", type=int, help="del: training positions whose exit states are recomputed in "
                   "memory (a seeded sample of sequences; default 40,000, ~6 KB each)")
    t.add_argument("--init", help="eagle, eagle3: start from this trained head (its weights and readout tokens) "
                   "instead of random weights, e.g. to continue the shipped head on more data")
    t.add_argument("--out", help="weights file (default assets/drafters/eagle-<target>.safetensors)")
    t.add_argument("--work", help="checkpoints and loss curve (default <cache>/distill/<target>/eagle-work)")
    t.set_defaults(func=cmd_train_drafter)


def cmd_train_drafter(a: argparse.Namespace) -> int:
    import torch

    from ..api import load_model
    from ..drafters.feature_head import default_weights
    from . import data
    from .card import log, progress_bar as bar
    from .eagle import TrainConfig, train

    for key, value in (DEFAULTS | KIND_DEFAULTS.get(a.kind, {})).items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    roots = []
    if a.kind == "eagle3":
        a.no_corpus = True  # the stored corpus has no low/middle layer states
    if not a.no_corpus:
        roots.append(data.build_from_corpus(a.target, a.seed, progress=bar("corpus data"), log=log))
    new = a.max_new_tokens or data.MAX_NEW
    if a.parts > 1 and a.device == "cpu":
        data.build_in_parts(a.target, a.shards, a.seed, new, a.parts, log=log)
    group = a.group or (1 if a.device == "cpu" else 8)
    roots.append(data.build(a.target, a.shards, a.seed, new, progress=bar("distill data"), log=log,
                            device=a.device, group=group))
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
    out = Path(a.out) if a.out else default_weights(a.target, a.kind)
    work = Path(a.work) if a.work else data.data_dir(a.target).parent / f"{a.kind}-work"
    cfg = TrainConfig(steps=a.steps, batch_tokens=a.batch_tokens, vocab=a.vocab, seed=a.seed,
                      recipe="eagle3" if a.kind == "eagle3" else "eagle1", device=a.device,
                      max_seconds=60 * a.minutes, checkpoint_every=100 if a.device == "cpu" else 500, init=a.init,
                      **({"lr": a.lr} if a.lr else {}))
    result = train(model, sets, cfg, out, work, progress=bar(f"train {a.kind}"), log=log)
    last = [h for h in result["history"] if "valid" in h][-1:]
    log(f"head written to {out} ({result['seconds']:.0f} s of training in this run); loss curve {work / 'loss.png'}")
    if last:
        log("final validation: " + " ".join(f"{k} {v:.3f}" for k, v in last[0].items() if k not in ("step", "valid")))
    return 0
