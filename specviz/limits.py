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
            raw = os.environ.get(prefix + f.name.upper())
            if raw is None:
                continue
            try:
                value = type(getattr(self, f.name))(float(raw))
            except ValueError:
                raise ValueError(f"{prefix}{f.name.upper()} must be a number, got {raw!r}") from None
            changes[f.name] = min(value, getattr(self, f.name))
        return replace(self, **changes)


ENGINE = Limits()  # what the engine itself accepts
APP = Limits(max_new_tokens=512, max_prompt_chars=20_000)  # a shared page stays responsive
