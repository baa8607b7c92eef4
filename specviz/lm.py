"""A causal LM with a KV cache that speculative decoding can roll back and prune.

The cache holds a linear part (committed tokens) followed by the tree nodes fed since the last
`accept`. `forward` feeds whatever the cache lacks plus new tree nodes, in one call, with a tree
attention mask when the nodes do not form a simple chain; `accept` keeps the accepted path and
drops everything else, so target and drafter caches always mirror the committed text.
"""
from __future__ import annotations

import time

import torch
from transformers import DynamicCache

from .tree import ancestor_mask, depths, is_chain


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class CachedLM:
    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.context = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
        self.vocab = int(model.config.vocab_size)
        self.forward_seconds = 0.0
        self.forwards = 0
        self.hidden: dict[int, torch.Tensor] = {}  # layer -> [fed rows, hidden] of the last forward
        self.reset()

    def reset(self) -> None:
        self.cache = DynamicCache(config=self.model.config)
        self.lin: list[int] = []  # tokens whose KV sits in cache slots 0..len-1
        self.tree_tokens: list[int] = []  # tree nodes after them, fed but not yet accepted
        self.tree_parents: list[int] = []

    def _keep_slots(self, slots: torch.Tensor | int) -> None:
        for layer in self.cache.layers:
            if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
                continue
            if isinstance(slots, int):
                layer.keys, layer.values = layer.keys[:, :, :slots], layer.values[:, :, :slots]
            else:
                layer.keys = layer.keys.index_select(2, slots)
                layer.values = layer.values.index_select(2, slots)

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
            return None, torch.empty(0, self.vocab)
        mask = None
        if not is_chain(all_parents):
            # rows: fed linear tokens see the causal prefix; nodes see the prefix and their ancestors
            allowed = torch.zeros(len(ids), cached + len(ids), dtype=torch.bool)
            for r in range(len(feed)):
                allowed[r, : len(self.lin) + r + 1] = True
            anc = ancestor_mask(all_parents)
            allowed[len(feed):, :lin_len] = True
            allowed[len(feed):, lin_len:] = anc[n_old:]
            mask = torch.zeros(allowed.shape, dtype=self.dtype)
            mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
            mask = mask[None, None].to(self.device)
        start = time.perf_counter()
        out = self.model(
            input_ids=torch.tensor([ids], device=self.device),
            position_ids=torch.tensor([positions], device=self.device),
            attention_mask=mask,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=len(tokens) + (1 if feed else 0),
            output_hidden_states=bool(hidden_layers),
        )
        self.hidden = {layer: out.hidden_states[layer][0] for layer in hidden_layers}
        logits = out.logits[0].float()
        self.forward_seconds += time.perf_counter() - start
        self.forwards += 1
        self.lin = list(committed)
        self.tree_tokens += tokens
        self.tree_parents = all_parents
        if feed:
            return logits[0], logits[1:]
        return None, logits

    def accept(self, path: list[int]) -> None:
        """Keep the committed text plus the fed nodes on `path` (root to leaf); drop the rest."""
        path = [i for i in path if i < len(self.tree_tokens)]
        base = len(self.lin)
        if path == list(range(len(path))):
            self._keep_slots(base + len(path))
        else:
            slots = list(range(base)) + [base + i for i in path]
            self._keep_slots(torch.tensor(slots, device=self.device))
        self.lin = self.lin + [self.tree_tokens[i] for i in path]
        self.tree_tokens, self.tree_parents = [], []

    def cache_length(self) -> int:
        return self.cache.get_seq_length()
