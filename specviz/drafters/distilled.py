"""A distilled small drafter LM for a target without a smaller sibling (the Llama-2-Chat Drafter recipe).

The drafter is a real transformers `LlamaForCausalLM` with a few decoder layers (initialized from
some of the target's own layers), the target's own embedding table (shared, frozen, never copied
or shipped) and a **reduced-vocabulary LM head**: K rows for the K most frequent tokens of the
distillation data instead of the full vocabulary. Its own forward therefore returns K logits per
row; `ReducedVocabLM` (a CachedLM) spreads them back over the full vocabulary with -inf elsewhere,
so q is a proper distribution over the target's vocabulary that gives every token outside the kept
set probability exactly 0 (speculative sampling stays exact: such a token is never drafted, and
the verifier's residual max(0, p - q) keeps all of p's mass there). Every draft shape and the CPU
fast path work unchanged, since the builders only see `forward(...)` rows of full width.

Why a K-row head and not a full-size head with zero rows and a -inf bias: on this CPU the full
head (576 x 49,152) costs about as much as four decoder layers per drafted token, the K-row head
and the spread a tenth of that (assets/drafters/distilled.md).

Shipped weights (assets/drafters/<name>.safetensors) hold only the drafter's own parameters (its
layers, final norm, the K-row head, the kept token ids) in fp16, and its config in the metadata;
they are bound to the target's embedding table at load time.

`DistilledDrafter(online=...)` also learns while it serves (Online Speculative Decoding): see
specviz/drafters/online.py.
"""
from __future__ import annotations

import copy
import functools
import json
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ..lm import CachedLM
from ..paths import DRAFTERS as ASSETS
from ..sampling import Warp
from ..stop_rules import StopRule
from ..tree import DraftTree
from ..verify import Verdict
from . import BuilderHints, TargetView
from .online import OnlineLearner, own_parameters

FORMAT = "specviz-distilled-drafter/1"


def evenly_spaced(n_layers: int, count: int) -> list[int]:
    """`count` layer indices spread over 0 .. n_layers - 1, first and last included."""
    if count <= 1:
        return [0]
    return sorted({round(i * (n_layers - 1) / (count - 1)) for i in range(count)})


def drafter_config(target_config, n_layers: int, kept: int) -> LlamaConfig:
    """The target's config with fewer layers, an untied K-row head, no pad id (the embedding is the target's)."""
    d = target_config.to_dict()
    for key in ("architectures", "_name_or_path", "_model_name_or_path", "transformers_version", "dtype",
                "torch_dtype", "quantization_config", "layer_types"):
        d.pop(key, None)
    d.update(num_hidden_layers=n_layers, vocab_size=kept, tie_word_embeddings=False, pad_token_id=None,
             model_type="llama")
    return LlamaConfig(**d)


class _NoEmbedding(torch.nn.Module):
    """Placeholder until the target's embedding is bound (keeps construction from allocating a copy)."""

    def forward(self, ids):  # pragma: no cover - never called
        raise RuntimeError("bind the target's embedding first")


def bind_embedding(model: LlamaForCausalLM, target_model: torch.nn.Module) -> LlamaForCausalLM:
    """Share the target's embedding module (the same tensor, not a copy); logits stay K wide."""
    emb = target_model.get_input_embeddings()
    model.model.embed_tokens = emb
    model.config.vocab_size = emb.weight.shape[0]  # the vocabulary the drafter reads and drafts in
    return model


def new_model(target_model: torch.nn.Module, layers: list[int], vocab_ids: torch.Tensor) -> LlamaForCausalLM:
    """A drafter initialized from the target: its decoder layers `layers` (copies), its final norm,
    and the head rows of the kept tokens (the target's LM head rows, i.e. its tied embeddings)."""
    config = drafter_config(target_model.config, len(layers), len(vocab_ids))
    model = _construct(config)
    src = target_model.model
    with torch.no_grad():
        for mine, i in zip(model.model.layers, layers):
            mine.load_state_dict(src.layers[i].state_dict())
        model.model.norm.weight.copy_(src.norm.weight)
        model.lm_head.weight.copy_(target_model.lm_head.weight[vocab_ids])
    model.vocab_ids = vocab_ids.clone().long()
    model.init_layers = list(layers)
    return bind_embedding(model, target_model).eval()


def _construct(config: LlamaConfig) -> LlamaForCausalLM:
    """LlamaForCausalLM(config) with its K x hidden embedding dropped right away (the target's is bound)."""
    model = LlamaForCausalLM(config)
    model.model.embed_tokens = _NoEmbedding()
    return model


def own_state(model: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """The drafter's own parameters (everything but the shared embedding)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("model.embed_tokens")}


def save(model: LlamaForCausalLM, path: str | Path, meta: dict | None = None,
         dtype: torch.dtype = torch.float16) -> Path:
    """Write the drafter's own parameters (fp16 by default) + kept ids + config, atomically."""
    from ..atomic import atomic_save

    config = model.config.to_dict()
    config["vocab_size"] = len(model.vocab_ids)
    tensors = {k: v.detach().to(dtype) for k, v in own_state(model).items()}
    tensors["vocab_ids"] = model.vocab_ids.long()
    info = {"format": FORMAT, "config": json.dumps(config), "target_vocab": str(model.config.vocab_size),
            "init_layers": json.dumps(getattr(model, "init_layers", [])), "meta": json.dumps(meta or {})}
    return atomic_save(tensors, Path(path), metadata=info)


def read_meta(path: str | Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        info = f.metadata() or {}
    if info.get("format") != FORMAT:
        raise ValueError(f"{path} is not a distilled drafter ({FORMAT})")
    return {"config": json.loads(info["config"]), "target_vocab": int(info["target_vocab"]),
            "init_layers": json.loads(info.get("init_layers", "[]")), "meta": json.loads(info.get("meta", "{}"))}


def load(path: str | Path, target_model: torch.nn.Module) -> LlamaForCausalLM:
    """A drafter from its weights file, bound to `target_model`'s embedding (fp32, on its device)."""
    from safetensors.torch import load_file

    info = read_meta(path)
    vocab = int(target_model.config.vocab_size)
    if info["target_vocab"] != vocab or info["config"]["hidden_size"] != target_model.config.hidden_size:
        raise ValueError(f"{path} was trained for another target (vocabulary {info['target_vocab']}, "
                         f"hidden {info['config']['hidden_size']}); this one has {vocab}, "
                         f"{target_model.config.hidden_size}")
    model = _construct(LlamaConfig(**info["config"]))
    tensors = load_file(str(path))
    vocab_ids = tensors.pop("vocab_ids").long()
    param = next(target_model.parameters())
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
    if unexpected or [k for k in missing if not k.startswith("model.embed_tokens")]:
        raise ValueError(f"{path}: unexpected {unexpected}, missing {missing}")
    model.vocab_ids = vocab_ids
    model.init_layers = info["init_layers"]
    model.to(device=param.device, dtype=param.dtype)
    return bind_embedding(model, target_model).eval()


class ReducedVocabLM(CachedLM):
    """A CachedLM over a K-row-head drafter whose rows come back full width (-inf outside the kept ids)."""

    def __init__(self, model: LlamaForCausalLM, fast_path: bool | None = None):
        super().__init__(model, fast_path)
        self.vocab_ids = model.vocab_ids.to(self.device)
        self.kept = len(self.vocab_ids)

    def spread(self, rows: torch.Tensor) -> torch.Tensor:
        if rows.shape[-1] != self.kept:
            return rows  # already full width (an empty result)
        full = rows.new_full((rows.shape[0], self.vocab), float("-inf"))
        full[:, self.vocab_ids] = rows
        return full

    def forward(self, committed, tokens=(), parents=(), hidden_layers=()):
        root, nodes = super().forward(committed, tokens, parents, hidden_layers)
        start = time.perf_counter()
        root = None if root is None else self.spread(root[None])[0]
        nodes = self.spread(nodes)
        self.forward_seconds += time.perf_counter() - start  # the spread is part of the drafter's cost
        return root, nodes


class DistilledDrafter(BuilderHints):
    """A distilled LM drafting in any registered shape; with `online`, it also adapts as it serves."""

    reads_target: tuple[int, ...] = ()

    def __init__(self, model: LlamaForCausalLM, builder, name: str = "distilled", greedy_only: bool = False,
                 fast_path: bool | None = None, online=None):
        self.lm = ReducedVocabLM(model, fast_path)
        self.builder = builder
        self.name = name
        self.greedy_only = greedy_only
        self.online = online  # an OnlineLearner (specviz.drafters.online) or None

    @property
    def forward_seconds(self) -> float:
        return self.lm.forward_seconds

    def propose(self, ids: list[int], warp: Warp, gen: torch.Generator, stop: StopRule | None = None) -> DraftTree:
        return self.builder(self.lm, ids, warp, gen, stop)

    def learn(self, tree: DraftTree, verdict: Verdict, target: TargetView | None = None) -> None:
        if self.lm.tree_tokens:
            self.lm.accept(verdict.path)
        if self.online is not None and target is not None and self.online.observe(tree, verdict, target):
            self.lm.reset()  # new weights: the fast path re-packs them, the cache is recomputed

    def reset(self) -> None:
        self.lm.reset()


def default_weights(kind: str, target: str = "smollm2-135m") -> Path:
    return ASSETS / f"{kind}-{Path(target).name}.safetensors"


@functools.lru_cache(maxsize=4)
def _shipped(path: str, target_model: torch.nn.Module) -> LlamaForCausalLM:
    return load(path, target_model)


def make_distilled_drafter(target_model: torch.nn.Module, kind: str, shape: str = "chain", draft_len: int = 4,
                           target: str = "smollm2-135m", weights: str | Path | None = None,
                           online: bool = False, fast_path: bool | None = None,
                           model: LlamaForCausalLM | None = None) -> DistilledDrafter:
    """The shipped `kind` drafter (assets/drafters/<kind>-<target>.safetensors) in `shape`.

    online=True gives it its own copy of the weights that keeps learning from the target as it
    serves (the shipped file and the shared copy other drafters use are never changed)."""
    from .strategies import STRATEGIES

    if model is None:
        path = Path(weights) if weights else default_weights(kind, target)
        if not path.exists():
            raise ValueError(f"no trained drafter at {path}; train one with `python -m specviz train-drafter {kind}`")
        model = _shipped(str(path), target_model)
    learner = None
    if online:
        model = copy_for_learning(model)
        learner = OnlineLearner(model)
    entry = STRATEGIES.get(shape)
    label = f"{kind}{' online' if online else ''} ({shape})"
    return DistilledDrafter(model, entry.build(draft_len), label, greedy_only=entry.greedy_only,
                            fast_path=fast_path, online=learner)


def copy_for_learning(model: LlamaForCausalLM) -> LlamaForCausalLM:
    """A copy with its own parameters, sharing only the (frozen) target embedding."""
    emb = model.model.embed_tokens
    model.model.embed_tokens = _NoEmbedding()
    try:
        twin = copy.deepcopy(model)
    finally:
        model.model.embed_tokens = emb
    twin.model.embed_tokens = emb
    twin.vocab_ids = model.vocab_ids.clone()
    twin.init_layers = list(getattr(model, "init_layers", []))
    return twin


def param_count(model: LlamaForCausalLM) -> int:
    return sum(p.numel() for p in own_parameters(model))
