"""One lean forward of a Llama/Qwen2 decoder over prepared weights and an in-place KV cache.

The same computation as transformers' LlamaForCausalLM / Qwen2ForCausalLM forward (embedding;
per layer: RMSNorm -> q, k, v -> rotary -> attention over the cache -> o + residual -> RMSNorm ->
SiLU(gate) * up -> down + residual; final RMSNorm; LM head on the rows asked for), in as few
tensor ops as it takes: per layer two fused norms, the GEMMs with their post-ops, three ops of
rotary for q and three for k (the last one writes k into its cache slots), one value copy and one
attention call. Rotary cos/sin come once per forward from the model's own rotary module.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .kv import StaticKV
from .weights import FastModel


def causal_mask(n: int, total: int, device: torch.device) -> torch.Tensor:
    """[n, total] bool: new row r (at slot total - n + r) sees slots 0 .. total - n + r."""
    return torch.ones(n, total, dtype=torch.bool, device=device).tril(total - n)


def rotary_factors(fm: FastModel, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, signed sin), each [n, 1, head_dim], with x * cos + halves_swapped(x) * signed_sin equal
    to transformers' x * cos + rotate_half(x) * sin."""
    half = fm.head_dim // 2
    cos, sin = fm.rotary(fm.embed[:1][None], positions[None])  # only dtype and device of the probe matter
    cos, sin = cos[0, :, None, :], sin[0, :, None, :]
    return cos, torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)


def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, half: int, out=None) -> torch.Tensor:
    """Rotary embedding of x [n, heads, head_dim] (into `out` when given)."""
    return torch.addcmul(x * cos, x.roll(half, -1), signed_sin, out=out)


@dataclass
class Rows:
    """One sequence's part of a forward: `ids` (1-D) fed at cache slots kv.length.. with rotary `positions`;
    `allowed` None for causal attention over the cache, else [n, kv.length + n] bool (True = may see);
    the logits of its last `keep` rows and the hidden states of `hidden_layers` come back."""
    kv: StaticKV
    ids: torch.Tensor
    positions: torch.Tensor
    allowed: torch.Tensor | None
    keep: int
    hidden_layers: tuple[int, ...] = ()
    embeds: torch.Tensor | None = None  # input embeddings of its first rows, in place of their ids' (an image)


def forward(fm: FastModel, kv: StaticKV, ids: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor | None,
            keep: int, hidden_layers: tuple[int, ...] = ()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Feed `ids` (1-D) at cache slots kv.length.. with rotary `positions`; return the logits of the
    last `keep` rows and the hidden states asked for (transformers' hidden_states indexing).

    allowed: None for causal attention over the cache, else [n, kv.length + n] bool (True = may see).
    """
    return forward_many(fm, [Rows(kv, ids, positions, allowed, keep, tuple(hidden_layers))])[0]


def forward_many(fm: FastModel, parts: list[Rows]) -> list[tuple[torch.Tensor, dict[int, torch.Tensor]]]:
    """One forward for several sequences, each with its own KV cache (runs of different visitors): the
    matrix products run once over every part's rows stacked, attention runs per part over its own cache.
    With one part this is exactly the single-sequence forward (no stacking, the same operations)."""
    one = len(parts) == 1
    sizes = [p.ids.shape[0] for p in parts]
    bounds = [(sum(sizes[:j]), sum(sizes[: j + 1])) for j in range(len(parts))]
    ids = parts[0].ids if one else torch.cat([p.ids for p in parts])
    positions = parts[0].positions if one else torch.cat([p.positions for p in parts])
    n_layers = len(fm.layers)
    spans = []  # per part: (first cache slot, slots after this forward, attention mask)
    for p, n in zip(parts, sizes):
        start = p.kv.length
        total = start + n
        p.kv.reserve(total)
        allowed = causal_mask(n, total, p.ids.device) if p.allowed is None and n > 1 else p.allowed
        spans.append((start, total, allowed))
    wanted = {layer % (n_layers + 1) for p in parts for layer in p.hidden_layers}
    hidden: dict[int, torch.Tensor] = {}
    cos, signed_sin = rotary_factors(fm, positions)
    hq, hkv, d = fm.n_heads, fm.n_kv_heads, fm.head_dim
    half = d // 2
    sdpa, rms_norm = F.scaled_dot_product_attention, torch.rms_norm
    x = F.embedding(ids, fm.embed)  # [rows, hidden]
    for p, (r0, _) in zip(parts, bounds):
        if p.embeds is not None:  # a VLM's prompt: its image features where its image tokens are
            x[r0: r0 + p.embeds.shape[0]] = p.embeds
    width = (x.shape[1],)
    if 0 in wanted:
        hidden[0] = x
    for i, layer in enumerate(fm.layers):
        q, k, v = layer.qkv.split(rms_norm(x, width, layer.norm_in, layer.eps_in))
        outs = []
        for p, (r0, r1), (start, total, allowed) in zip(parts, bounds, spans):
            n = r1 - r0
            (keys, values), (keys_in, values_in) = p.kv.read[i], p.kv.write[i]
            qp, kp, vp = (q, k, v) if one else (q[r0:r1], k[r0:r1], v[r0:r1])
            cp, sp = (cos, signed_sin) if one else (cos[r0:r1], signed_sin[r0:r1])
            rotate(kp.view(n, hkv, d), cp, sp, half, out=keys_in[start:total])
            values_in[start:total] = vp.view(n, hkv, d)
            qp = rotate(qp.view(n, hq, d), cp, sp, half)
            a = sdpa(qp.unsqueeze(0).transpose(1, 2), keys[:, :, :total], values[:, :, :total], attn_mask=allowed,
                     scale=fm.scale, enable_gqa=True)  # [1, heads, n, head_dim]
            outs.append(a.transpose(1, 2).reshape(n, hq * d))
        x = layer.o.plus(outs[0] if one else torch.cat(outs), x)
        h = rms_norm(x, width, layer.norm_post, layer.eps_post)
        x = layer.down.plus(layer.up.times(h, layer.gate.silu(h)), x)
        if i + 1 in wanted and i + 1 < n_layers:
            hidden[i + 1] = x
    for p, (start, total, _) in zip(parts, spans):
        p.kv.length = total
    rows = [(r1 - p.keep, r1) for p, (r0, r1) in zip(parts, bounds)]
    if n_layers in wanted:
        normed = rms_norm(x, width, fm.final_norm, fm.final_eps)
        hidden[n_layers] = normed
        last = normed[rows[0][0]:] if one else torch.cat([normed[a:b] for a, b in rows])
    else:
        last = rms_norm(x[rows[0][0]:] if one else torch.cat([x[a:b] for a, b in rows]), width, fm.final_norm,
                        fm.final_eps)
    logits = fm.head(last)
    out, at = [], 0
    for p, (r0, r1) in zip(parts, bounds):
        mine = {layer: hidden[layer % (n_layers + 1)] if one else hidden[layer % (n_layers + 1)][r0:r1]
                for layer in p.hidden_layers}
        out.append((logits if one else logits[at: at + p.keep], mine))
        at += p.keep
    return out
