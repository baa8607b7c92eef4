"""A trained feature-level drafter (EAGLE, Li et al. 2024): one small decoder layer on the target's features.

The head reads pairs (f_j, x_{j+1}): f_j is the target's final normed hidden state at position j
(hidden_states[-1], what its LM head reads) and x_{j+1} the next token, embedded with the target's
own (frozen) embedding table. One Llama decoder layer over fc([emb(x_{j+1}); f_j]) predicts
f_{j+1}; the target's (frozen) LM head, or a subset of its rows (the most frequent tokens of the
training data), turns that into logits for x_{j+2}. Drafting k tokens is k autoregressive steps of
the head on its own predicted features. The engine hands the drafter the target's features of the
committed positions after each verification forward (TargetView, reads_target = (-1,)), so the
head never needs a target forward of its own; before the first one (step 0) it drafts nothing.

`HeadLM` gives the head the interface of CachedLM (forward(committed, tokens, parents) -> root
logits, node logits; tree_tokens; accept), so every tree builder of specviz.drafters works
unchanged: chains, fixed-width Gumbel-Top-k / SpecInfer trees, stochastic beams and EAGLE-2's
dynamic best-first trees. Its KV cache keeps only pairs with the target's true features; pairs
built on predicted features (drafts) are dropped once the target has spoken.

Shipped weights hold only the head's own parameters (and the subset's token ids), never the
target's embeddings or LM head; they are bound to the target at load time.
"""
from __future__ import annotations

import functools
import json
import math
import time
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..sampling import Warp
from ..stop_rules import StopNote, StopRule
from ..tree import DraftTree, ancestor_mask, depths
from ..verify import Verdict
from . import BuilderHints, TargetView

from ..paths import DRAFTERS as ASSETS  # noqa: E402  (installed copy or the checkout)


@dataclass(frozen=True)
class HeadConfig:
    hidden: int = 576
    heads: int = 9
    kv_heads: int = 3
    intermediate: int = 1536
    rope_theta: float = 100000.0
    eps: float = 1e-5
    vocab: int = 49152  # the target's vocabulary (logits come back this wide)
    # target layers read (transformers' hidden_states indices; -1 = the final normed state). One layer:
    # the EAGLE-1/2 head, trained to regress that state. Several (EAGLE-3: low, middle, last): their
    # states are fused by one matrix, the head predicts no target state, and a norm precedes the readout.
    layers: tuple = (-1,)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def fused(self) -> bool:
        return len(self.layers) > 1

    @classmethod
    def for_target(cls, config, intermediate: int | None = None, layers: tuple = (-1,)) -> "HeadConfig":
        rope = getattr(config, "rope_parameters", None) or {}
        theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
        return cls(config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                   intermediate or config.intermediate_size, float(theta), float(config.rms_norm_eps),
                   config.vocab_size, tuple(layers))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


class FeatureHead(torch.nn.Module):
    """fc([emb; feature]) -> one pre-norm Llama decoder layer -> predicted next feature."""

    def __init__(self, config: HeadConfig, vocab_ids: torch.Tensor | None = None):
        super().__init__()
        c = self.config = config
        d, kv = c.hidden, c.kv_heads * c.head_dim
        self.fc = torch.nn.Linear(2 * d, d, bias=True)
        self.input_norm = torch.nn.Parameter(torch.ones(d))
        self.q = torch.nn.Linear(d, d, bias=False)
        self.k = torch.nn.Linear(d, kv, bias=False)
        self.v = torch.nn.Linear(d, kv, bias=False)
        self.o = torch.nn.Linear(d, d, bias=False)
        self.post_norm = torch.nn.Parameter(torch.ones(d))
        self.gate = torch.nn.Linear(d, c.intermediate, bias=False)
        self.up = torch.nn.Linear(d, c.intermediate, bias=False)
        self.down = torch.nn.Linear(c.intermediate, d, bias=False)
        if c.fused:
            self.fuse_fc = torch.nn.Linear(len(c.layers) * d, d, bias=False)
            self.out_norm = torch.nn.Parameter(torch.ones(d))
        # the readout's token ids (a subset of the target's vocabulary), or None for all of it
        self.register_buffer("vocab_ids", None if vocab_ids is None else vocab_ids.long(), persistent=False)
        inv = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float32) / c.head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)
        for lin in (self.fc, self.q, self.k, self.v, self.o, self.gate, self.up, self.down):
            torch.nn.init.normal_(lin.weight, std=0.02)
        torch.nn.init.zeros_(self.fc.bias)
        if c.fused:
            torch.nn.init.normal_(self.fuse_fc.weight, std=0.02)

    def fuse(self, states: torch.Tensor) -> torch.Tensor:
        """The target's states of `config.layers`, concatenated [..., n * d] -> the feature the head reads."""
        return self.fuse_fc(states) if self.config.fused else states

    def readout_input(self, out: torch.Tensor) -> torch.Tensor:
        """What the readout reads from the head's output (normed for a fused head)."""
        return rms_norm(out, self.out_norm, self.config.eps) if self.config.fused else out

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = positions.float()[..., None] * self.inv_freq
        angles = torch.cat([angles, angles], -1)
        return angles.cos(), angles.sin()

    def forward(self, emb: torch.Tensor, feat: torch.Tensor, positions: torch.Tensor,
                past: tuple[torch.Tensor, torch.Tensor] | None = None, mask: torch.Tensor | None = None,
                causal: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """emb, feat: [B, T, d]; positions: [T] or [B, T]. `past` = (keys, values) [B, kv_heads, S, hd]
        already rotated; `mask` [T, S + T] bool (True = may attend) or `causal` with no past.
        Returns (predicted features [B, T, d], keys, values of these T rows)."""
        c = self.config
        B, T, _ = emb.shape
        x = self.fc(torch.cat([emb, feat], -1))
        h = rms_norm(x, self.input_norm, c.eps)
        q = self.q(h).view(B, T, c.heads, c.head_dim).transpose(1, 2)
        k = self.k(h).view(B, T, c.kv_heads, c.head_dim).transpose(1, 2)
        v = self.v(h).view(B, T, c.kv_heads, c.head_dim).transpose(1, 2)
        cos, sin = self.rope(positions)
        if cos.dim() == 3:
            cos, sin = cos[:, None], sin[:, None]
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        keys, values = (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))
        rep = c.heads // c.kv_heads
        attn = F.scaled_dot_product_attention(
            q, keys.repeat_interleave(rep, 1), values.repeat_interleave(rep, 1),
            attn_mask=mask, is_causal=causal and mask is None and past is None)
        x = x + self.o(attn.transpose(1, 2).reshape(B, T, -1))
        h = rms_norm(x, self.post_norm, c.eps)
        x = x + self.down(F.silu(self.gate(h)) * self.up(h))
        return x, k, v

    # --- weights: only the head's own parameters, plus the readout's token ids ----------------
    def save(self, path: str | Path, meta: dict | None = None, dtype: torch.dtype = torch.float16) -> Path:
        from ..atomic import atomic_save

        tensors = {k: v.detach().to("cpu", dtype) for k, v in self.state_dict().items()}
        if self.vocab_ids is not None:
            tensors["vocab_ids"] = self.vocab_ids.int().cpu()
        info = {"config": json.dumps(asdict(self.config)), **{k: str(v) for k, v in (meta or {}).items()}}
        return atomic_save(tensors, Path(path), metadata=info)

    @classmethod
    def load(cls, path: str | Path) -> "FeatureHead":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw = json.loads(f.metadata()["config"])
            config = HeadConfig(**{**raw, "layers": tuple(raw.get("layers", (-1,)))})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        vocab_ids = tensors.pop("vocab_ids", None)
        head = cls(config, vocab_ids)
        head.load_state_dict({k: v.float() for k, v in tensors.items()})
        return head.eval()


def readout_weight(target_model: torch.nn.Module, vocab_ids: torch.Tensor | None) -> torch.Tensor:
    """The target's LM head rows the head reads tokens through (a copy of the subset, or the head itself)."""
    weight = target_model.get_output_embeddings().weight.detach()
    return weight if vocab_ids is None else weight.index_select(0, vocab_ids.to(weight.device)).contiguous()


class PackedLinear:
    """y = x @ W.T (+ bias) for 2-D x, optionally pre-packed for oneDNN (see ../shared NOTES: the
    packed product streams the weight about twice as fast on this CPU), with fused post-ops."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, pack: bool):
        self.weight = weight.detach().contiguous()  # in the dtype it is given (the target's)
        self.bias = None if bias is None else bias.detach().contiguous()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, None) if pack else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def silu(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "swish", [], "")
        return F.silu(F.linear(x, self.weight, self.bias))

    def times(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """other * (x @ W.T)"""
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(x, other, self.packed, self.bias, "mul")
        return F.linear(x, self.weight, self.bias).mul_(other)

    def plus(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """other + x @ W.T"""
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(x, other, self.packed, self.bias, "add")
        return F.linear(x, self.weight, self.bias).add_(other)


class LeanHead:
    """The head's inference forward without nn.Module overhead: fused q/k/v and gate/up, the norms'
    weights folded into the matrices that read them, the residual adds fused into the GEMMs and
    every matrix pre-packed for oneDNN on the CPU (PackedLinear). Same function as
    FeatureHead.forward (fp32, within rounding)."""

    def __init__(self, head: FeatureHead, readout: torch.Tensor, pack: bool | None = None):  # noqa: N806
        Linear = PackedLinear
        c = self.config = head.config
        pack = (readout.device.type == "cpu" and readout.dtype == torch.float32) if pack is None else pack
        dtype = readout.dtype  # the target's: the head computes in it, beside the target
        w = {k: v.detach().to(dtype) for k, v in head.state_dict().items()}
        self.fc = Linear(w["fc.weight"], w["fc.bias"], pack)
        self.qkv = Linear(torch.cat([w["q.weight"], w["k.weight"], w["v.weight"]]) * w["input_norm"], None, pack)
        self.o = Linear(w["o.weight"], None, pack)
        self.gate = Linear(w["gate.weight"] * w["post_norm"], None, pack)
        self.up = Linear(w["up.weight"] * w["post_norm"], None, pack)
        self.down = Linear(w["down.weight"], None, pack)
        self.readout = Linear(readout, None, pack)
        self.inv_freq = head.inv_freq
        self.q_dim, self.kv_dim = c.heads * c.head_dim, c.kv_heads * c.head_dim

    def __call__(self, emb: torch.Tensor, feat: torch.Tensor, positions: torch.Tensor, keys: torch.Tensor,
                 values: torch.Tensor, length: int, mask: torch.Tensor | None):
        """emb, feat [T, d]; keys/values [1, kv_heads, capacity, hd] with `length` rows filled: this
        writes the T new rows after them. Returns the predicted features [T, d]."""
        c = self.config
        T = emb.shape[0]
        x = self.fc(torch.cat([emb, feat], -1))
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c.eps)
        qkv = self.qkv(h)
        q = qkv[:, : self.q_dim].view(T, c.heads, c.head_dim).transpose(0, 1)
        k = qkv[:, self.q_dim: self.q_dim + self.kv_dim].view(T, c.kv_heads, c.head_dim).transpose(0, 1)
        v = qkv[:, self.q_dim + self.kv_dim:].view(T, c.kv_heads, c.head_dim).transpose(0, 1)
        angles = positions.float()[:, None] * self.inv_freq
        angles = torch.cat([angles, angles], -1)
        cos, sin = angles.cos().to(emb.dtype), angles.sin().to(emb.dtype)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        keys[0, :, length: length + T] = k
        values[0, :, length: length + T] = v
        attn = F.scaled_dot_product_attention(q[None], keys[:, :, : length + T], values[:, :, : length + T],
                                              attn_mask=mask, enable_gqa=True)
        x = self.o.plus(attn[0].transpose(0, 1).reshape(T, -1), x)
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c.eps)
        return self.down.plus(self.up.times(h, self.gate.silu(h)), x)


def _bind(head: FeatureHead, target_model: torch.nn.Module, lean: bool):
    """(the head in the target's device and dtype, its readout rows, its lean forward)."""
    embed = target_model.get_input_embeddings().weight
    head = head.eval().to(embed.device, embed.dtype)
    readout = readout_weight(target_model, head.vocab_ids)
    if head.config.fused:  # fold the output norm's weight into the readout; logits() applies its scale
        readout = readout * head.out_norm.detach().to(readout)
    return head, readout, LeanHead(head, readout) if lean else None


# target model -> {(id(head), lean): (head, bound parts)}; weak on the model, so a target the model cache
# lets go of is not kept alive by its heads' bindings
_BOUND: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def bind(head: FeatureHead, target_model: torch.nn.Module, lean: bool = True):
    """_bind, shared by every drafter of a head loaded from a file (`load_shared`): the readout rows
    and the packed matrices are read-only at inference and cost ~85 MB for SmolLM2, which a server
    would otherwise copy for every run (and `auto` for each of its head arms)."""
    if not getattr(head, "shared", False):
        return _bind(head, target_model, lean)
    bound = _BOUND.setdefault(target_model, {})
    hit = bound.get((id(head), lean))
    if hit is None or hit[0] is not head:
        copy = FeatureHead(head.config, head.vocab_ids)  # the file's head stays in fp32 for other targets
        copy.load_state_dict(head.state_dict())
        hit = bound[id(head), lean] = (head, _bind(copy, target_model, lean))
    return hit[1]


@functools.lru_cache(maxsize=8)
def _load_file(path: str, stamp: tuple[int, int]) -> FeatureHead:
    head = FeatureHead.load(path)
    head.shared = True  # its drafters share one binding per target (`bind`)
    return head


def load_shared(path: str | Path) -> FeatureHead:
    """A head from a file, loaded once per version of the file (its drafters only read it)."""
    stat = Path(path).stat()
    return _load_file(str(Path(path).resolve()), (stat.st_mtime_ns, stat.st_size))


class HeadLM:
    """The head with a KV cache, behind CachedLM's interface, so the tree builders can drive it.

    Pair j = (f_j, x_{j+1}) sits at position j and outputs the predicted f_{j+1}, whose readout is
    the distribution of x_{j+2}. For committed text x_0 .. x_{L-1} the root logits come from pair
    L - 2. f_j is the target's feature where known (`set_features`), else the head's own output
    of pair j - 1; tree node n's pair is (output of its parent, its token) at position L - 1 + depth.
    """

    def __init__(self, head: FeatureHead, target_model: torch.nn.Module, vocab: int, lean: bool = True):
        self.embed = target_model.get_input_embeddings().weight.detach()
        self.device = self.embed.device  # everything the head keeps lives beside the target's weights,
        self.dtype = self.embed.dtype  # in their dtype
        self.head, self.readout, self.lean = bind(head, target_model, lean)
        self.vocab_ids = None if head.vocab_ids is None else head.vocab_ids.to(self.device)
        self.vocab = vocab
        self.context = 1 << 30
        self.forward_seconds = 0.0
        self.forwards = 0
        self.reset()

    def reset(self) -> None:
        c = self.head.config
        dev = self.device
        kw = dict(device=dev, dtype=self.dtype)
        self.feats = torch.empty(0, c.hidden, **kw)  # the target's features f_0 .. f_{n-1} (fused)
        self.kv_buf = (torch.zeros(1, c.kv_heads, 512, c.head_dim, **kw), torch.zeros(1, c.kv_heads, 512, c.head_dim, **kw))
        self.length = 0  # rows of kv_buf in use: linear pairs, then tree nodes
        self.outs = torch.empty(0, c.hidden, **kw)  # output of each cached linear pair
        self.lin: list[int] = []  # tokens x_0 .. x_m: cached pairs are 0 .. m - 1
        self.true_pairs = 0  # leading cached pairs that were fed the target's own feature
        self.tree_tokens: list[int] = []
        self.tree_parents: list[int] = []
        self.node_out = torch.empty(0, c.hidden, **kw)

    # --- the target's features --------------------------------------------------------------
    def set_features(self, start: int, hidden: torch.Tensor) -> None:
        """The target's states of positions start .. start + n - 1 (the head's layers concatenated);
        drops pairs built on guesses."""
        hidden = hidden.detach().to(self.device, self.dtype)
        if self.head.config.fused:
            hidden = self.head.fuse(hidden)
        if start > len(self.feats):
            raise RuntimeError(f"target features from position {start}, but only {len(self.feats)} known")
        self.feats = torch.cat([self.feats[:start], hidden])
        self._crop(min(self.true_pairs, start))  # pairs fed a guessed feature must be recomputed
        self.drop_tree()

    def known(self) -> int:
        return len(self.feats)

    def _crop(self, pairs: int) -> None:
        """Keep linear pairs 0 .. pairs - 1 (and no tree nodes)."""
        pairs = min(pairs, self.outs.shape[0])
        self.length = pairs
        self.outs = self.outs[:pairs]
        self.lin = self.lin[: pairs + 1] if pairs else []
        self.true_pairs = min(self.true_pairs, pairs)
        self.tree_tokens, self.tree_parents = [], []
        self.node_out = self.node_out[:0]

    def drop_tree(self) -> None:
        self._crop(self.outs.shape[0])

    def accept(self, path: list[int]) -> None:
        """Accepted drafts get the target's true features next step: nothing of the tree is kept."""
        self.drop_tree()

    def cache_length(self) -> int:
        return self.length

    # --- logits ------------------------------------------------------------------------------
    def logits(self, out: torch.Tensor) -> torch.Tensor:
        """Readout rows [n, d] -> fp32 logits over the target's whole vocabulary (-inf off the subset)."""
        if self.head.config.fused:
            out = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + self.head.config.eps)
        sub = self.lean.readout(out) if self.lean is not None else F.linear(out, self.readout)
        if self.vocab_ids is None:
            return sub.float()
        full = torch.full((out.shape[0], self.vocab), float("-inf"), device=out.device)
        full[:, self.vocab_ids] = sub.float()
        return full

    def _run(self, tokens: list[int], feats: torch.Tensor, positions: list[int],
             mask: torch.Tensor | None) -> torch.Tensor:
        """Feed pairs (feats[i], tokens[i]) at `positions` after the cached rows; their outputs."""
        n = len(tokens)
        keys, values = self.kv_buf
        if self.length + n > keys.shape[2]:  # grow the cache (doubling)
            grow = max(keys.shape[2], self.length + n - keys.shape[2])  # double, or more for a long prompt
            self.kv_buf = tuple(torch.cat([b, b.new_zeros(b.shape[0], b.shape[1], grow, b.shape[3])], 2)
                                for b in self.kv_buf)
            keys, values = self.kv_buf
        emb = self.embed[torch.tensor(tokens, device=self.device)]
        pos = torch.tensor(positions, device=self.device)
        if self.lean is not None:
            out = self.lean(emb, feats, pos, keys, values, self.length, mask)
        else:
            past = (keys[:, :, : self.length], values[:, :, : self.length])
            out, k, v = self.head(emb[None], feats[None], pos, past, mask)
            keys[:, :, self.length: self.length + n], values[:, :, self.length: self.length + n] = k, v
            out = out[0]
        self.length += n
        return out

    @torch.inference_mode()
    def forward(self, committed: list[int], tokens: list[int] = (), parents: list[int] = (),
                hidden_layers: tuple[int, ...] = ()) -> tuple[torch.Tensor | None, torch.Tensor]:
        start = time.perf_counter()
        tokens, parents = list(tokens), list(parents)
        root = None
        if self.tree_tokens:
            if committed != self.lin:
                raise RuntimeError("extend a tree only on the text it was started on")
        else:
            last = self._linear(list(committed))
            if not tokens:
                root = self.logits(last)[0]
        node_logits = (self._nodes(len(committed), tokens, parents) if tokens
                       else torch.empty(0, self.vocab, device=self.device))
        self.forward_seconds += time.perf_counter() - start
        return root, node_logits

    def _linear(self, committed: list[int]) -> torch.Tensor:
        """Bring the cache to pairs 0 .. L - 2 of `committed`; the output row of the last one."""
        from ..lm import common_prefix

        n = len(committed) - 1  # pairs needed
        if n < 1:
            raise RuntimeError("the head needs at least two committed tokens")
        self._crop(max(0, min(common_prefix(self.lin, committed) - 1, n)))
        j = self.outs.shape[0]
        while j < n:
            if j < len(self.feats):  # a run of pairs with the target's features, one forward
                end, feats, true = min(n, len(self.feats)), self.feats[j:min(n, len(self.feats))], True
            else:  # a pair on the head's own guess: the output of pair j - 1
                if j == 0:
                    raise RuntimeError("no feature for the first position")
                end, feats, true = j + 1, self.outs[j - 1:j], False
            out = self._run(committed[j + 1:end + 1], feats, list(range(j, end)), self._causal(j, end - j))
            self.forwards += 1
            self.outs = torch.cat([self.outs, out])
            if true and self.true_pairs == j:
                self.true_pairs = end
            self.lin = list(committed[: end + 1])
            j = end
        return self.outs[n - 1:n]

    def _causal(self, cached: int, n: int) -> torch.Tensor | None:
        if n == 1:
            return None  # one new row sees everything cached
        allowed = torch.ones(n, cached + n, dtype=torch.bool, device=self.device)
        allowed[:, cached:] = torch.tril(torch.ones(n, n, dtype=torch.bool, device=self.device))
        return allowed

    def _nodes(self, committed_len: int, tokens: list[int], parents: list[int]) -> torch.Tensor:
        n_old = len(self.tree_tokens)
        all_parents = self.tree_parents + parents
        base = self.length - n_old  # linear pairs in the cache
        feats = torch.stack([self.outs[-1] if p < 0 else self.node_out[p] for p in parents])
        positions = [committed_len - 2 + d for d in depths(all_parents)[n_old:]]
        anc = ancestor_mask(all_parents)[n_old:].to(self.device)
        allowed = torch.cat([torch.ones(len(tokens), base, dtype=torch.bool, device=self.device), anc], 1)
        out = self._run(tokens, feats, positions, allowed)
        self.forwards += 1
        self.node_out = torch.cat([self.node_out, out])
        self.tree_tokens += tokens
        self.tree_parents = all_parents
        return self.logits(out)


class FeatureDrafter(BuilderHints):
    """The EAGLE-style drafter: a trained FeatureHead fed the target's own features (see module doc)."""

    def __init__(self, head: FeatureHead, target_model: torch.nn.Module, builder, name: str = "eagle",
                 greedy_only: bool = False):
        self.reads_target: tuple[int, ...] = tuple(head.config.layers)
        self.lm = HeadLM(head, target_model, int(target_model.config.vocab_size))
        self.builder = builder
        self.name = name
        self.greedy_only = greedy_only
        self.behind: list[tuple[int, torch.Tensor]] = []  # (start, states) handed over while not drafting

    @property
    def forward_seconds(self) -> float:
        return self.lm.forward_seconds

    def propose(self, ids: list[int], warp: Warp, gen: torch.Generator, stop: StopRule | None = None) -> DraftTree:
        self._catch_up()
        if len(ids) < 2 or self.lm.known() < len(ids) - 1:  # no target features yet (step 0): nothing
            tree = DraftTree()
            if stop is not None:
                tree.stop = StopNote(stop.name, 0, "no target features yet", stop.state()).as_dict()
            return tree
        self.lm.drop_tree()
        return self.builder(self.lm, ids, warp, gen, stop)

    def learn(self, tree: DraftTree, verdict: Verdict, target: TargetView | None = None) -> None:
        self.lm.drop_tree()
        if target is not None:
            self.follow(target)
        self._catch_up()

    def follow(self, target: TargetView) -> bool:
        """The text moved on under another drafter's draft (`auto` switched away): keep the target's states
        of what was committed, so the head can draft again later. They are only kept here (the fusion and
        the head's cache catch up in one pass when it drafts again): following costs next to nothing."""
        if not all(layer in target.hidden for layer in self.reads_target):
            return False
        rows = torch.cat([target.hidden[layer] for layer in self.reads_target], -1)
        behind = self.behind
        if behind and behind[-1][0] + len(behind[-1][1]) == target.start:  # contiguous: one pass later
            behind[-1] = (behind[-1][0], torch.cat([behind[-1][1], rows]))
        else:
            behind.append((target.start, rows))
        return True

    def _catch_up(self) -> None:
        for start, rows in self.behind:
            self.lm.set_features(start, rows)
        self.behind = []

    def reset(self) -> None:
        self.lm.reset()
        self.behind = []


def default_weights(target: str = "smollm2-135m", kind: str = "eagle") -> Path:
    """The shipped head of a recipe: eagle (EAGLE-1/2, last-layer features) or eagle3 (fused layers, TTT)."""
    return ASSETS / f"{kind}-{Path(target).name}.safetensors"


def make_feature_drafter(target_model: torch.nn.Module, weights_path: str | Path | None = None,
                         shape: str = "chain", draft_len: int = 4, target: str = "smollm2-135m",
                         head: FeatureHead | None = None, kind: str = "eagle") -> FeatureDrafter:
    """An EAGLE drafter for `target_model` in any registered draft shape (chain, gumbel-top-k, beam,
    specinfer, dynamic), from shipped weights (assets/drafters/eagle-<target>.safetensors) or a head."""
    from .strategies import STRATEGIES

    if head is None:
        path = Path(weights_path) if weights_path else default_weights(target, kind)
        if not path.exists():
            raise ValueError(f"no trained head at {path}; train one with `python -m specviz train-drafter {kind}`")
        head = load_shared(path)
    if head.config.hidden != target_model.config.hidden_size or head.config.vocab != target_model.config.vocab_size:
        raise ValueError("the trained head does not fit this target (hidden size or vocabulary differ)")
    entry = STRATEGIES.get(shape)
    name = "eagle-3" if head.config.fused else "eagle"
    return FeatureDrafter(head, target_model, entry.build(draft_len), f"{name} ({shape})", greedy_only=entry.greedy_only)


def param_count(head: FeatureHead) -> int:
    return sum(p.numel() for p in head.parameters())


__all__ = ["FeatureHead", "HeadConfig", "HeadLM", "FeatureDrafter", "make_feature_drafter", "default_weights",
           "math"]
