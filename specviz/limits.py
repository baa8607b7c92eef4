"""Every limit on a run, defined once. The engine, the API, the CLI, the bench and the app all
check against a `Limits`; a deployment (e.g. a public Space) narrows them with environment
variables (SPECVIZ_MAX_NEW_TOKENS, SPECVIZ_MAX_PROMPT_CHARS, SPECVIZ_MAX_DRAFT_LEN) without code.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class Limits:
    max_new_tokens: int = 4096
    max_prompt_chars: int = 100_000
    max_draft_len: int = 32
    max_temperature: float = 2.0
    max_top_k: int = 1_000_000
    max_seed: int = 2**31 - 1

    def from_env(self, prefix: str = "SPECVIZ_") -> "Limits":
        """These limits, each narrowed (never widened) by SPECVIZ_<NAME> when set."""
        changes = {}
        for f in fields(self):
            value = env_value(prefix + f.name.upper(), type(getattr(self, f.name)))
            if value is not None:
                changes[f.name] = min(value, getattr(self, f.name))
        return replace(self, **changes)


def env_value(name: str, kind: type, positive: bool = False):
    """The environment variable `name` read as `kind` (bool: 1/true/yes/on), None when unset or
    blank; ValueError with the variable's name when it is not a number (or not positive)."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return None
    if kind is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    try:
        value = kind(float(raw))
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if positive and not value > 0:
        raise ValueError(f"{name} must be positive, got {raw!r}")
    return value


ENGINE = Limits()  # what the engine itself accepts
APP = Limits(max_new_tokens=512, max_prompt_chars=20_000)  # a shared page stays responsive


# ---------------------------------------------------------------- a deployment's budgets (the app)

GB = 1024**3
HEAVY_PRESETS = ("qwen2.5-coder-1.5b",)  # targets too large for a shared CPU Space by default


@dataclass(frozen=True)
class Budgets:
    """What one deployment of the app allows, beyond a run's settings (Limits). Each field is read
    from SPECVIZ_<NAME> when set; the defaults depend on where the app runs (`budgets()`)."""

    run_seconds: float = 600.0  # decoding seconds per run, its own turns (the run ends with "time limit")
    queue_size: int = 64  # requests waiting for a decoding place; more are refused with "busy"
    active_runs: int = 32  # runs decoding at once, taking turns one step each (scheduler.py)
    batch_runs: int = 16  # runs whose verification forwards run as one batched forward (1: each alone)
    tree_nodes: int = 256  # draft nodes per step (draft length x branches of the chosen shape)
    model_memory_gb: float = 12.0  # loaded models beyond this are evicted, least recently used first
    step_idle_s: float = 900.0  # a step-by-step run idle this long releases its engine (its trace stays)
    heavy_presets: bool = True  # whether the HEAVY_PRESETS may load here

    def allows(self, preset: str) -> bool:
        return self.heavy_presets or preset not in HEAVY_PRESETS


SPACE = Budgets(run_seconds=60.0, queue_size=24, active_runs=32, tree_nodes=128, model_memory_gb=4.0, step_idle_s=120.0,
                heavy_presets=False)  # a free CPU Space: 2 cores, 16 GB, thirty visitors at once
LOCAL = Budgets()


def _has_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def budgets(prefix: str = "SPECVIZ_") -> Budgets:
    """The budgets of this process: SPACE when SPACE_ID is set (heavy presets on where a GPU is),
    LOCAL otherwise; SPECVIZ_RUN_SECONDS, SPECVIZ_QUEUE_SIZE, SPECVIZ_ACTIVE_RUNS, SPECVIZ_BATCH_RUNS, SPECVIZ_TREE_NODES,
    SPECVIZ_MODEL_MEMORY_GB, SPECVIZ_STEP_IDLE_S, SPECVIZ_HEAVY_PRESETS=0/1 set any of them."""
    base = SPACE if os.environ.get("SPACE_ID") else LOCAL
    if os.environ.get("SPACE_ID") and _has_gpu():
        base = replace(base, heavy_presets=True)
    changes = {}
    for f in fields(base):
        value = env_value(prefix + f.name.upper(), type(getattr(base, f.name)), positive=True)
        if value is not None:
            changes[f.name] = value
    return replace(base, **changes)
