"""AdaEDL (Agrawal, Jeon, Lee 2024): stop drafting when an entropy-based lower bound on the next
draft's acceptance probability falls below a threshold λ that adapts online.

Before drafting a position whose drafter distribution has entropy H (nats, at temperature 1 —
under greedy decoding the warped q is one-hot, H = 0, so the drafter's own temperature-1
distribution is used, as the builders always do), the round stops when

    1 − sqrt(γ · H) < λ.

A round always drafts at least one token (builders ask from the second position on). After each
verified round, with `accepted` of `drafted` drafts accepted:

    AR ← β₁ · AR + (1 − β₁) · accepted / drafted          (AR starts at the target α)
    λ′ = λ + ε if AR < α;  λ − ε if AR > α;  λ if equal
    λ  ← β₂ · λ + (1 − β₂) · λ′

so λ rises (rounds end earlier) while acceptance runs below α and falls while it runs above.
Defaults: γ = 0.2, λ₀ = 0.6, β₁ = 0.5, β₂ = 0.9, ε = 0.01, α = 0.9 (as in public
re-implementations; the rule above is the one the issue describes — this offline workplace had
no copy of the paper's algorithm to check the λ − ε condition against).
"""
from __future__ import annotations

import math

from ..registry import Param
from .base import StopEntry


def acceptance_bound(entropy: float, gamma: float) -> float:
    """AdaEDL's lower bound on the acceptance probability of a draft from a distribution of this entropy."""
    return 1.0 - math.sqrt(max(0.0, gamma * entropy))


class AdaEDL:
    name = "adaedl"

    def __init__(self, draft_len: int, gamma: float = 0.2, lambda0: float = 0.6, beta1: float = 0.5,
                 beta2: float = 0.9, epsilon: float = 0.01, alpha: float = 0.9):
        self.length, self.gamma, self.lambda0 = draft_len, gamma, lambda0
        self.beta1, self.beta2, self.epsilon, self.alpha = beta1, beta2, epsilon, alpha
        self.reset()

    def reset(self) -> None:
        self.lam, self.acceptance = self.lambda0, self.alpha

    def limit(self) -> int:
        return self.length

    def stop(self, depth: int, entropy: float, top_prob: float) -> str | None:
        bound = acceptance_bound(entropy, self.gamma)
        if bound < self.lam:
            return f"1 − √(γ·H) = {bound:.2f} < λ = {self.lam:.2f} (H = {entropy:.2f} nats)"
        return None

    def update(self, drafted: int, accepted: int) -> None:
        if drafted <= 0:
            return
        self.acceptance = self.beta1 * self.acceptance + (1 - self.beta1) * accepted / drafted
        step = self.epsilon if self.acceptance < self.alpha else -self.epsilon if self.acceptance > self.alpha else 0.0
        self.lam = self.beta2 * self.lam + (1 - self.beta2) * (self.lam + step)

    def state(self) -> dict[str, float]:
        return {"length": self.length, "lambda": self.lam, "gamma": self.gamma, "acceptance_ema": self.acceptance}


ENTRY = StopEntry(
    "adaedl", "AdaEDL (entropy bound)",
    "AdaEDL: before each draft token, stop when the acceptance lower bound `1 − √(γ·H)` (H = the drafter's "
    "entropy there, at temperature 1) falls below λ; after each round λ moves by ε toward a target acceptance α "
    "(smoothed by β₁, β₂). At least one token is always drafted.",
    AdaEDL,
    (Param("gamma", 0.2, 0.01, 2.0, "entropy scale γ in 1 − sqrt(γ·H)"),
     Param("lambda0", 0.6, 0.0, 1.0, "initial threshold λ₀"),
     Param("beta1", 0.5, 0.0, 1.0, "smoothing of the acceptance average"),
     Param("beta2", 0.9, 0.0, 1.0, "smoothing of λ"),
     Param("epsilon", 0.01, 0.0, 0.5, "λ step ε"),
     Param("alpha", 0.9, 0.0, 1.0, "target acceptance α")),
    needs_entropy=True,
)
