"""Build engines from a RunConfig: the one place that turns names into engine parts.

    from specviz.api import build_engine
    engine = build_engine("smollm2-135m", drafter="pld")
    for event in engine.stream_text("Explain KV caches", Settings(max_new_tokens=64)):
        ...

    from specviz.config import RunConfig
    engine = build(RunConfig(drafter="ngram-tree", draft_len=8, stop="schedule"))
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator

from . import models, vlm
from .config import RunConfig
from .drafters import registry as drafter_registry
from .drafters.registry import DRAFTERS, DraftRequest
from .engine import Engine, Result, Settings
from .events import Event
from .limits import ENGINE
from .rules import VERIFY_RULES
from .stop_rules import make_stop_rule

MAX_DRAFT_LEN = ENGINE.max_draft_len

load_model = models.load_cached  # (model, tokenizer, preset), loaded once per process


def drafter_names() -> list[str]:
    return DRAFTERS.names() + list(models.PRESETS)


# "label: about" of the drafters that need no second model (menus list them first)
MODEL_FREE_DRAFTERS = {e.name: f"{e.label}: {e.about}" for e in DRAFTERS.entries() if e.kind in ("none", "free")}


def make_drafter(name: str, target_model, draft_len: int = 4, strategy: str = "chain", target: str | None = None):
    """A drafter by name for a loaded target model (`target` names it, for corpus/weights lookup)."""
    config = RunConfig(target or "smollm2-135m", name, strategy, draft_len).checked()
    return drafter_registry.make_drafter(DraftRequest(name, target_model, target, config.draft_len, config.shape))


def rule_names() -> list[str]:
    return VERIFY_RULES.names()


def encode_prompt(tokenizer, text: str, chat: bool) -> list[int]:
    """Token ids for a prompt; instruct models get their chat template (generation prompt added)."""
    if not isinstance(text, str):
        raise ValueError(f"the prompt must be text, got {type(text).__name__}")
    if not text.strip():
        raise ValueError("the prompt is empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate: the tokenizer would fail with a type error
        raise ValueError(f"the prompt is not valid text: character {err.start} is a lone surrogate "
                         f"(U+{ord(text[err.start]):04X}), which no tokenizer can encode") from None
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
        return list(ids["input_ids"] if isinstance(ids, dict) else ids)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class TextEngine:
    """An Engine plus its tokenizer and the RunConfig it was built from: streams events for text."""

    engine: Engine
    tokenizer: object
    chat: bool
    config: RunConfig = RunConfig()

    def encode(self, text: str, raw: bool | None = None) -> list[int]:
        raw = self.config.raw if raw is None else raw
        return encode_prompt(self.tokenizer, text, self.chat and not raw)

    def stream_text(self, text: str, settings: Settings | None = None, raw: bool | None = None,
                    **limits) -> Iterator[Event]:
        """Events of one run; `settings` (default: the config's) are recorded with the config.
        `limits`: the engine's cancel= and time_limit_s=."""
        config = replace(self.config, settings=settings or self.config.settings,
                         raw=self.config.raw if raw is None else raw)
        return self.engine.stream(self.encode(text, config.raw), config.settings, prompt=text,
                                  config=config.as_dict(), **limits)

    def generate(self, text: str, settings: Settings | None = None, raw: bool | None = None) -> Result:
        events = list(self.stream_text(text, settings, raw))
        end = events[-1]
        return Result(end.text, end.token_ids, end.metrics, end.stop_reason, events)


def eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(model.generation_config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(source)
    return ids


def build(config: RunConfig) -> "TextEngine | vlm.VisionEngine":
    """An engine for a run description (validated here against the engine's own limits). A vision-language
    target (vlm.py) gives a VisionEngine: its language model verifies, a text-only drafter drafts."""
    config = config.checked()
    model, tokenizer, preset = load_model(config.target, config.dtype)
    if tokenizer is None:
        raise models.ModelError(f"'{config.target}' has no tokenizer files")
    fast = None if config.fast_path else False  # fast_path=True means "where the model supports it"
    vision = vlm.is_vlm(model)
    if vision and config.parallel:
        raise ValueError("parallel (PEARL) decoding of a vision-language target is not supported")
    target = vlm.text_model(model) if vision else model
    text_vocab = vlm.text_vocab(tokenizer) if vision else None
    drafter = drafter_registry.make_drafter(DraftRequest(config.drafter, target, config.target, config.draft_len,
                                                         config.shape, fast, text_vocab))
    if vision and drafter is not None:
        own = getattr(getattr(drafter, "lm", None), "vocab", None)  # a model drafter's vocabulary bounds it too
        vocab = min(text_vocab, own or target.config.vocab_size)
        drafter = vlm.TextOnly(drafter, vocab, target.config.vocab_size)
    stop = make_stop_rule(config.stop, config.draft_len, config.stop_params) if drafter is not None else None
    tok = getattr(tokenizer, "tokenizer", tokenizer)  # a VLM's processor carries its tokenizer
    decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    rule = None if config.rule == "auto" else config.rule
    if config.parallel:
        from .parallel import ParallelEngine

        engine = ParallelEngine(model, decode, drafter, eos_ids(model, tok), config.target, rule, stop=stop,
                                fast_path=fast, draft_len=config.draft_len)
    else:
        engine = Engine(target, decode, drafter, eos_ids(model, tok), config.target, rule, stop=stop,
                        fast_path=fast)
    if vision:
        return vlm.VisionEngine(engine, model, tokenizer, config)
    chat = preset.chat if preset else bool(getattr(tokenizer, "chat_template", None))
    return TextEngine(engine, tokenizer, chat, config)


def build_engine(target: str = "smollm2-135m", drafter: str = "pld", draft_len: int = 4,
                 rule: str | None = None, strategy: str = "chain", stop: str = "static",
                 stop_params: dict | None = None) -> TextEngine:
    """build() from keyword arguments (the short form of the Python API)."""
    return build(RunConfig(target, drafter, strategy, draft_len, rule or "auto", stop, dict(stop_params or {})))
