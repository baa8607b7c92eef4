"""Request parsing: the page's widget values (or an API client's) -> a prompt and a checked RunConfig.

Numbers arrive as floats or strings; nothing is validated here beyond the prompt itself.
RunConfig.checked() with the app's limits (limits.APP, narrowed by the environment) and
presets_only=True decides what runs. Its errors name config fields; LABELS turns those names into
the page's words, in the one place an error is worded for the page.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import RunConfig
from ..engine import Settings
from ..limits import APP, Limits
from ..registry import Param
from ..stop_rules import STOP_RULES

# The request's widgets by name, in the order API clients pass them (the first ten since the
# first version of the page; later additions go after, each with a default).
CONTROLS = ("prompt", "target", "drafter", "strategy", "draft_len", "temperature", "top_p", "seed",
            "max_new_tokens", "rule")
EXTRAS = ("stop", "fast_path")  # followed by every stopping rule's parameters (stop_params()), then LATER
LATER = ("parallel",)

# RunConfig / Settings field -> the label on the page
LABELS = {"max_new_tokens": "max new tokens", "top_p": "top-p", "top_k": "top-k", "shape": "draft shape",
          "rule": "verification rule", "stop": "stopping rule", "stop_params": "stopping rule parameters"}


def app_limits() -> Limits:
    return APP.from_env()


def param_key(rule: str, param: Param) -> str:
    """The widget / API name of a stopping rule's parameter, e.g. schedule_grow."""
    return re.sub(r"\W", "_", f"{rule}_{param.name}")


def stop_params() -> list[tuple[str, str, Param]]:
    """(widget name, rule, Param) for every parameter of every registered stopping rule."""
    return [(param_key(e.name, p), e.name, p) for e in STOP_RULES.entries() for p in e.params]


@dataclass(frozen=True)
class Request:
    """What a visitor asked for: a prompt and a checked run config."""

    prompt: str
    config: RunConfig
    image: object = None  # for a vision-language target: the visitor's image, a PIL image (None: text alone)

    @property
    def settings(self) -> Settings:
        return self.config.settings

    @property
    def rule(self) -> str:
        return self.config.rule


def in_page_words(message: str) -> str:
    """'max_new_tokens must be ...' -> 'max new tokens must be ...' (LABELS); anything else unchanged."""
    match = re.match(r"(\w+)( must be .*)", message, re.S)
    if match and match.group(1) in LABELS:
        return LABELS[match.group(1)] + match.group(2)
    return message


def read_request(prompt, target, drafter, strategy, draft_len, temperature, top_p, seed, max_new_tokens,
                 rule="auto", stop="static", fast_path=True, stop_params=None, parallel=False,
                 limits: Limits | None = None) -> Request:
    """Everything a visitor (or an API client) sends, checked; ValueError with one clear line otherwise."""
    limits = limits or app_limits()
    if not isinstance(prompt, str):
        raise ValueError(f"the prompt must be text, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("the prompt is empty: type something or pick an example")
    if len(prompt) > limits.max_prompt_chars:
        raise ValueError(f"the prompt has {len(prompt):,} characters; the limit here is {limits.max_prompt_chars:,}")
    settings = Settings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    config = RunConfig(target=target, drafter=drafter, shape=strategy, draft_len=draft_len, rule=rule, stop=stop,
                       stop_params=dict(stop_params or {}), settings=settings, fast_path=fast_path,
                       parallel=parallel)
    try:
        return Request(prompt, config.checked(limits=limits, presets_only=True))
    except ValueError as err:
        raise ValueError(in_page_words(str(err))) from None


def read_form(form: dict) -> Request:
    """read_request from the widgets by name: the chosen stopping rule's parameters are picked out
    of every rule's parameter widgets; absent widgets (an older API client) take their defaults."""
    given = {name: form[name] for name in CONTROLS + EXTRAS + LATER if name in form}
    stop = given.get("stop", "static")
    given["stop_params"] = {p.name: form[key] for key, rule, p in stop_params() if rule == stop and key in form}
    return read_request(**given)
