"""A small softmax policy over drafter arms, from a prompt's features, and how it is trained offline.

    x = [PCA of the pooled prefill states (HIDDEN_DIMS), standardized text statistics]
    pi(arm | x) = softmax(W x + b)

Two ways to fit W, b on logged outcomes R[prompt, arm] (every arm was run on every training prompt):
- `fit_reinforce`: REINFORCE as in context-aware assistant selection: sample an arm from pi, take its
  logged reward, step along (r - baseline) * grad log pi(arm | x); the baseline is the batch's mean
  sampled reward. Seeded: the same data and seed give the same weights.
- `fit_best_arm`: the supervised baseline, cross-entropy towards the arm with the highest reward.
Beside either, `fit_values` (ridge regression) predicts each arm's reward for a prompt: the expected
speedups the app shows, and the online switch's prior.

A margin (`gate`) keeps the arm that was best on average (the default) unless the value model expects
the policy's pick to beat it by more than the margin: a wrong pick costs more than a right one gains
when the best arm is near the oracle, and train-policy sets the margin by cross-validation on the
training prompts.

A policy file (safetensors) holds the encoder (PCA basis, means, scales), W, b, the arms, and what
the online re-decider needs (each arm's mean logged reward and drafting cost, the cost curve).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .features import TEXT_STATS

FORMAT = "specviz-drafter-policy/1"
HIDDEN_DIMS = 16  # principal components of the pooled prefill states kept as features
EPOCHS = 300
LEARNING_RATE = 0.05
WEIGHT_DECAY = 1e-3
BATCH = 64


@dataclass
class Encoder:
    """Pooled states and text statistics -> the policy's feature vector (fitted on training prompts)."""

    state_mean: torch.Tensor  # [S]
    basis: torch.Tensor  # [S, k] principal directions (k may be 0: no state features)
    stat_mean: torch.Tensor  # [T]
    stat_scale: torch.Tensor  # [T]
    proj_scale: torch.Tensor  # [k] scale of each component on the training prompts
    use_text: bool = True

    @property
    def dims(self) -> int:
        return self.basis.shape[1] + (len(self.stat_mean) if self.use_text else 0)

    def __call__(self, states: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """[n, S] states and [n, T] statistics (or one of each, 1-D) -> [n, dims] (or [dims])."""
        one = states.dim() == 1
        states, stats = states.reshape(-1, states.shape[-1]).float(), stats.reshape(-1, stats.shape[-1]).float()
        parts = [((states - self.state_mean) @ self.basis) / self.proj_scale]
        if self.use_text:
            parts.append((stats - self.stat_mean) / self.stat_scale)
        x = torch.cat(parts, -1)
        return x[0] if one else x


def fit_encoder(states: torch.Tensor, stats: torch.Tensor, hidden_dims: int = HIDDEN_DIMS,
                use_text: bool = True) -> Encoder:
    """Standardize the statistics; keep the top `hidden_dims` principal components of the states."""
    states, stats = states.float(), stats.float()
    mean = states.mean(0)
    k = max(0, min(hidden_dims, states.shape[0] - 1, states.shape[1]))
    if k:
        _, _, v = torch.linalg.svd(states - mean, full_matrices=False)
        basis = v[:k].T.contiguous()
    else:
        basis = torch.zeros(states.shape[1], 0)
    proj = (states - mean) @ basis
    proj_scale = proj.std(0).clamp_min(1e-6) if len(states) > 1 and k else torch.ones(k)
    stat_scale = stats.std(0).clamp_min(1e-6) if len(stats) > 1 else torch.ones(stats.shape[1])
    return Encoder(mean, basis, stats.mean(0), stat_scale, proj_scale, use_text)


def _fit(x: torch.Tensor, n_arms: int, loss_fn, seed: int, epochs: int, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    weight = torch.zeros(n_arms, x.shape[1], requires_grad=True)
    bias = torch.zeros(n_arms, requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=lr, weight_decay=WEIGHT_DECAY)
    n = len(x)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, BATCH):
            rows = order[start:start + BATCH]
            logits = x[rows] @ weight.T + bias
            loss = loss_fn(logits, rows, gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return weight.detach(), bias.detach()


def fit_reinforce(x: torch.Tensor, rewards: torch.Tensor, seed: int = 0, epochs: int = EPOCHS,
                  lr: float = LEARNING_RATE, entropy_bonus: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE with a baseline: each step samples one arm per prompt from pi and moves log pi(arm)
    by (its logged reward - the batch's mean sampled reward). A small entropy bonus keeps pi from
    collapsing before the rewards are seen."""

    def loss(logits, rows, gen):
        logp = torch.log_softmax(logits, -1)
        arm = torch.multinomial(logp.detach().exp(), 1, generator=gen)[:, 0]
        r = rewards[rows, arm]
        advantage = r - r.mean()
        entropy = -(logp.exp() * logp).sum(-1).mean()
        return -(advantage * logp.gather(1, arm[:, None])[:, 0]).mean() - entropy_bonus * entropy

    return _fit(x.float(), rewards.shape[1], loss, seed, epochs, lr)


def fit_best_arm(x: torch.Tensor, rewards: torch.Tensor, seed: int = 0, epochs: int = EPOCHS,
                 lr: float = LEARNING_RATE) -> tuple[torch.Tensor, torch.Tensor]:
    """The supervised baseline: cross-entropy towards each prompt's best logged arm."""
    best = rewards.argmax(1)
    return _fit(x.float(), rewards.shape[1], lambda logits, rows, gen: torch.nn.functional.cross_entropy(
        logits, best[rows]), seed, epochs, lr)


@dataclass
class ArmPolicy:
    arms: list[str]  # arm labels, drafter:shape:length ("none" = plain decoding)
    encoder: Encoder
    weight: torch.Tensor  # [arms, dims]
    bias: torch.Tensor  # [arms]
    method: str = "reinforce"
    prior: list[float] = field(default_factory=list)  # each arm's mean logged reward (expected speedup)
    draft_cost: list[float] = field(default_factory=list)  # drafter seconds per drafted token / one-token forward
    curve: list[tuple[float, float]] = field(default_factory=list)  # (positions, seconds): the cost curve
    card: dict = field(default_factory=dict)  # what it was trained on (data card figures)
    value_weight: torch.Tensor | None = None  # [arms, dims + 1]: each arm's expected reward for a prompt (ridge)
    default_arm: str | None = None  # the arm best on average, kept unless a pick clears the margin
    margin: float | None = None  # expected-speedup gain a pick needs over the default (None: no gate)

    def probs(self, states: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        x = self.encoder(states, stats)
        return torch.softmax(x @ self.weight.T + self.bias, -1)

    def expected(self, states: torch.Tensor, stats: torch.Tensor) -> torch.Tensor | None:
        """Each arm's expected reward (speedup) for this prompt, or None without a value model."""
        if self.value_weight is None:
            return None
        return values_of(self.value_weight, self.encoder(states, stats)[None])[0]

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        e = self.encoder
        tensors = {"state_mean": e.state_mean, "basis": e.basis, "stat_mean": e.stat_mean,
                   "stat_scale": e.stat_scale, "proj_scale": e.proj_scale, "weight": self.weight, "bias": self.bias}
        if self.value_weight is not None:
            tensors["value_weight"] = self.value_weight
        meta = {"format": FORMAT, "arms": self.arms, "method": self.method, "use_text": e.use_text,
                "text_stats": list(TEXT_STATS), "prior": self.prior, "draft_cost": self.draft_cost,
                "curve": self.curve, "card": self.card, "default_arm": self.default_arm,
                "margin": None if self.margin is None else str(self.margin)}  # str: JSON has no infinity
        tmp = path.with_name(path.name + ".tmp")
        save_file({k: v.contiguous().float() for k, v in tensors.items()}, str(tmp), metadata={"meta": json.dumps(meta)})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ArmPolicy":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path} is not a drafter policy ({FORMAT})")
            if meta.get("text_stats") != list(TEXT_STATS):
                raise ValueError(f"{path} was trained on other text statistics; retrain it with train-policy")
            t = {k: f.get_tensor(k) for k in f.keys()}
        enc = Encoder(t["state_mean"], t["basis"], t["stat_mean"], t["stat_scale"], t["proj_scale"], meta["use_text"])
        margin = meta.get("margin")
        return cls(meta["arms"], enc, t["weight"], t["bias"], meta["method"], meta["prior"], meta["draft_cost"],
                   [tuple(p) for p in meta["curve"]], meta.get("card", {}), t.get("value_weight"),
                   meta.get("default_arm"), None if margin is None else float(margin))


def fit_values(x: torch.Tensor, rewards: torch.Tensor, ridge: float = 1.0) -> torch.Tensor:
    """Each arm's reward as a linear function of the features (ridge regression, closed form):
    [arms, dims + 1], the last column the intercept (not penalized)."""
    xa = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
    penalty = ridge * torch.eye(xa.shape[1], dtype=torch.float64)
    penalty[-1, -1] = 0.0
    return torch.linalg.solve(xa.T @ xa + penalty, xa.T @ rewards.double()).T.float()


def gate(picks: torch.Tensor, values: torch.Tensor, default: int, margin: float) -> torch.Tensor:
    """Each row's pick where its expected value beats the default arm's by more than `margin`, else the
    default. picks [n], values [n, arms] (the value model's expected rewards)."""
    gain = values.gather(1, picks[:, None])[:, 0] - values[:, default]
    return torch.where(gain > margin, picks, torch.full_like(picks, default))


def values_of(value_weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The value model's expected reward per arm for encoded features x [n, dims] -> [n, arms]."""
    return torch.cat([x, torch.ones(len(x), 1)], 1) @ value_weight.T


def mean_reward(probs: torch.Tensor, rewards: torch.Tensor, greedy: bool = True) -> float:
    """Mean logged reward of the arm each row's policy picks (its argmax), or the expectation under pi."""
    if greedy:
        return float(rewards.gather(1, probs.argmax(1, keepdim=True)).mean())
    return float((probs * rewards).sum(1).mean())


def entropy_bits(p: torch.Tensor) -> float:
    return float(-(p * p.clamp_min(1e-12).log()).sum() / math.log(2))


def untrained(arms: list[str], state_dims: int) -> ArmPolicy:
    """Every arm equally likely (the first listed wins ties): what `auto` uses before train-policy ran."""
    enc = Encoder(torch.zeros(state_dims), torch.zeros(state_dims, 0), torch.zeros(len(TEXT_STATS)),
                  torch.ones(len(TEXT_STATS)), torch.ones(0), use_text=False)
    return ArmPolicy(list(arms), enc, torch.zeros(len(arms), 0), torch.zeros(len(arms)), "untrained",
                     [1.0] * len(arms), [0.0] * len(arms), [])
