"""Turning logits into the distributions speculative decoding compares.

The target's p and the drafter's q must be warped by exactly the same function, or the
acceptance ratio p/q compares two different things and the output is no longer lossless.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .limits import ENGINE


@dataclass(frozen=True)
class Warp:
    """Sampling settings applied identically to target and drafter. temperature 0 = greedy."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def check_warp(warp: Warp, max_temperature: float = ENGINE.max_temperature) -> None:
    if not (0.0 <= warp.temperature <= max_temperature):
        raise ValueError(f"temperature must be in [0, {max_temperature:g}], got {warp.temperature}")
    if not (0.0 < warp.top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1], got {warp.top_p}")
    if warp.top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {warp.top_k}")


def probs(logits: torch.Tensor, warp: Warp) -> torch.Tensor:
    """Rows of logits -> rows of probabilities in fp32 (greedy gives a one-hot argmax)."""
    logits = logits.float()
    if warp.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits / warp.temperature
    if warp.top_k:
        kth = torch.topk(logits, min(warp.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if warp.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the mass before it already reaches top_p (the top token always stays)
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= warp.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits) at temperature 1: the model's own uncertainty."""
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)


def sample(p: torch.Tensor, gen: torch.Generator) -> int:
    """One draw from a probability row."""
    return int(torch.multinomial(p, 1, generator=gen))


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)): what is left of p once q's proposal has been given its chance."""
    r = (p - q).clamp_min(0.0)
    total = r.sum()
    # p == q exactly leaves nothing; any draw from p is then correct.
    return r / total if total > 0 else p


def uniform(gen: torch.Generator) -> float:
    return float(torch.rand((), generator=gen))
