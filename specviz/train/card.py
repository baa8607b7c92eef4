"""What every trainer's CLI run ends with: log lines and progress bars on stderr, and the trained drafter's
JSON card beside its weights. `train/cli.py` and the trainers (`distill.py`, `early_exit.py`) all import
this; it imports none of them, so they share the tail without importing each other in a loop."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..atomic import atomic_write_text


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def progress_bar(desc: str | None = None, mininterval: float = 5):
    """A `progress=` callable for the trainers: wraps an iterable in a tqdm bar on stderr; a trainer's own
    keywords (e.g. a `desc` per stage) win over these defaults."""
    from tqdm import tqdm

    return lambda items, **kw: tqdm(items, **({"desc": desc, "file": sys.stderr, "mininterval": mininterval} | kw))


def write_card(a: argparse.Namespace, vocab: int, result: dict, out: Path, log=log) -> dict:
    """The trained drafter's JSON card next to its weights (atomically): the trainer's summary, the command
    that reproduces it, the weights' and loss curve's file names; logs where everything went."""
    command = (f"python -m specviz train-drafter {a.kind} --shards {a.shards} --steps {a.steps} "
               f"--batch-tokens {a.batch_tokens} --vocab {vocab} --seed {a.seed} --threads {a.threads}"
               + (f" --positions {a.positions}" if getattr(a, "positions", None) else ""))
    card = result["summary"] | {"command": command, "weights": out.name, "loss_curve": result["png"].name,
                                "weights_bytes": out.stat().st_size}
    atomic_write_text(out.with_suffix(".json"), json.dumps(card, indent=2))
    log(f"{a.kind}: weights {out} ({out.stat().st_size / 1e6:.1f} MB), card {out.with_suffix('.json')}, "
        f"loss curve {result['png']}, {card['train_seconds']} s of training")
    return card
