"""A causal LM with a KV cache that speculative decoding can roll back and prune.

The cache holds a linear part (committed tokens) followed by the tree nodes fed since the last
`accept`. `forward` feeds whatever the cache lacks plus new tree nodes, in one call, with a tree
attention mask when the nodes do not form a simple chain; `accept` keeps the accepted path and
drops everything else, so target and drafter caches always mirror the committed text.

Two ways to run the model, chosen per CachedLM: the fast path (`specviz.fast`: a lean forward over
pre-packed weights and a KV cache written in place; Llama and Qwen2 models) and transformers' own
forward with a DynamicCache (every other architecture, and `fast_path=False`). Both give the same
logits up to float rounding and the same bookkeeping.
"""
from __future__ import annotations

import inspect
import os
import time
import weakref
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from . import fast
from .tree import ancestor_mask, depths, is_chain


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class _Plan:
    committed: list[int]
    tokens: list[int]
    all_parents: list[int]
    fed: bool  # committed tokens were fed (the first logits row follows the last of them)
    ids: torch.Tensor
    positions: torch.Tensor
    allowed: torch.Tensor | None
    keep: int
    hidden_layers: tuple[int, ...]
    embeds: torch.Tensor | None = None  # input embeddings of the first fed rows (a VLM prompt's)


@torch.inference_mode()
def forward_together(calls: list[tuple["CachedLM", list[int], list[int], list[int], tuple[int, ...]]]) -> list:
    """CachedLM.forward for several caches at once (runs of different visitors over one model): each
    call's (lm, committed, tokens, parents, hidden_layers) gives what its own forward would return, or
    the exception its own forward raised (one run's bad state ends that run, not the others). Caches
    over the same fast-path model share one batched forward (fast.forward_many); any other goes alone."""
    results: list = [None] * len(calls)
    groups: dict[int, list[tuple[int, CachedLM, _Plan]]] = {}
    for i, (lm, committed, tokens, parents, layers) in enumerate(calls):
        try:
            if not lm.fast_path:
                results[i] = lm.forward(committed, tokens, parents, layers)
                continue
            plan = lm._plan(committed, tokens, parents, layers)
        except Exception as err:  # noqa: BLE001 - handed to this call's run
            results[i] = err
            continue
        if plan is None:
            results[i] = (None, torch.empty(0, lm.vocab))
            continue
        groups.setdefault(id(lm._fast), []).append((i, lm, plan))
    for members in groups.values():
        try:
            _forward_members(members, results)
        except Exception as err:  # noqa: BLE001 - find whose: each alone (a failed forward changed no cache length)
            if len(members) == 1:
                results[members[0][0]] = err
                continue
            for member in members:
                try:
                    _forward_members([member], results)
                except Exception as err:  # noqa: BLE001
                    results[member[0]] = err
    return results


def _forward_members(members: list, results: list) -> None:
    fm = members[0][1]._fast
    start = time.perf_counter()
    outs = fast.forward_many(fm, [fast.Rows(lm.kv, p.ids, p.positions, p.allowed, p.keep, p.hidden_layers,
                                            p.embeds) for _, lm, p in members])
    share = (time.perf_counter() - start) / len(members)  # each run's part of the shared forward
    for (i, lm, plan), (logits, hidden) in zip(members, outs):
        results[i] = lm._finish(plan, logits, hidden, share)


LIVE: "weakref.WeakSet[CachedLM]" = weakref.WeakSet()  # every cache alive in this process (a server's health)


def live_caches() -> tuple[int, int]:
    """(caches alive in this process, bytes their fast-path KV buffers hold)."""
    caches = list(LIVE)
    return len(caches), sum(c.kv.data.numel() * c.kv.data.element_size() for c in caches if c.kv is not None)


class CachedLM:
    def __init__(self, model: torch.nn.Module, fast_path: bool | None = None):
        """fast_path: None = on when the architecture is supported (unless the environment sets
        SPECVIZ_FAST_PATH=0), True = required (ValueError if unsupported), False = off."""
        self.model = model
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.context = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
        self.vocab = int(model.config.vocab_size)
        self.forward_seconds = 0.0
        self.forwards = 0
        self.hidden: dict[int, torch.Tensor] = {}  # layer -> [fed rows, hidden] of the last forward
        self._read: dict[int, list[torch.Tensor]] = {}  # layer -> states of prompt chunks read ahead (prefill)
        reason = fast.unsupported_reason(model)
        if fast_path and reason:
            raise ValueError(f"the fast path does not support this model: {reason}")
        if fast_path is None:
            fast_path = reason is None and os.environ.get("SPECVIZ_FAST_PATH", "1") != "0"
        self.fast_path = bool(fast_path)
        params = inspect.signature(model.forward).parameters  # transformers >= 5.24 renamed the cache keyword
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        LIVE.add(self)
        self._fast: fast.FastModel | None = None
        self.kv: fast.StaticKV | None = None
        self.cache: DynamicCache | None = None
        self.reset()

    def reset(self) -> None:
        if self.fast_path:
            self._fast = fast.prepare(self.model)  # cached per model; rebuilt only if the weights changed
            f = self._fast
            if self.kv is None or self.kv.device != f.device:
                self.kv = fast.StaticKV(len(f.layers), f.n_kv_heads, f.head_dim, f.device, f.dtype, limit=self.context)
            self.kv.length = 0  # keeps the capacity of earlier runs
        else:
            self.cache = DynamicCache(config=self.model.config)
        self._read = {}
        self.prompt_embeds: torch.Tensor | None = None  # a VLM prompt's input embeddings (set_prompt_embeds)
        self.prompt_ids: list[int] = []
        self.lin: list[int] = []  # tokens whose KV sits in cache slots 0..len-1
        self.tree_tokens: list[int] = []  # tree nodes after them, fed but not yet accepted
        self.tree_parents: list[int] = []

    def set_prompt_embeds(self, ids: list[int], embeds: torch.Tensor) -> None:
        """Input embeddings for the prompt `ids` (a VLM prompt, its image merged in): the prefill reads
        these rows instead of looking the ids up; later positions are text as usual."""
        if embeds.shape[0] != len(ids):
            raise ValueError(f"{embeds.shape[0]} prompt embeddings for {len(ids)} prompt tokens")
        self.prompt_ids, self.prompt_embeds = list(ids), embeds.to(device=self.device, dtype=self.dtype)

    def reserve(self, positions: int) -> None:
        """Preallocate the fast path's cache for a run of this many positions (optional: it grows)."""
        if self.kv is not None:
            self.kv.reserve(min(positions, self.context))

    def _keep_slots(self, slots: list[int] | int) -> None:
        """Keep cache slots 0..slots-1 (an int), or exactly the slots listed (ascending)."""
        if self.fast_path:
            if isinstance(slots, int):
                self.kv.crop(slots)
            else:
                self.kv.compact(slots)
            return
        index = None if isinstance(slots, int) else torch.tensor(slots, device=self.device)
        for layer in self.cache.layers:
            if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
                continue
            if index is None:
                layer.keys, layer.values = layer.keys[:, :, :slots], layer.values[:, :, :slots]
            else:
                layer.keys = layer.keys.index_select(2, index)
                layer.values = layer.values.index_select(2, index)

    @torch.inference_mode()
    def prefill(self, committed: list[int], hidden_layers: tuple[int, ...] = ()) -> None:
        """Read `committed` (a prefix of the prompt) into the cache ahead of the first forward, which then
        feeds only the rest. The states of `hidden_layers` are kept and handed out with that forward's
        (`self.hidden` then covers every row read since the cache was empty), so a drafter that reads the
        target's layers sees the whole prompt as if it had been read in one forward."""
        self.forward(committed, (), (), hidden_layers)
        for layer, h in self.hidden.items():
            self._read.setdefault(layer, []).append(h)
        self.hidden = {}

    @torch.inference_mode()
    def forward(
        self, committed: list[int], tokens: list[int] = (), parents: list[int] = (), hidden_layers: tuple[int, ...] = ()
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Logits after the last committed token (None if it was already fed) and after each new node.

        `parents` index all tree nodes fed since the last accept (old ones first); -1 is the last
        committed token. Logits come back as fp32 rows on the model's device. With hidden_layers,
        `self.hidden` then holds those layers' states (transformers' hidden_states[L]; -1 = final,
        normed) for every row fed: the uncached committed tokens first, then the new nodes.
        """
        plan = self._plan(committed, tokens, parents, hidden_layers)
        if plan is None:
            return None, torch.empty(0, self.vocab)
        start = time.perf_counter()
        if self.fast_path:
            (logits, hidden), = fast.forward_many(self._fast, [fast.Rows(
                self.kv, plan.ids, plan.positions, plan.allowed, plan.keep, plan.hidden_layers, plan.embeds)])
        else:
            logits, hidden = self._hf_forward(plan.ids, plan.positions, plan.allowed, plan.keep, plan.hidden_layers,
                                              plan.embeds)
        return self._finish(plan, logits, hidden, time.perf_counter() - start)

    def _plan(self, committed: list[int], tokens, parents, hidden_layers) -> "_Plan | None":
        """What a forward feeds (ids, positions, mask, rows to keep); the cache is cropped to match."""
        tokens, parents = list(tokens), list(parents)
        if self.tree_tokens:
            if committed != self.lin:
                raise RuntimeError("extend a tree only on the text it was started on")
            feed: list[int] = []
        else:
            keep = min(common_prefix(self.lin, committed), len(committed) - 1)
            if keep < len(self.lin):
                self._keep_slots(keep)
                self.lin = self.lin[:keep]
            feed = committed[keep:]
        n_old = len(self.tree_tokens)
        all_parents = self.tree_parents + parents
        lin_len = len(committed)
        cached = len(self.lin) + n_old
        node_pos = [lin_len - 1 + d for d in depths(all_parents)[n_old:]]
        positions = list(range(len(self.lin), lin_len)) + node_pos
        ids = feed + tokens
        if not ids:
            return None
        allowed = None  # None: plain causal attention
        if not is_chain(all_parents):
            # rows: fed linear tokens see the causal prefix; nodes see the prefix and their ancestors
            allowed = torch.zeros(len(ids), cached + len(ids), dtype=torch.bool)
            allowed[: len(feed)] = torch.ones(len(feed), cached + len(ids), dtype=torch.bool).tril(len(self.lin))
            allowed[len(feed):, :lin_len] = True
            allowed[len(feed):, lin_len:] = ancestor_mask(all_parents)[n_old:]
            allowed = allowed.to(self.device)
        embeds = None
        if self.prompt_embeds is not None and len(self.lin) < self.prompt_embeds.shape[0] and feed:
            if committed[: self.prompt_embeds.shape[0]] != self.prompt_ids:
                raise RuntimeError("the prompt embeddings belong to another prompt")
            embeds = self.prompt_embeds[len(self.lin): min(lin_len, self.prompt_embeds.shape[0])]
        return _Plan(list(committed), tokens, all_parents, bool(feed), torch.tensor(ids, device=self.device),
                     torch.tensor(positions, device=self.device), allowed, len(tokens) + (1 if feed else 0),
                     tuple(hidden_layers), embeds)

    def _finish(self, plan: "_Plan", logits: torch.Tensor, hidden: dict, seconds: float):
        """The bookkeeping after a forward: states handed out, the fed text and tree remembered."""
        logits = logits.float()
        self.hidden = hidden
        if self._read:  # the prompt's chunks read ahead come first (layers they did not read are dropped)
            self.hidden = {layer: torch.cat([*self._read[layer], h]) for layer, h in self.hidden.items()
                           if layer in self._read}
            self._read = {}
        self.forward_seconds += seconds
        self.forwards += 1
        self.lin = plan.committed
        self.tree_tokens += plan.tokens
        self.tree_parents = plan.all_parents
        if plan.fed:
            return logits[0], logits[1:]
        return None, logits

    def _hf_forward(self, ids: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor | None, keep: int,
                    hidden_layers: tuple[int, ...], embeds: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        mask = None
        if allowed is not None:  # additive float mask [1, 1, n, cached + n]
            mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)
            mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
            mask = mask[None, None]
        inputs = dict(input_ids=ids[None])
        if embeds is not None:  # a VLM prompt's rows: its image features in place of its image tokens
            x = self.model.get_input_embeddings()(ids[None])
            x[0, : embeds.shape[0]] = embeds
            inputs = dict(inputs_embeds=x)
        out = self.model(
            **inputs,
            position_ids=positions[None],
            attention_mask=mask,
            use_cache=True,
            logits_to_keep=keep,
            output_hidden_states=bool(hidden_layers),
            **{self._cache_kw: self.cache},
        )
        return out.logits[0], {layer: out.hidden_states[layer][0] for layer in hidden_layers}

    def accept(self, path: list[int]) -> None:
        """Keep the committed text plus the fed nodes on `path` (root to leaf); drop the rest."""
        path = [i for i in path if i < len(self.tree_tokens)]
        base = len(self.lin)
        if path == list(range(len(path))):
            self._keep_slots(base + len(path))
        else:
            self._keep_slots(list(range(base)) + [base + i for i in path])
        self.lin = self.lin + [self.tree_tokens[i] for i in path]
        self.tree_tokens, self.tree_parents = [], []

    def cache_length(self) -> int:
        return self.kv.length if self.fast_path else self.cache.get_seq_length()
