"""Every drafter, registered once: how to build it, what it needs, what it can do.

The menus, `python -m specviz models`, the CLI help, the bench and RunConfig validation read this
table. A name that is not registered here is a model drafter: a preset, a local directory or a
hub id of a smaller LM with the target's vocabulary (the "model" entry builds it, in any shape).
A new drafter is one file plus one entry here.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch

from ..registry import Registry
from . import Drafter
from .ngram import NgramDrafter, NgramTable
from .prompt_lookup import PromptLookupDrafter


@dataclass(frozen=True)
class DraftRequest:
    """What a drafter factory gets."""

    name: str  # the drafter name as given (a model drafter's preset / directory / hub id)
    target_model: torch.nn.Module
    target: str  # the target's name (preset or directory): corpus or weights are looked up by it
    draft_len: int
    shape: str
    fast_path: bool | None = None  # None: on where supported; False: plain transformers forwards
    text_vocab: int | None = None  # a vision-language target's text ids (vlm.text_vocab): a drafter over them fits


@dataclass(frozen=True)
class DrafterEntry:
    name: str
    label: str  # short, for menus
    about: str  # one line, for `models` and help
    make: Callable[[DraftRequest], Drafter | None]
    kind: str = "free"  # none | free (no model) | model (a second LM) | trained (weights in assets/) | auto (chooses)
    takes_shape: bool = False  # drafts any registered shape (chain, trees)
    greedy_only: bool = False
    max_nodes: Callable[[int, str], int] = lambda draft_len, shape: draft_len  # per step
    hf: Callable[[int, Drafter | None], dict] | None = None  # transformers generate() kwargs doing the same
    reads_target: bool = False  # reads the target's hidden states (not for a VLM, whose states hold image positions)

    @property
    def has_distribution(self) -> bool:
        """Its drafts come from a distribution q with an entropy (stop rules like AdaEDL read it)."""
        return self.kind in ("model", "trained")


@functools.lru_cache(maxsize=4)
def ngram_corpus(target: str | None) -> NgramTable | None:
    """Counts over the stored corpus of `target`'s own outputs (specviz corpus), if there is one."""
    from .. import corpus

    data = corpus.load(target) if target else None
    if data is None:
        return None
    table = NgramTable()
    for ids in data["outputs"]:
        table.add(ids)
    return table


def _vocab(r: DraftRequest) -> int:
    return r.target_model.config.vocab_size


def _model_drafter(r: DraftRequest) -> Drafter:
    from ..models import load_cached
    from .model import ModelDrafter
    from .strategies import STRATEGIES

    dtype = str(next(r.target_model.parameters()).dtype).removeprefix("torch.")
    model, _, _ = load_cached(r.name, dtype)  # the drafter computes in the target's dtype
    if model.config.vocab_size not in (r.target_model.config.vocab_size, r.text_vocab):
        raise ValueError(f"drafter '{r.name}' has vocabulary {model.config.vocab_size}, "
                         f"the target {r.target_model.config.vocab_size}: they must share one tokenizer")
    shape = STRATEGIES.get(r.shape)
    return ModelDrafter(model, shape.build(r.draft_len), f"{r.name} ({r.shape})", greedy_only=shape.greedy_only,
                        fast_path=r.fast_path)


def _distilled(kind: str, online: bool = False) -> Callable[[DraftRequest], Drafter]:
    def make(r: DraftRequest) -> Drafter:
        from .distilled import make_distilled_drafter

        return make_distilled_drafter(r.target_model, kind, r.shape, r.draft_len, r.target, online=online,
                                      fast_path=r.fast_path)

    return make


def _eagle(kind: str):
    def make(r: DraftRequest) -> Drafter:
        from .feature_head import make_feature_drafter

        return make_feature_drafter(r.target_model, shape=r.shape, draft_len=r.draft_len, target=r.target, kind=kind)

    return make


NGRAM_GRAFT = 8  # nodes of the n-gram tree grafted onto a trained drafter's (its gate decides whether)
# The n-gram tree drafts alone when it expects this many accepted drafts: the head's forwards and extra
# nodes cost more than they add where the text copies. Chosen on the tuning prompts (assets/prompts.jsonl,
# 96 new tokens, this repo's 2-core Zen 4, 2026-12-05): 1.72x AR never alone; 1.85 / 1.90 and 1.79 / 1.86x
# at 2 / 3 (twice) / 4 -- alike within run-to-run noise; 3 is the middle.
GRAFT_ALONE: float | None = 3.0


def _merged(r: DraftRequest) -> Drafter:
    from .merged import MergedDrafter

    head = _eagle("eagle3")(r)
    counts = NgramDrafter(_vocab(r), ngram_corpus(r.target), budget=NGRAM_GRAFT, width=8, name="ngram-tree")
    return MergedDrafter(head, counts, _vocab(r), f"eagle-3 + n-gram tree ({r.shape})", alone_above=GRAFT_ALONE,
                         names=("EAGLE-3 head", "n-gram tree"))


def _del(r: DraftRequest) -> Drafter:
    from .early_exit import make_del_drafter

    return make_del_drafter(r.target_model, r.draft_len, r.target)


def _auto(online: bool):
    def make(r: DraftRequest) -> Drafter:
        from ..choice.arms import make_auto_drafter

        return make_auto_drafter(r, make_drafter, online=online)

    return make


def _auto_nodes(draft_len: int, shape: str) -> int:
    from ..choice.arms import DEFAULT_ARMS, parse_arm

    return max(drafter_entry(n).max_nodes(k, s) for n, s, k in map(parse_arm, DEFAULT_ARMS) if n != "none")


def _model_nodes(draft_len: int, shape: str) -> int:
    from .strategies import STRATEGIES

    return STRATEGIES.get(shape).max_nodes(draft_len)


def _hf_assistant(draft_len: int, drafter) -> dict:
    return dict(assistant_model=drafter.lm.model, num_assistant_tokens=draft_len,
                num_assistant_tokens_schedule="constant", assistant_confidence_threshold=0.0)


def _hf_prompt_lookup(draft_len: int, drafter) -> dict:
    return dict(prompt_lookup_num_tokens=draft_len)  # transformers' prompt lookup drafts a chain


MODEL = DrafterEntry(
    "model", "model drafter", "a smaller LM with the target's vocabulary (preset, directory or hub id), any shape",
    _model_drafter, kind="model", takes_shape=True, max_nodes=_model_nodes, hf=_hf_assistant)

DRAFTERS: Registry[DrafterEntry] = Registry(
    "drafter",
    DrafterEntry("none", "autoregressive", "no drafter, plain decoding (the reference)", lambda r: None,
                 kind="none", max_nodes=lambda d, s: 0),
    DrafterEntry("pld", "prompt lookup", "copies what followed the last n-gram earlier in the text (no model)",
                 lambda r: PromptLookupDrafter(_vocab(r), k=r.draft_len, name="pld"), hf=_hf_prompt_lookup),
    DrafterEntry("pld-tree", "prompt lookup tree", "the 4 latest matches merged into a tree (no model)",
                 lambda r: PromptLookupDrafter(_vocab(r), k=r.draft_len, branches=4, name="pld-tree"),
                 hf=_hf_prompt_lookup),
    DrafterEntry("ngram", "n-gram chain",
                 "counts from the target's own outputs and the text so far (no model; ADED-style)",
                 lambda r: NgramDrafter(_vocab(r), ngram_corpus(r.target), budget=r.draft_len, name="ngram")),
    DrafterEntry("ngram-tree", "n-gram tree",
                 "the same counts grown best-first into a tree of draft_len nodes (no model)",
                 lambda r: NgramDrafter(_vocab(r), ngram_corpus(r.target), budget=r.draft_len, width=8,
                                        name="ngram-tree")),
    # distilled drafter LMs (specviz/drafters/distilled.py; weights in assets/drafters/, SmolLM2-135M only)
    DrafterEntry("distill-kd", "distilled LM (KD)", "4 of the target's layers + an 8k-token head, fine-tuned by "
                 "forward KL on the target's outputs, any shape", _distilled("distill-kd"), kind="trained",
                 takes_shape=True, max_nodes=_model_nodes),
    DrafterEntry("distill-tvd", "distilled LM (TVD++)", "the same drafter fine-tuned by total variation distance "
                 "(TVD++ estimator), any shape", _distilled("distill-tvd"), kind="trained", takes_shape=True,
                 max_nodes=_model_nodes),
    DrafterEntry("distill-kd-online", "distilled LM (KD), online", "distill-kd that keeps learning from the "
                 "target where it was rejected (Online Speculative Decoding; its own copy of the weights)",
                 _distilled("distill-kd", online=True), kind="trained", takes_shape=True, max_nodes=_model_nodes),
    DrafterEntry("distill-tvd-online", "distilled LM (TVD++), online", "distill-tvd that keeps learning from the "
                 "target where it was rejected (Online Speculative Decoding)", _distilled("distill-tvd", online=True),
                 kind="trained", takes_shape=True, max_nodes=_model_nodes),
    # EAGLE feature head (specviz/drafters/feature_head.py; weights in assets/drafters/, SmolLM2-135M only)
    DrafterEntry("eagle3", "EAGLE-3 feature head", "one trained decoder layer on the target's low, middle and last "
                 "states fused (EAGLE-3), trained on its own multi-step drafts; readout through the target's LM "
                 "head, any shape", _eagle("eagle3"), kind="trained", takes_shape=True, max_nodes=_model_nodes,
                 reads_target=True),
    DrafterEntry("eagle", "EAGLE feature head", "one trained decoder layer on the target's own hidden states "
                 "(EAGLE), 8k-token readout through the target's LM head, any shape", _eagle("eagle"), kind="trained",
                 takes_shape=True, max_nodes=_model_nodes, reads_target=True),
    DrafterEntry("eagle3+ngram", "EAGLE-3 head + n-gram tree", "the EAGLE-3 head's tree with the n-gram tree "
                 "grafted on (SpecInfer's merged token tree): guesses where the text is new, copies where it "
                 "repeats; one verification", _merged, kind="trained", takes_shape=True,
                 max_nodes=lambda d, s: _model_nodes(d, s) + NGRAM_GRAFT, reads_target=True),
    # DEL self-speculation (specviz/drafters/early_exit.py; exit adapters in assets/drafters/, SmolLM2-135M only)
    DrafterEntry("del", "DEL self-speculation", "the target's own first L layers + a trained exit adapter; the exit "
                 "layer and the draft length chosen per context from the target's states (DEL), chains", _del,
                 kind="trained", reads_target=True),
    # drafter choice (specviz/choice/; the policy in assets/policy/, trained by collect + train-policy)
    DrafterEntry("auto", "learned choice", "a policy trained on logged outcomes picks the drafter or plain "
                 "decoding per prompt from the target's prefill (REINFORCE)", _auto(False), kind="auto",
                 max_nodes=_auto_nodes, reads_target=True),
    DrafterEntry("auto-online", "learned choice, re-deciding", "auto that also re-decides every few steps from the "
                 "acceptance just observed (Thompson sampling), switching drafters mid-answer", _auto(True),
                 kind="auto", max_nodes=_auto_nodes, reads_target=True),
)


def drafter_entry(name: str) -> DrafterEntry:
    """The registered entry, or the model-drafter entry for any other name."""
    return DRAFTERS.get(name) if name in DRAFTERS else MODEL


def make_drafter(request: DraftRequest) -> Drafter | None:
    return drafter_entry(request.name).make(request)
