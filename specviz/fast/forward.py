"""One lean forward of a Llama/Qwen2 decoder over prepared weights and an in-place KV cache.

The same computation as transformers' LlamaForCausalLM / Qwen2ForCausalLM forward (embedding,
per layer: RMSNorm -> q, k, v -> rotary -> attention over the cache -> o + residual -> RMSNorm ->
SiLU(gate) * up -> down + residual; final RMSNorm; LM head on the rows asked for), written as few
tensor ops as possible: per layer one norm, four GEMMs with their post-ops fused, two rotary
multiplies (k straight into its cache slots), one value copy and one attention call.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .kv import StaticKV
from .weights import FastModel


def causal_mask(n: int, total: int, device: torch.device) -> torch.Tensor:
    """[n, total] bool: new row r (at slot total - n + r) sees slots 0 .. total - n + r."""
    return torch.ones(n, total, dtype=torch.bool, device=device).tril(total - n)


def rotary_factors(fm: FastModel, positions: torch.Tensor) -> torch.Tensor:
    """[n, 1, head_dim / 2] complex cos + i sin from the model's own rotary module (its scaling applies)."""
    half = fm.head_dim // 2
    probe = fm.embed[:1]  # only the dtype and device matter to the rotary module
    cos, sin = fm.rotary(probe[None], positions[None])
    return torch.complex(cos[0, :, :half], sin[0, :, :half])[:, None, :]


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
    freqs = rotary_factors(fm, positions)
    hq, hkv, d = fm.n_heads, fm.n_kv_heads, fm.head_dim
    q_end, k_end = hq * d, (hq + hkv) * d
    sdpa, rms_norm, as_complex, as_real = F.scaled_dot_product_attention, torch.rms_norm, torch.view_as_complex, torch.view_as_real
    x = F.embedding(ids, fm.embed)  # [n, hidden]
    width = x.shape[1]
    if 0 in wanted:
        hidden[0] = x
    for i, layer in enumerate(fm.layers):
        keys, values = kv.layer(i)  # [kv_heads, capacity, head_dim]
        qkv = layer.qkv(rms_norm(x, (width,), None, layer.eps_in))
        q = as_complex(qkv[:, :q_end].unflatten(1, (hq, d // 2, 2)))
        k = as_complex(qkv[:, q_end:k_end].unflatten(1, (hkv, d // 2, 2)))
        slot_k = as_complex(keys[:, start:total].unflatten(2, (d // 2, 2))).transpose(0, 1)
        torch.mul(k, freqs, out=slot_k)
        values[:, start:total].copy_(qkv[:, k_end:].unflatten(1, (hkv, d)).transpose(0, 1))
        q = as_real(q * freqs).flatten(2).transpose(0, 1)  # [heads, n, head_dim]
        a = sdpa(q[None], keys[None, :, :total], values[None, :, :total], attn_mask=allowed, scale=fm.scale,
                 enable_gqa=True)
        x = layer.o.plus(a[0].transpose(0, 1).reshape(n, q_end), x)
        h = rms_norm(x, (width,), None, layer.eps_post)
        x = layer.down.plus(layer.up.times(h, layer.gate.silu(h)), x)
        if i + 1 in wanted and i + 1 < n_layers:
            hidden[i + 1] = x
    kv.length = total
    last = x[n - keep:] if keep < n else x
    if n_layers in wanted:
        normed = rms_norm(x, (width,), None, fm.final_eps)
        hidden[n_layers] = normed * fm.final_norm
        last = normed[n - keep:]
    else:
        last = rms_norm(last, (width,), None, fm.final_eps)
    logits = fm.head(last)
    return logits, {layer: hidden[layer % (n_layers + 1)] for layer in hidden_layers}
