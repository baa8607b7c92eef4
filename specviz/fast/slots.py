"""Many sequences decoding one token each per forward, every one in its own slot of one padded KV cache.

forward_many runs attention once per sequence, which costs a few dozen small operations per sequence
and layer: at 64 sequences that is more than the matrix products themselves. Here the sequences sit
in slots of one tensor [layers, 2, slots, kv_heads, capacity, head_dim]; a step writes each slot's
new key and value at its own length, and one attention call per layer reads every slot, masked to
its own length. Used to make training data (continuous batching: a finished slot takes the next
prompt, which is read by the ordinary fast forward and copied in).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .forward import rotary_factors, rotate
from .kv import StaticKV
from .weights import FastModel


class SlotKV:
    def __init__(self, fm: FastModel, slots: int, capacity: int = 256):
        self.fm = fm
        self.lens = torch.zeros(slots, dtype=torch.long, device=fm.device)
        self.data = self._alloc(slots, capacity)

    def _alloc(self, slots: int, capacity: int) -> torch.Tensor:
        fm = self.fm
        return torch.zeros(len(fm.layers), 2, slots, fm.n_kv_heads, capacity, fm.head_dim, device=fm.device,
                           dtype=fm.dtype)

    @property
    def capacity(self) -> int:
        return self.data.shape[4]

    def reserve(self, total: int) -> None:
        """Room for `total` positions in every slot (keeps what is cached)."""
        if total <= self.capacity:
            return
        data = self._alloc(self.data.shape[2], max(total, 2 * self.capacity))
        data[..., : self.capacity, :] = self.data
        self.data = data

    def load(self, slot: int, kv: StaticKV) -> None:
        """Slot `slot` now holds the sequence cached in `kv` (a prompt read by the ordinary forward)."""
        n = kv.length
        self.reserve(n + 1)
        self.data[:, :, slot, :, :n] = kv.data[:, :, :, :n]
        self.lens[slot] = n

    def move(self, src: int, dst: int) -> None:
        """Slot `dst` takes over slot `src`'s sequence (to keep the live slots at the front)."""
        n = int(self.lens[src])
        self.data[:, :, dst, :, :n] = self.data[:, :, src, :, :n]
        self.lens[dst] = n


def step(fm: FastModel, kv: SlotKV, ids: torch.Tensor, hidden_layers: tuple[int, ...] = ()
         ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Feed ids[b] (1-D, one per slot) to slots 0..len(ids)-1 at their own lengths; return the logits
    [n, vocab] and the hidden states asked for (transformers' hidden_states indexing), each [n, hidden].
    The same computation as forward() of each slot's sequence alone."""
    n = ids.shape[0]
    n_layers = len(fm.layers)
    wanted = {layer % (n_layers + 1) for layer in hidden_layers}
    pos = kv.lens[:n]
    kv.reserve(int(pos.max()) + 1)
    span = int(pos.max()) + 1
    cos, signed_sin = rotary_factors(fm, pos)
    hq, hkv, d = fm.n_heads, fm.n_kv_heads, fm.head_dim
    half = d // 2
    rows = torch.arange(n, device=ids.device)
    seen = (torch.arange(span, device=ids.device)[None] <= pos[:, None])[:, None, None]  # [n, 1, 1, span]
    x = F.embedding(ids, fm.embed)
    width = (x.shape[1],)
    hidden: dict[int, torch.Tensor] = {0: x} if 0 in wanted else {}
    for i, layer in enumerate(fm.layers):
        q, k, v = layer.qkv.split(torch.rms_norm(x, width, layer.norm_in, layer.eps_in))
        keys, values = kv.data[i, 0, :n], kv.data[i, 1, :n]  # [n, kv_heads, capacity, head_dim]
        keys[rows, :, pos] = rotate(k.view(n, hkv, d), cos, signed_sin, half)
        values[rows, :, pos] = v.view(n, hkv, d)
        qr = rotate(q.view(n, hq, d), cos, signed_sin, half)[:, :, None]  # [n, heads, 1, head_dim]
        a = F.scaled_dot_product_attention(qr, keys[:, :, :span], values[:, :, :span], attn_mask=seen,
                                           scale=fm.scale, enable_gqa=True)
        x = layer.o.plus(a.reshape(n, hq * d), x)
        h = torch.rms_norm(x, width, layer.norm_post, layer.eps_post)
        x = layer.down.plus(layer.up.times(h, layer.gate.silu(h)), x)
        if i + 1 in wanted and i + 1 < n_layers:
            hidden[i + 1] = x
    kv.lens[:n] += 1
    normed = torch.rms_norm(x, width, fm.final_norm, fm.final_eps)
    if n_layers in wanted:
        hidden[n_layers] = normed
    return fm.head(normed), {layer: hidden[layer % (n_layers + 1)] for layer in hidden_layers}
