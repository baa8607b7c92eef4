"""DEL: self-speculation from the target's own first L layers, with the exit layer chosen per context.

LayerSkip-style self-speculation drafts with the target's first L decoder layers (the same weights)
and reads tokens out of the state after layer L. DEL (Dynamic Exit Layer, Zarch et al. 2025)
chooses L, and how many tokens to draft, per context: it estimates every candidate layer's
acceptance rate from the hidden states the verification forward computes anyway, and takes the
(layer, length) that maximizes the expected accepted tokens per unit of cost.

SmolLM2-135M's raw early layers agree with its full model only 1-29% of the time (layers 12-22 of
30), so each candidate exit layer gets a light trained **exit adapter** (ExitAdapters):

    f = RMSNorm_out(h + W (RMSNorm_in(h)))          h = the residual stream after layer L
    logits = f @ E_K.T                              E_K = the target's tied LM head, K kept rows

W is a full hidden x hidden matrix (zero at init, so an untrained adapter is the raw early exit
through the target's final norm). The readout is restricted to the same K = 8,192 most frequent
tokens as the other trained drafters, -inf elsewhere, so q is a proper distribution over the whole
vocabulary and speculative sampling stays exact (a token outside it is never drafted; the residual
keeps p's mass there). Shipped weights hold only the adapters' own parameters and the kept ids.

**The KV cache (DEL's reuse trick, done through TargetView).** The drafter keeps its own KV cache
for layers 0 .. Lmax - 1 (Lmax = the deepest candidate). It never runs those layers over committed
text: it asks the engine for the target's hidden_states[0 .. Lmax] of the committed positions
(`reads_target`), and layer l's keys and values at a position are a projection of
hidden_states[l] there (its input), one fused q/k/v GEMM per layer and no attention or MLP. So the
verification forward's work *is* the draft cache, bit for bit what the first L layers would
compute (up to the tree mask's rounding). Copying the engine's own KV tensors instead would tie
the drafter to the target cache's layout (fast path vs transformers, crop/compact timing inside
the engine), which the Drafter contract does not expose; the hidden states it does expose give the
same values for the price of Lmax small projections per committed token. Only the last committed
token (the target's own token of the step, not fed yet) is run through L layers at draft time,
then each drafted token: k tokens cost k forwards of L layers.

**Choosing (L, k).** Per candidate layer c an acceptance estimate a_c (exponential average; a
context-free prior from the training card at each new prompt):

- the chosen layer's drafts: at each verified parent, sum_x min(p(x), q(x)) with the run's
  warp (greedy: 1 when the argmax agrees);
- a probe: after each step one candidate (round-robin) reads the target's hidden state of the last
  committed position through its adapter and is scored the same way against the target's root
  row (DEL scores all candidates at every token; on this CPU a full readout is ~3 % of a target
  forward each, so `probes_per_step` is 1 by default).

A drafted token at layer c costs cost_c = (c layer + readout) / (all layers + LM head) of a target
forward (from the model's shapes), and each verified extra row VERIFY_ROW. Expected tokens per step
with k drafts at acceptance a: 1 + a + a^2 + ... + a^k. The drafter takes the (c, k) maximizing
(1 + sum_i a_c^i) / (1 + k (cost_c + VERIFY_ROW)); k = 0 (no draft, an ordinary step) when nothing
beats 1. The choice is recorded in the round's stop note (Drafted.stop: exit_layer, the estimate,
the expected tokens per cost), which the step views print.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import fast
from ..fast.forward import causal_mask, rotary_factors, rotate
from ..paths import DRAFTERS as ASSETS
from ..sampling import Warp, entropy, probs, sample
from ..stop_rules import StopNote, StopRule
from ..tree import DraftTree
from ..verify import Verdict
from . import TargetView

FORMAT = "specviz-del-adapters/1"
VERIFY_ROW = 0.05  # extra cost of one more verified row, in target forwards (a chain of 5 rows ~ 1.2)
DECAY = 0.7  # weight of the old estimate in each update of a layer's acceptance estimate


def rms(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return out if weight is None else out * weight


class ExitAdapters(torch.nn.Module):
    """One exit adapter per candidate layer: f = RMSNorm_out(h + W RMSNorm_in(h)) (see the module doc)."""

    def __init__(self, hidden: int, layers: list[int] | tuple[int, ...], vocab_ids: torch.Tensor, eps: float = 1e-5,
                 target_vocab: int = 0, final_norm: torch.Tensor | None = None):
        super().__init__()
        self.layers = tuple(int(x) for x in layers)
        self.hidden, self.eps, self.target_vocab = hidden, float(eps), int(target_vocab)
        self.norm_in = torch.nn.ParameterList([torch.nn.Parameter(torch.ones(hidden)) for _ in self.layers])
        self.proj = torch.nn.ModuleList([torch.nn.Linear(hidden, hidden, bias=False) for _ in self.layers])
        out = final_norm.detach().float().clone() if final_norm is not None else torch.ones(hidden)
        self.norm_out = torch.nn.ParameterList([torch.nn.Parameter(out.clone()) for _ in self.layers])
        for p in self.proj:
            torch.nn.init.zeros_(p.weight)
        self.register_buffer("vocab_ids", vocab_ids.long(), persistent=False)
        self.prior: dict[int, dict[str, float]] = {}  # layer -> held-out top1 / overlap (from training)

    @classmethod
    def for_target(cls, target_model: torch.nn.Module, layers, vocab_ids: torch.Tensor) -> "ExitAdapters":
        c = target_model.config
        return cls(c.hidden_size, layers, vocab_ids, float(c.rms_norm_eps), int(c.vocab_size),
                   target_model.model.norm.weight)

    def index(self, layer: int) -> int:
        return self.layers.index(layer)

    def features(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """What the readout reads for adapter i (position in self.layers) from states h [..., d]."""
        x = h + self.proj[i](rms(h, self.norm_in[i], self.eps))
        return rms(x, self.norm_out[i], self.eps)

    # --- weights: only the adapters' own parameters and the kept ids -------------------------
    def save(self, path: str | Path, meta: dict | None = None, dtype: torch.dtype = torch.float16) -> Path:
        from ..atomic import atomic_save

        tensors = {k: v.detach().to(dtype) for k, v in self.state_dict().items()}
        tensors["vocab_ids"] = self.vocab_ids.int()
        config = {"hidden": self.hidden, "layers": list(self.layers), "eps": self.eps, "target_vocab": self.target_vocab}
        prior = {str(k): v for k, v in self.prior.items()}
        info = {"format": FORMAT, "config": json.dumps(config), "prior": json.dumps(prior),
                "meta": json.dumps(meta or {})}
        return atomic_save(tensors, Path(path), metadata=info)

    @classmethod
    def load(cls, path: str | Path) -> "ExitAdapters":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            info = f.metadata() or {}
            if info.get("format") != FORMAT:
                raise ValueError(f"{path} is not a DEL adapter file ({FORMAT})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        config = json.loads(info["config"])
        vocab_ids = tensors.pop("vocab_ids").long()
        adapters = cls(config["hidden"], config["layers"], vocab_ids, config["eps"], config["target_vocab"])
        adapters.load_state_dict({k: v.float() for k, v in tensors.items()})
        adapters.prior = {int(k): v for k, v in json.loads(info.get("prior", "{}")).items()}
        adapters.meta = json.loads(info.get("meta", "{}"))
        return adapters.eval()


def param_count(adapters: ExitAdapters) -> int:
    return sum(p.numel() for p in adapters.parameters())


def run_layers(fm: fast.FastModel, kv: fast.StaticKV, x: torch.Tensor, positions: torch.Tensor, upto: int,
               collect: tuple[int, ...] = ()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """The target's decoder layers 0 .. upto - 1 over rows x [n, d] (embeddings) at cache slots
    kv.length.. (slot = position), causal; writes their keys/values. Returns the residual stream
    after layer `upto` and, for each l in `collect`, the stream after layer l (hidden_states[l])."""
    n = x.shape[0]
    start = kv.length
    total = start + n
    kv.reserve(total)
    allowed = causal_mask(n, total, x.device) if n > 1 else None
    cos, signed_sin = rotary_factors(fm, positions)
    hq, hkv, d = fm.n_heads, fm.n_kv_heads, fm.head_dim
    half = d // 2
    width = (x.shape[1],)
    out = {0: x} if 0 in collect else {}
    for i in range(upto):
        layer = fm.layers[i]
        (keys, values), (keys_in, values_in) = kv.read[i], kv.write[i]
        q, k, v = layer.qkv.split(torch.rms_norm(x, width, layer.norm_in, layer.eps_in))
        rotate(k.view(n, hkv, d), cos, signed_sin, half, out=keys_in[start:total])
        values_in[start:total] = v.view(n, hkv, d)
        q = rotate(q.view(n, hq, d), cos, signed_sin, half)
        a = F.scaled_dot_product_attention(q.unsqueeze(0).transpose(1, 2), keys[:, :, :total], values[:, :, :total],
                                           attn_mask=allowed, scale=fm.scale, enable_gqa=True)
        x = layer.o.plus(a.transpose(1, 2).reshape(n, hq * d), x)
        h = torch.rms_norm(x, width, layer.norm_post, layer.eps_post)
        x = layer.down.plus(layer.up.times(h, layer.gate.silu(h)), x)
        if i + 1 in collect:
            out[i + 1] = x
    kv.length = total
    return x, out


@torch.inference_mode()
def exit_states(target_model: torch.nn.Module, tokens: list[int], layers: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """hidden_states[l] of a whole sequence for each l in `layers` (teacher forcing; only as deep as needed)."""
    fm = fast.prepare(target_model)
    kv = fast.StaticKV(max(layers), fm.n_kv_heads, fm.head_dim, fm.device, fm.dtype, capacity=len(tokens))
    ids = torch.tensor(tokens, device=fm.device)
    _, out = run_layers(fm, kv, F.embedding(ids, fm.embed), torch.arange(len(tokens), device=fm.device),
                        max(layers), tuple(layers))
    return out


class ExitLM:
    """The target's first layers with the drafter's own KV cache (filled from the target's states)."""

    def __init__(self, target_model: torch.nn.Module, adapters: ExitAdapters):
        from .feature_head import PackedLinear

        self.fm = fast.prepare(target_model)
        self.adapters = adapters.eval()
        self.lmax = max(adapters.layers)
        if self.lmax > len(self.fm.layers):
            raise ValueError(f"exit layer {self.lmax} is deeper than the target's {len(self.fm.layers)} layers")
        context = int(getattr(target_model.config, "max_position_embeddings", 0) or 1 << 30)
        self.kv = fast.StaticKV(self.lmax, self.fm.n_kv_heads, self.fm.head_dim, self.fm.device, self.fm.dtype,
                                limit=context)
        self.vocab = int(target_model.config.vocab_size)
        self.vocab_ids = adapters.vocab_ids.to(self.fm.device)
        pack = self.fm.packed
        rows = target_model.get_output_embeddings().weight.detach().index_select(0, self.vocab_ids)
        self.readout = PackedLinear(rows, None, pack)
        eps = adapters.eps
        self.eps = eps
        # per adapter: W with RMSNorm_in folded into its columns, and RMSNorm_out's weight
        # the adapters load on the CPU in fp32; they run beside the target, in its dtype
        dev, dt = self.fm.device, self.fm.dtype
        self.proj = [PackedLinear((adapters.proj[i].weight.detach().float() * adapters.norm_in[i].detach().float()
                                   ).to(dev, dt), None, pack) for i in range(len(adapters.layers))]
        self.norm_out = [w.detach().to(dev, dt) for w in adapters.norm_out]
        self.known = 0  # leading positions whose keys/values (all lmax layers) came from the target

    def reset(self) -> None:
        self.kv.length = 0
        self.known = 0

    def reserve(self, positions: int) -> None:
        self.kv.reserve(positions)

    @torch.inference_mode()
    def fill(self, start: int, hidden: dict[int, torch.Tensor]) -> None:
        """Keys/values of positions start.. for every layer from the target's hidden_states[l] there."""
        if start > self.known:
            raise RuntimeError(f"target states from position {start}, but only {self.known} known")
        n = hidden[0].shape[0]
        self.kv.length = start
        self.kv.reserve(start + n)
        fm = self.fm
        hkv, d = fm.n_kv_heads, fm.head_dim
        cos, signed_sin = rotary_factors(fm, torch.arange(start, start + n, device=fm.device))
        for i in range(self.lmax):
            layer = fm.layers[i]
            x = hidden[i].to(fm.dtype)
            _, k, v = layer.qkv.split(torch.rms_norm(x, (x.shape[1],), layer.norm_in, layer.eps_in))
            keys_in, values_in = self.kv.write[i]
            rotate(k.reshape(n, hkv, d), cos, signed_sin, d // 2, out=keys_in[start:start + n])
            values_in[start:start + n] = v.reshape(n, hkv, d)
        self.kv.length = self.known = start + n

    def step(self, token: int, position: int, layer: int) -> torch.Tensor:
        """Feed one token at `position` (= the next cache slot) through layers 0 .. layer - 1: its state."""
        if position != self.kv.length:
            raise RuntimeError(f"position {position} is not the next cache slot {self.kv.length}")
        ids = torch.tensor([token], device=self.fm.device)
        x, _ = run_layers(self.fm, self.kv, F.embedding(ids, self.fm.embed),
                          torch.tensor([position], device=self.fm.device), layer)
        return x

    def logits(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """[n, d] states after `layer` -> fp32 logits over the whole vocabulary (-inf off the kept ids)."""
        i = self.adapters.index(layer)
        h = h.to(self.fm.dtype)
        x = self.proj[i].plus(rms(h, None, self.eps), h)
        sub = self.readout(rms(x, self.norm_out[i], self.eps))
        full = torch.full((h.shape[0], self.vocab), float("-inf"), device=sub.device)
        full[:, self.vocab_ids] = sub.float()
        return full


def layer_cost(config, layer: int, kept: int) -> float:
    """A drafted token at exit `layer`, in target forwards: (layer decoder layers + K-row readout) /
    (all decoder layers + the full LM head), from multiply-accumulates per token."""
    d, inter = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (d // config.num_attention_heads)
    per_layer = d * (2 * d + 2 * kv) + 3 * d * inter
    full = config.num_hidden_layers * per_layer + d * config.vocab_size
    return (layer * per_layer + d * kept) / full


class DELDrafter:
    """Chains from the target's first L layers + the exit adapter for L; L and the length per context."""

    greedy_only = False

    def __init__(self, target_model: torch.nn.Module, adapters: ExitAdapters, draft_len: int = 4, name: str = "del",
                 probes_per_step: int = 1, verify_row: float = VERIFY_ROW, decay: float = DECAY,
                 layers: tuple[int, ...] | None = None, fixed: tuple[int, int] | None = None):
        self.lm = ExitLM(target_model, adapters)
        self.layers = tuple(layers or adapters.layers)
        self.reads_target = tuple(range(self.lm.lmax + 1))
        self.draft_len = draft_len
        self.name = name
        self.probes_per_step = probes_per_step
        self.verify_row, self.decay = verify_row, decay
        self.fixed = fixed  # (layer, length): LayerSkip's static choice instead of DEL's (tests, comparisons)
        kept = len(adapters.vocab_ids)
        self.cost = {c: layer_cost(target_model.config, c, kept) for c in self.layers}
        self.forward_seconds = 0.0
        self.warp = Warp()
        self.chosen: list[int | None] = []  # exit layer of each step of the current run (None: no draft)
        self.reset()

    def reset(self) -> None:
        self.lm.reset()
        self.estimate = {c: self._prior(c) for c in self.layers}
        self.samples = {c: 0 for c in self.layers}
        self.probe_at = 0
        self.chosen = []
        self.last: tuple[int | None, int] = (None, 0)

    def _prior(self, layer: int) -> float:
        p = self.lm.adapters.prior.get(layer, {})
        key = "top1" if self.warp.greedy else "overlap"
        return float(p.get(key, p.get("top1", 0.3)))

    def choose(self, cap: int) -> tuple[int | None, int, float]:
        """(exit layer, draft length, expected tokens per unit cost): the best over candidates and
        lengths 1 .. cap, or (None, 0, 1.0) when no draft beats an ordinary step."""
        best = (None, 0, 1.0)
        if self.fixed is not None:
            return self.fixed[0], min(self.fixed[1], cap), 0.0
        for c in self.layers:
            a = min(max(self.estimate[c], 0.0), 0.999)
            gain, term = 1.0, 1.0
            for k in range(1, cap + 1):
                term *= a
                gain += term
                value = gain / (1.0 + k * (self.cost[c] + self.verify_row))
                if value > best[2] + 1e-9:
                    best = (c, k, value)
        return best

    @torch.inference_mode()
    def propose(self, ids: list[int], warp: Warp, gen: torch.Generator, stop: StopRule | None = None) -> DraftTree:
        if warp.greedy != self.warp.greedy:  # the priors differ for greedy and sampled runs
            self.warp = warp
            self.estimate = {c: self._prior(c) if self.samples[c] == 0 else self.estimate[c] for c in self.layers}
        self.warp = warp
        tree = DraftTree()
        if self.lm.known < len(ids) - 1 or len(ids) < 2:  # no target states yet (step 0): nothing
            self.last = (None, 0)
            self.chosen.append(None)
            tree.stop = {"rule": "del", "depth": 0, "reason": "no target states yet"}
            return tree
        start = time.perf_counter()
        cap = stop.limit() if stop is not None else self.draft_len
        layer, k, value = self.choose(cap)
        self.last = (layer, k)
        self.chosen.append(layer)
        numbers = {f"a{c}": round(self.estimate[c], 3) for c in self.layers}
        if layer is None:
            tree.stop = {"rule": "del", "depth": 0, "reason": "no exit layer is expected to pay off", **numbers}
            return tree
        self.lm.kv.length = self.lm.known  # earlier drafts are gone; the target's states are kept
        token, position = ids[-1], len(ids) - 1
        note = None
        for depth in range(1, k + 1):
            h = self.lm.step(token, position, layer)
            logits = self.lm.logits(layer, h)[0]
            ent = float(entropy(logits))
            if stop is not None and depth > 1:
                reason = stop.stop(depth, ent, float(logits.softmax(-1).max()))
                if reason is not None:
                    tree.wasted_forwards += 1
                    note = StopNote(stop.name, depth - 1, reason, stop.state()).as_dict()
                    break
            q = probs(logits[None], warp)[0].cpu()
            parent = len(tree) - 1
            tree.q[parent], tree.entropy[parent] = q, ent
            token = tree.tokens[tree.add(sample(q, gen), parent)]
            position += 1
        self.forward_seconds += time.perf_counter() - start
        base = note or {"rule": "del", "depth": len(tree), "reason": "limit", "length": k}
        tree.stop = {**base, "exit_layer": layer, "tokens_per_cost": round(value, 3), **numbers}
        return tree

    @torch.inference_mode()
    def learn(self, tree: DraftTree, verdict: Verdict, target: TargetView | None = None) -> None:
        if target is None or 0 not in target.hidden:
            return
        start = time.perf_counter()
        hidden = target.hidden
        self.lm.fill(target.start, {i: hidden[i] for i in range(self.lm.lmax)})
        logits = target.logits
        if logits is not None:
            layer, _ = self.last
            # the chosen layer's drafts: each verified parent (the root and accepted nodes)
            if layer is not None and len(tree):
                parents = [-1] + [n for n in verdict.path]
                for par in parents:
                    if par in tree.q:
                        p = probs(logits[par + 1][None], self.warp)[0].cpu()
                        self._update(layer, float(torch.minimum(p, tree.q[par]).sum()))
            # probes: candidates read the target's state of the last committed position it fed
            fed = hidden[0].shape[0] - len(verdict.path)
            if fed >= 1:
                p = probs(logits[0][None], self.warp)[0].cpu()
                for _ in range(min(self.probes_per_step, len(self.layers))):
                    c = self.layers[self.probe_at % len(self.layers)]
                    self.probe_at += 1
                    q = probs(self.lm.logits(c, hidden[c][fed - 1:fed]), self.warp)[0].cpu()
                    self._update(c, float(torch.minimum(p, q).sum()))
        self.forward_seconds += time.perf_counter() - start

    def _update(self, layer: int, value: float) -> None:
        self.estimate[layer] = self.decay * self.estimate[layer] + (1 - self.decay) * value
        self.samples[layer] += 1


def default_weights(target: str = "smollm2-135m") -> Path:
    return ASSETS / f"del-{Path(target).name}.safetensors"


def make_del_drafter(target_model: torch.nn.Module, draft_len: int = 4, target: str = "smollm2-135m",
                     weights: str | Path | None = None, adapters: ExitAdapters | None = None,
                     shape: str = "chain", **kw) -> DELDrafter:
    """The DEL drafter for `target_model` from shipped adapters (assets/drafters/del-<target>.safetensors)."""
    if shape != "chain":
        raise ValueError("the DEL drafter drafts chains only")
    if adapters is None:
        path = Path(weights) if weights else default_weights(target)
        if not path.exists():
            raise ValueError(f"no trained exit adapters at {path}; train them with `python -m specviz train-drafter del`")
        adapters = ExitAdapters.load(path)
    c = target_model.config
    if adapters.hidden != c.hidden_size or (adapters.target_vocab and adapters.target_vocab != c.vocab_size):
        raise ValueError("the exit adapters do not fit this target (hidden size or vocabulary differ)")
    return DELDrafter(target_model, adapters, draft_len, **kw)
