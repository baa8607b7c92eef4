"""Build engines from names: the one place that maps user-facing choices to engine parts.

    from specviz.api import build_engine
    engine = build_engine("smollm2-135m", drafter="pld")
    for event in engine.stream_text("Explain KV caches", Settings(max_new_tokens=64)):
        ...
"""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Iterator

from . import corpus, models
from .drafters.model import ModelDrafter
from .drafters.strategies import GREEDY_ONLY, STRATEGIES
from .drafters.ngram import NgramDrafter, NgramTable
from .drafters.prompt_lookup import PromptLookupDrafter
from .engine import Engine, Result, Settings
from .events import Event

# Drafters that need no second model; any other name is a model preset, directory or hub id.
MODEL_FREE_DRAFTERS = {  # "short label: details" (the app shows the label)
    "none": "autoregressive: no drafter, plain decoding (the reference)",
    "pld": "prompt lookup: copies what followed the last n-gram earlier in the text (no model)",
    "pld-tree": "prompt lookup tree: the 4 latest matches merged into a tree (no model)",
    "ngram": "n-gram chain: counts from the target's own outputs and the text so far (no model; ADED-style)",
    "ngram-tree": "n-gram tree: the same counts grown best-first into a tree of draft_len nodes (no model)",
}
MAX_DRAFT_LEN = 32


_LOAD_LOCK = threading.Lock()


def load_model(name: str):
    """Load once per process; concurrent first calls (the app's warm-up and a first Run) wait for
    one load instead of racing (two loads at once broke on meta tensors)."""
    with _LOAD_LOCK:
        return _load_model(name)


@functools.lru_cache(maxsize=4)
def _load_model(name: str):
    model, tokenizer, preset = models.load(name)
    return model, tokenizer, preset


load_model.cache_clear = _load_model.cache_clear


def drafter_names() -> list[str]:
    return list(MODEL_FREE_DRAFTERS) + list(models.PRESETS)


def encode_prompt(tokenizer, text: str, chat: bool) -> list[int]:
    """Token ids for a prompt; instruct models get their chat template (generation prompt added)."""
    if not text or not text.strip():
        raise ValueError("the prompt is empty")
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
        return list(ids["input_ids"] if isinstance(ids, dict) else ids)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class TextEngine:
    """An Engine plus its tokenizer: streams events for a prompt given as text."""

    engine: Engine
    tokenizer: object
    chat: bool

    def encode(self, text: str, raw: bool = False) -> list[int]:
        return encode_prompt(self.tokenizer, text, self.chat and not raw)

    def stream_text(self, text: str, settings: Settings = Settings(), raw: bool = False) -> Iterator[Event]:
        return self.engine.stream(self.encode(text, raw), settings, prompt=text)

    def generate(self, text: str, settings: Settings = Settings(), raw: bool = False) -> Result:
        return self.engine.run(self.encode(text, raw), settings, prompt=text)


def eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(model.generation_config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(source)
    return ids


@functools.lru_cache(maxsize=4)
def ngram_corpus(target: str | None) -> NgramTable | None:
    """Counts over the stored corpus of `target`'s own outputs (specviz corpus), if there is one."""
    data = corpus.load(target) if target else None
    if data is None:
        return None
    table = NgramTable()
    for ids in data["outputs"]:
        table.add(ids)
    return table


def make_drafter(name: str, target_model, draft_len: int = 4, strategy: str = "chain", target: str | None = None):
    """`target` names the target (preset or directory) so that corpus-trained drafters find its corpus."""
    if not (1 <= draft_len <= MAX_DRAFT_LEN):
        raise ValueError(f"draft length must be in [1, {MAX_DRAFT_LEN}], got {draft_len}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy '{strategy}'; choose one of: {', '.join(STRATEGIES)}")
    if name == "none":
        return None
    if name in ("pld", "pld-tree"):
        return PromptLookupDrafter(target_model.config.vocab_size, k=draft_len, branches=4 if name == "pld-tree" else 1,
                                   name=name)
    if name in ("ngram", "ngram-tree"):
        return NgramDrafter(target_model.config.vocab_size, ngram_corpus(target), budget=draft_len,
                            width=8 if name == "ngram-tree" else 1, name=name)
    model, _, _ = load_model(name)
    if model.config.vocab_size != target_model.config.vocab_size:
        raise ValueError(f"drafter '{name}' has vocabulary {model.config.vocab_size}, "
                         f"the target {target_model.config.vocab_size}: they must share one tokenizer")
    drafter = ModelDrafter(model, STRATEGIES[strategy][1](draft_len), f"{name} ({strategy})")
    drafter.greedy_only = strategy in GREEDY_ONLY
    return drafter


def rule_names() -> list[str]:
    from .verify import RULES
    from .verify_lossy import TARGET_RULES

    return list(RULES) + list(TARGET_RULES)


def make_rule(rule: str | None, target_model):
    """Rules that need the target (LANTERN's embedding neighbours) are built once per engine here."""
    from .verify import RULES
    from .verify_lossy import TARGET_RULES

    if rule is None or rule in RULES:
        return rule
    if rule in TARGET_RULES:
        return TARGET_RULES[rule](target_model)
    raise ValueError(f"unknown verification rule '{rule}'; choose one of: {', '.join(rule_names())}")


def build_engine(target: str = "smollm2-135m", drafter: str = "pld", draft_len: int = 4,
                 rule: str | None = None, strategy: str = "chain") -> TextEngine:
    model, tokenizer, preset = load_model(target)
    if tokenizer is None:
        raise models.ModelError(f"'{target}' has no tokenizer files")
    engine = Engine(model, lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                    make_drafter(drafter, model, draft_len, strategy, target), eos_ids(model, tokenizer), target,
                    make_rule(rule, model))
    chat = preset.chat if preset else bool(getattr(tokenizer, "chat_template", None))
    return TextEngine(engine, tokenizer, chat)
