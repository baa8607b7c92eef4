"""One run description, validated in one place: what the app, the CLI, the bench and the Python
API build an engine from, and what RunStarted records so that a trace says how to reproduce it.

    config = RunConfig(target="smollm2-135m", drafter="pld", draft_len=8).checked()
    engine = specviz.api.build(config)
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields, replace

from . import models
from .drafters.registry import drafter_entry
from .drafters.strategies import STRATEGIES
from .engine import Settings
from .limits import ENGINE, Limits
from .registry import check_params
from .rules import VERIFY_RULES
from .stop_rules import STOP_RULES


DTYPES = ("float32", "bfloat16", "float64")  # float64: the CPU-visible check of device/dtype discipline


@dataclass(frozen=True)
class RunConfig:
    target: str = "smollm2-135m"
    drafter: str = "pld"  # a registered drafter, or a model (preset, directory, hub id)
    shape: str = "chain"  # how a model drafter shapes its proposal (drafters/strategies.py)
    draft_len: int = 4  # chain length / tree depth / node budget, by drafter (its entry says)
    rule: str = "auto"  # verification rule; auto = greedy at temperature 0, else speculative sampling
    stop: str = "static"  # stopping rule (stop_rules/)
    stop_params: dict = field(default_factory=dict)
    settings: Settings = Settings()
    fast_path: bool = True  # the CPU fast path where the model supports it (specviz/lm.py)
    raw: bool = False  # no chat template
    parallel: bool = False  # PEARL: drafter and target run at the same time (specviz/parallel.py)
    dtype: str = "float32"  # the target's (and a model drafter's) weights and compute: float32, bfloat16, float64

    def checked(self, limits: Limits = ENGINE, presets_only: bool = False) -> "RunConfig":
        """This config with defaults filled in, or ValueError naming the first bad field.
        presets_only: models must be installed presets (the app), not directories or hub ids."""
        for name in ("target", "drafter", "shape", "rule", "stop"):
            value = getattr(self, name)
            if not isinstance(value, str):
                got = "nothing" if value is None else f"a {type(value).__name__}"
                raise ValueError(f"{name} must be a name, got {got}")
        if presets_only:
            check_preset(self.target, "target")
        entry = drafter_entry(self.drafter)
        if entry.kind == "model" and presets_only:
            check_preset(self.drafter, "drafter")
        shape = STRATEGIES.get(self.shape)
        draft_len = whole(self.draft_len, "draft length", 1, limits.max_draft_len)
        if self.rule != "auto":
            VERIFY_RULES.get(self.rule)
        stop = STOP_RULES.get(self.stop)
        if not isinstance(self.stop_params, dict):
            raise ValueError("stop_params must be a mapping of parameter name to number")
        stop_params = check_params(stop.params, self.stop_params, f"stopping rule '{self.stop}'")
        if stop.needs_entropy and not entry.has_distribution:
            raise ValueError(f"the '{self.stop}' stopping rule reads the drafter's distribution; "
                             f"drafter '{self.drafter}' has none (pick a model or trained drafter)")
        settings = check_settings(self.settings, limits)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.parallel:
            check_parallel(self, entry)
        if settings.temperature > 0 and (entry.greedy_only or entry.takes_shape and shape.greedy_only):
            what = f"the '{self.shape}' draft shape" if entry.takes_shape and shape.greedy_only \
                else f"the '{self.drafter}' drafter"
            raise ValueError(f"{what} works with greedy decoding only: set temperature to 0")
        return replace(self, draft_len=draft_len, stop_params=stop_params, settings=settings,
                       fast_path=bool(self.fast_path), raw=bool(self.raw), parallel=bool(self.parallel))

    @property
    def lossy(self) -> bool:
        return self.rule != "auto" and not VERIFY_RULES.get(self.rule).lossless

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        """Rebuild a config recorded in a trace (unknown keys refused; validate with .checked())."""
        if not isinstance(data, dict):
            raise ValueError("a run config must be an object")
        known = {f.name for f in fields(cls)}
        extra = set(data) - known
        if extra:
            raise ValueError(f"unknown run config field(s): {', '.join(sorted(map(str, extra)))[:80]}")
        values = dict(data)
        if "settings" in values:
            s = values["settings"]
            if not isinstance(s, dict) or set(s) - {f.name for f in fields(Settings)}:
                raise ValueError("run config 'settings' must be an object of decoding settings")
            values["settings"] = Settings(**s)
        return cls(**values)


def number(value, name: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {str(value)[:40]!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return x


def whole(value, name: str, lo: int, hi: int) -> int:
    x = number(value, name)
    if x != int(x) or not lo <= x <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}] (a whole number), got {value!r}")
    return int(x)


def check_settings(s: Settings, limits: Limits = ENGINE) -> Settings:
    """Decoding settings with every field checked against the limits (normalized types)."""
    if not isinstance(s, Settings):
        raise ValueError("settings must be a Settings")
    max_new = whole(s.max_new_tokens, "max_new_tokens", 1, limits.max_new_tokens)
    temperature = number(s.temperature, "temperature")
    if not 0 <= temperature <= limits.max_temperature:
        raise ValueError(f"temperature must be in [0, {limits.max_temperature:g}], got {s.temperature}")
    top_p = number(s.top_p, "top_p")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {s.top_p}")
    top_k = whole(s.top_k, "top_k", 0, limits.max_top_k)
    seed = whole(s.seed, "seed", 0, limits.max_seed)
    return Settings(max_new, temperature, top_k, top_p, seed, bool(s.stop_at_eos))


def check_parallel(config: RunConfig, entry) -> None:
    """Parallel decoding overlaps two models' forwards, drafting chains of one token per forward."""
    if entry.kind not in ("model", "trained"):
        raise ValueError(f"parallel decoding needs a drafter with its own model (a model or trained drafter); "
                         f"'{config.drafter}' has none")
    if entry.takes_shape and config.shape != "chain":
        raise ValueError(f"parallel decoding drafts chains; the '{config.shape}' draft shape is not supported there")
    if config.stop not in ("static", "schedule"):
        raise ValueError(f"parallel decoding adapts the draft length itself; the '{config.stop}' stopping rule is "
                         "not supported there (use static or schedule)")


def check_preset(name: str, role: str) -> None:
    """An installed preset (or any preset where they load from the hub), or the deployment's VLM target."""
    if role == "target" and name is not None and name == models.vlm_target():
        return
    if name not in models.PRESETS:
        raise ValueError(f"unknown {role} {str(name)[:60]!r}; choose one of: {', '.join(models.PRESETS)}")
    if os.environ.get("SPECVIZ_FROM_HUB") != "1" and models.status(name) == "not installed":
        raise ValueError(f"the {role} model {name} is not installed on this machine; "
                         f"run `python -m specviz fetch {name}` first (or pick an installed one)")
