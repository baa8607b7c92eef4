"""One lean forward of a Llama/Qwen2 decoder over prepared weights and an in-place KV cache.

The same computation as transformers' LlamaForCausalLM / Qwen2ForCausalLM forward (embedding;
per layer: RMSNorm -> q, k, v -> rotary -> attention over the cache -> o + residual -> RMSNorm ->
SiLU(gate) * up -> down + residual; final RMSNorm; LM head on the rows asked for), in as few
tensor ops as it takes: per layer two fused norms, the GEMMs with their post-ops, three ops of
rotary for q and three for k (the last one writes k into its cache slots), one value copy and one
attention call. Rotary cos/sin come once per forward from the model's own rotary module.
"""
from __future__ import annotations

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


def forward(fm: FastModel, kv: StaticKV, ids: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor | None,
            keep: int, hidden_layers: tuple[int, ...] = ()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Feed `ids` (1-D) at cache slots kv.length.. with rotary `positions`; return the logits of the
    last `keep` rows and the hidden states asked for (transformers' hidden_states indexing).

    allowed: None for causal attention over the cache, else [n, kv.length + n] bool (True = may see).
    """
    n = ids.shape[0]
    start = kv.length
    total = start + n
    kv.reserve(total)
    n_layers = len(fm.layers)
    wanted = {layer % (n_layers + 1) for layer in hidden_layers}
    hidden: dict[int, torch.Tensor] = {}
    if allowed is None and n > 1:
        allowed = causal_mask(n, total, ids.device)
    cos, signed_sin = rotary_factors(fm, positions)
    hq, hkv, d = fm.n_heads, fm.n_kv_heads, fm.head_dim
    half = d // 2
    sdpa, rms_norm = F.scaled_dot_product_attention, torch.rms_norm
    x = F.embedding(ids, fm.embed)  # [n, hidden]
    width = (x.shape[1],)
    if 0 in wanted:
        hidden[0] = x
    for i, layer in enumerate(fm.layers):
        (keys, values), (keys_in, values_in) = kv.read[i], kv.write[i]
        q, k, v = layer.qkv.split(rms_norm(x, width, layer.norm_in, layer.eps_in))
        rotate(k.view(n, hkv, d), cos, signed_sin, half, out=keys_in[start:total])
        values_in[start:total] = v.view(n, hkv, d)
        q = rotate(q.view(n, hq, d), cos, signed_sin, half)
        a = sdpa(q.unsqueeze(0).transpose(1, 2), keys[:, :, :total], values[:, :, :total], attn_mask=allowed,
                 scale=fm.scale, enable_gqa=True)  # [1, heads, n, head_dim]
        x = layer.o.plus(a.transpose(1, 2).reshape(n, hq * d), x)
        h = rms_norm(x, width, layer.norm_post, layer.eps_post)
        x = layer.down.plus(layer.up.times(h, layer.gate.silu(h)), x)
        if i + 1 in wanted and i + 1 < n_layers:
            hidden[i + 1] = x
    kv.length = total
    if n_layers in wanted:
        normed = rms_norm(x, width, fm.final_norm, fm.final_eps)
        hidden[n_layers] = normed
        last = normed[n - keep:]
    else:
        last = rms_norm(x[n - keep:], width, fm.final_norm, fm.final_eps)
    logits = fm.head(last)
    return logits, {layer: hidden[layer % (n_layers + 1)] for layer in hidden_layers}
