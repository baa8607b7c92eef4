"""The fast path's view of a Llama/Qwen2 model's weights, prepared once per model per process.

Nothing here changes the transformers model. The fast path reads its weights in two ways:

- one-row forwards (a one-token step) multiply by the model's own matrices, in place, with
  MKL's GEMV (q, k and v from one plain fused copy, one call instead of three), or by the packed
  copies where those are faster for one row on this machine (measured once: fast/routes.py);
- forwards of several rows (prefill, verifying drafts) use copies pre-packed for oneDNN
  (`_reorder_linear_weight`), with q, k and v fused into one matrix and the SiLU, the gate * up
  product and the residual adds fused into the GEMMs as post-ops. oneDNN's blocked layout keeps a
  9-row product much closer to the cost of a 1-row one than plain GEMM does.

The packed copies cost about one more model's worth of memory, once per model (not per CachedLM:
`prepare` caches them by model object and rebuilds them only if a parameter changed in place or
the model moved). They are skipped on CUDA, for dtypes other than float32 (and bfloat16 on a CPU with native
bfloat16: AVX512_BF16 or AMX, where packed bf16 products cost ~0.55x float32's), and when the machine's
available memory could not hold them with room to spare; then every forward uses the model's own
matrices.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..machine import native_bf16

ARCHITECTURES = ("llama", "qwen2")  # model_type values the lean forward implements
PACKED_FROM_ROWS = 2  # forwards of at least this many rows use the packed copies
MEMORY_HEADROOM = 2.0  # pack only if available memory is at least this many times the copies' size


class Linear:
    """y = x @ W.T (+ bias) for one or more of the model's nn.Linear modules side by side (q, k, v),
    with the post-ops the layer needs; fused into oneDNN when packed and rows >= PACKED_FROM_ROWS."""

    def __init__(self, modules: list[torch.nn.Linear], pack: bool):
        self.parts = [(m.weight.detach(), None if m.bias is None else m.bias.detach()) for m in modules]
        self.weight_t = self.parts[0][0].t()  # for addmm (x @ W.T + residual in one call)
        self.sizes = [m.out_features for m in modules]
        self.packed = None  # oneDNN copy, for rows >= min_rows
        self.min_rows = PACKED_FROM_ROWS  # fast/routes.py lowers it to 1 where packed is faster for one row too
        self.fused = None  # plain copy of side-by-side modules (q, k, v), for fewer rows
        self.bias = None
        if pack:
            with torch.no_grad():
                weight = torch.cat([w for w, _ in self.parts]) if len(self.parts) > 1 else self.parts[0][0]
                self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None)
                if len(self.parts) > 1:
                    self.fused = weight
                if any(b is not None for _, b in self.parts):
                    self.bias = torch.cat([b if b is not None else torch.zeros(n, dtype=w.dtype, device=w.device)
                                           for (w, b), n in zip(self.parts, self.sizes)])

    def nbytes(self) -> int:
        return sum(w.numel() * w.element_size() for w, _ in self.parts)

    def _packed(self, x: torch.Tensor) -> bool:
        return self.packed is not None and x.shape[0] >= self.min_rows

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each module's output (views of one product when packed)."""
        if self._packed(x):
            out = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        elif self.fused is not None:
            out = F.linear(x, self.fused, self.bias)
        else:
            return [F.linear(x, w, b) for w, b in self.parts]
        return out.split(self.sizes, dim=-1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed(x):
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        (w, b), = self.parts
        return F.linear(x, w, b)

    def silu(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed(x):
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "swish", [], "")
        return F.silu(self(x), inplace=True)

    def times(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """other * (x @ W.T)"""
        if self._packed(x):
            return torch.ops.mkldnn._linear_pointwise.binary(x, other, self.packed, self.bias, "mul")
        return self(x).mul_(other)

    def plus(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """other + x @ W.T (the residual add)"""
        if self._packed(x):
            return torch.ops.mkldnn._linear_pointwise.binary(x, other, self.packed, self.bias, "add")
        (w, b), = self.parts
        if b is None:
            return torch.addmm(other, x, self.weight_t)
        return F.linear(x, w, b).add_(other)


@dataclass
class Layer:
    qkv: Linear
    o: Linear
    gate: Linear
    up: Linear
    down: Linear
    norm_in: torch.Tensor  # the model's own RMSNorm weights
    eps_in: float
    norm_post: torch.Tensor
    eps_post: float


@dataclass
class FastModel:
    layers: list[Layer]
    embed: torch.Tensor  # the model's own embedding matrix
    rotary: torch.nn.Module  # the model's own rotary module (its scaling type and factors apply)
    final_norm: torch.Tensor
    final_eps: float
    head: Linear
    n_heads: int
    n_kv_heads: int
    head_dim: int
    scale: float
    device: torch.device
    dtype: torch.dtype
    packed: bool
    stamp: tuple  # what it was made from (see `_stamp`)


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
    if not param.dtype.is_floating_point:
        return f"dtype {param.dtype}"
    if 2 * inner.rotary_emb.inv_freq.numel() != inner.layers[0].self_attn.head_dim:
        return "partial rotary embedding"
    return None


def _stamp(model: torch.nn.Module) -> tuple:
    """Changes when a parameter is modified in place or replaced, or the model moves."""
    params = list(model.parameters())
    return (params[0].device, params[0].dtype, sum(p._version for p in params), tuple(p.data_ptr() for p in params))


def available_memory() -> int | None:
    """Bytes the OS says it can still give (MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def should_pack(model: torch.nn.Module) -> bool:
    param = next(model.parameters())
    if param.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if param.dtype != torch.float32 and not (param.dtype == torch.bfloat16 and native_bf16()):
        return False  # oneDNN packs float32, and bfloat16 where the CPU has it natively (1.8x float32 here)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    copies = sum(m.weight.numel() * m.weight.element_size() for m in linears)
    free = available_memory()
    return free is None or free >= MEMORY_HEADROOM * copies


@torch.no_grad()
def _build(model: torch.nn.Module, pack: bool) -> FastModel:
    inner, config = model.model, model.config
    param = next(model.parameters())
    attn0 = inner.layers[0].self_attn
    layers = []
    for layer in inner.layers:
        a, m = layer.self_attn, layer.mlp
        layers.append(Layer(
            qkv=Linear([a.q_proj, a.k_proj, a.v_proj], pack), o=Linear([a.o_proj], pack),
            gate=Linear([m.gate_proj], pack), up=Linear([m.up_proj], pack), down=Linear([m.down_proj], pack),
            norm_in=layer.input_layernorm.weight.detach(), eps_in=float(layer.input_layernorm.variance_epsilon),
            norm_post=layer.post_attention_layernorm.weight.detach(),
            eps_post=float(layer.post_attention_layernorm.variance_epsilon),
        ))
    return FastModel(layers, inner.embed_tokens.weight.detach(), inner.rotary_emb, inner.norm.weight.detach(),
                     float(inner.norm.variance_epsilon), Linear([model.lm_head], pack), config.num_attention_heads,
                     config.num_key_value_heads, attn0.head_dim, float(attn0.scaling), param.device, param.dtype,
                     pack, _stamp(model))


_PREPARED: "weakref.WeakKeyDictionary[torch.nn.Module, FastModel]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def prepare(model: torch.nn.Module, pack: bool | None = None) -> FastModel:
    """The fast path's weights for `model`: built on first use, then shared by every CachedLM over it.
    pack: None = where it helps and fits (see `should_pack`)."""
    reason = unsupported_reason(model)
    if reason:
        raise ValueError(f"the fast path does not support this model: {reason}")
    with _LOCK:
        fm = _PREPARED.get(model)
        if fm is not None and fm.stamp == _stamp(model) and (pack is None or fm.packed == pack):
            return fm
        _PREPARED.pop(model, None)
        fm = None  # drop stale copies before building new ones
        fm = _build(model, should_pack(model) if pack is None else pack)
        if fm.packed:
            from . import routes

            if routes.choose(fm) == "packed":  # one-row products: the route measured fastest here
                for lin in routes.linears(fm):
                    lin.min_rows = 1
        _PREPARED[model] = fm
        return fm


def copy_bytes(model: torch.nn.Module) -> int:
    """Bytes of the fast path's weight copies for `model` (made, or to be made on first use): a packed
    copy of every Linear plus a plain fused q/k/v copy; 0 where the fast path does not pack. Memory
    budgets count them, since they about double a float32 model on the CPU."""
    fm = _PREPARED.get(model)
    if fm is not None:
        packs = fm.packed
    else:
        packs = unsupported_reason(model) is None and should_pack(model)
    if not packs:
        return 0
    total = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            total += m.weight.numel() * m.weight.element_size()
    for layer in getattr(getattr(model, "model", None), "layers", ()):
        attn = layer.self_attn
        total += sum(p.weight.numel() * p.weight.element_size() for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    return total


def forget(model: torch.nn.Module) -> None:
    """Free the prepared copies of `model` now (they also go when the model is collected)."""
    with _LOCK:
        _PREPARED.pop(model, None)
