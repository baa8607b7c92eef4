"""The fast path's view of a Llama/Qwen2 model's weights, prepared once per model per process.

Nothing here changes the transformers model: the fast path reads its embedding and rotary module
as they are and keeps its own copies of the projection matrices, fused and laid out for speed:

- q, k and v as one matrix (one GEMM instead of three), and gate and up as two matrices whose
  products fuse SiLU and the gate * up product into the GEMMs (oneDNN post-ops);
- each RMSNorm's weight folded into the columns of the matrix that reads its output
  (W @ (w * x) = (W * w) @ x), so a norm is one `rms_norm` call without a weight;
- the rows of q and k permuted within each head from transformers' half-split rotary layout
  (i, i + d/2) to interleaved pairs (2i, 2i + 1), so rotary is one complex multiply; attention
  scores are dot products, unchanged by the same permutation of q and k (v is not permuted);
- on the CPU, every matrix pre-packed for oneDNN (`_reorder_linear_weight`); on CUDA plain.

The copies cost about one more model's worth of memory, once per model (not per CachedLM):
`prepare` caches them by model object and re-prepares only if a parameter changed in place or the
model moved.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ARCHITECTURES = ("llama", "qwen2")  # model_type values the lean forward implements
_PACKABLE = (torch.float32,)


class Linear:
    """y = x @ W.T (+ bias), with the post-ops the layer needs fused where the kernel allows."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, pack: bool):
        self.bias = None if bias is None else bias.detach().contiguous()
        self.packed = pack
        weight = weight.detach().contiguous()
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, None) if pack else weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def silu(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "swish", [], "")
        return F.silu(F.linear(x, self.weight, self.bias))

    def times(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """other * (x @ W.T)"""
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise.binary(x, other, self.weight, self.bias, "mul")
        return F.linear(x, self.weight, self.bias).mul_(other)

    def plus(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """other + x @ W.T (the residual add)"""
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise.binary(x, other, self.weight, self.bias, "add")
        return F.linear(x, self.weight, self.bias).add_(other)


@dataclass
class Layer:
    qkv: Linear  # input norm folded in; q and k rows in interleaved rotary order
    o: Linear
    gate: Linear  # post-attention norm folded in
    up: Linear  # post-attention norm folded in
    down: Linear
    eps_in: float
    eps_post: float


@dataclass
class FastModel:
    layers: list[Layer]
    embed: torch.Tensor  # the model's own embedding matrix (not a copy)
    rotary: torch.nn.Module  # the model's own rotary module (its scaling type and factors apply)
    final_norm: torch.Tensor  # the model's own final norm weight (for hidden state -1)
    final_eps: float
    head: Linear  # final norm folded in
    n_heads: int
    n_kv_heads: int
    head_dim: int
    scale: float
    vocab: int
    device: torch.device
    dtype: torch.dtype
    packed: bool
    stamp: tuple  # what the copies were made from (see `_stamp`)


def unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why the lean forward cannot run this model, or None when it can."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in ARCHITECTURES:
        return f"architecture {kind!r} is not one of {', '.join(ARCHITECTURES)}"
    inner = getattr(model, "model", None)
    if not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")) or not hasattr(model, "lm_head"):
        return "unexpected module layout"
    if getattr(model, "hf_quantizer", None) is not None:
        return "quantized weights"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r}"
    if getattr(config, "use_sliding_window", False) or any(t != "full_attention" for t in getattr(config, "layer_types", None) or ()):
        return "sliding-window attention"
    if int(getattr(config, "pretraining_tp", 1) or 1) != 1:
        return "pretraining_tp > 1"
    param = next(model.parameters())
    if param.device.type not in ("cpu", "cuda"):
        return f"device {param.device.type}"
    if param.dtype != torch.float32:
        return f"dtype {param.dtype} (the fast path runs float32 models)"
    attn = inner.layers[0].self_attn
    if 2 * inner.rotary_emb.inv_freq.numel() != attn.head_dim:
        return "partial rotary embedding"
    return None


def _stamp(model: torch.nn.Module) -> tuple:
    """Changes when a parameter is modified in place or the model moves (device / dtype)."""
    params = list(model.parameters())
    return (params[0].device, params[0].dtype, sum(p._version for p in params), len(params))


def _rotary_rows(n_heads: int, head_dim: int) -> torch.Tensor:
    """Row order that turns each head's half-split (i, i + d/2) pairs into adjacent (2i, 2i + 1)."""
    half = head_dim // 2
    within = torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).flatten()
    return (torch.arange(n_heads)[:, None] * head_dim + within).flatten()


def _cat_bias(*linears) -> torch.Tensor | None:
    if all(lin.bias is None for lin in linears):
        return None
    return torch.cat([lin.bias if lin.bias is not None else torch.zeros(lin.out_features, device=lin.weight.device,
                                                                        dtype=lin.weight.dtype) for lin in linears])


@torch.no_grad()
def _build(model: torch.nn.Module, pack: bool | None) -> FastModel:
    inner, config = model.model, model.config
    param = next(model.parameters())
    if pack is None:
        pack = param.device.type == "cpu" and param.dtype in _PACKABLE and torch.backends.mkldnn.is_available()
    attn0 = inner.layers[0].self_attn
    n_heads, n_kv, head_dim = config.num_attention_heads, config.num_key_value_heads, attn0.head_dim
    q_rows, k_rows = _rotary_rows(n_heads, head_dim), _rotary_rows(n_kv, head_dim)
    layers = []
    for layer in inner.layers:
        a, m = layer.self_attn, layer.mlp
        w_in, w_post = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
        weight = torch.cat([a.q_proj.weight[q_rows], a.k_proj.weight[k_rows], a.v_proj.weight]) * w_in
        bias = _cat_bias(a.q_proj, a.k_proj, a.v_proj)
        if bias is not None:
            q, k = n_heads * head_dim, n_kv * head_dim
            bias = torch.cat([bias[:q][q_rows], bias[q:q + k][k_rows], bias[q + k:]])
        layers.append(Layer(
            qkv=Linear(weight, bias, pack),
            o=Linear(a.o_proj.weight, a.o_proj.bias, pack),
            gate=Linear(m.gate_proj.weight * w_post, m.gate_proj.bias, pack),
            up=Linear(m.up_proj.weight * w_post, m.up_proj.bias, pack),
            down=Linear(m.down_proj.weight, m.down_proj.bias, pack),
            eps_in=float(layer.input_layernorm.variance_epsilon),
            eps_post=float(layer.post_attention_layernorm.variance_epsilon),
        ))
    head = Linear(model.lm_head.weight * inner.norm.weight, model.lm_head.bias, pack)
    return FastModel(layers, inner.embed_tokens.weight, inner.rotary_emb, inner.norm.weight,
                     float(inner.norm.variance_epsilon), head, n_heads, n_kv, head_dim, float(attn0.scaling),
                     int(config.vocab_size), param.device, param.dtype, pack, _stamp(model))


_PREPARED: "weakref.WeakKeyDictionary[torch.nn.Module, FastModel]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def prepare(model: torch.nn.Module, pack: bool | None = None) -> FastModel:
    """The fast path's weights for `model`: built on first use, then shared by every CachedLM over it."""
    reason = unsupported_reason(model)
    if reason:
        raise ValueError(f"the fast path does not support this model: {reason}")
    with _LOCK:
        fm = _PREPARED.get(model)
        if fm is None or fm.stamp != _stamp(model) or (pack is not None and fm.packed != pack):
            _PREPARED.pop(model, None)  # drop stale copies before building new ones
            fm = None
            fm = _build(model, pack)
            _PREPARED[model] = fm
        return fm


def forget(model: torch.nn.Module) -> None:
    """Free the prepared copies of `model` now (they also go when the model is collected)."""
    with _LOCK:
        _PREPARED.pop(model, None)
