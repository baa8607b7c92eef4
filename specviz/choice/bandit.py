"""Re-deciding the drafter as the text goes: discounted Thompson sampling over the arms.

Each drafting step of the active arm gives one reward: tokens the step emitted per unit of its
cost (one unit = a one-token target forward, from the cost curve; the drafter's own cost from its
logged seconds per drafted token). Every `every` steps the switch draws a plausible mean reward for
each arm from its posterior and keeps the best. Old evidence fades by `decay` per step, so an arm
that lost while the answer copied the prompt is tried again once the text turns to free writing.
Arms that draft from the text alone (prompt lookup, n-grams) are also scored while they sit out:
their draft of the text at each step is matched against what the target then committed (auto.py).

All draws come from the switch's own generator, seeded per run from the run's seed (read, never drawn
from): the same seed and text give the same choices, and the engine's random stream (verification)
is never touched.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SwitchSettings:
    every: int = 4  # steps between re-decisions
    decay: float = 0.8  # per step: how much older evidence still counts
    prior_weight: float = 2.0  # the prior mean counts as this many steps
    noise: float = 0.6  # assumed spread of one step's reward (in speedup units)
    seed: int = 0


class ThompsonSwitch:
    def __init__(self, prior: list[float], settings: SwitchSettings = SwitchSettings()):
        self.settings = settings
        self.prior = [float(p) for p in prior]
        self.reset()

    def reset(self, prior: list[float] | None = None, seed: int | None = None) -> None:
        if prior is not None:
            self.prior = [float(p) for p in prior]
        self.total = [0.0] * len(self.prior)  # discounted sums of rewards
        self.count = [0.0] * len(self.prior)  # discounted numbers of steps
        self.gen = torch.Generator().manual_seed(self.settings.seed if seed is None else seed)
        self.since = 0  # steps since the last decision

    def observe(self, arm: int, reward: float) -> None:
        """One step of the active arm: older evidence fades, this reward counts."""
        d = self.settings.decay
        self.total = [t * d for t in self.total]
        self.count = [c * d for c in self.count]
        self.add(arm, reward)
        self.since += 1

    def add(self, arm: int, reward: float) -> None:
        """A reward without a step of its own (an arm's draft scored against the text, not drafted)."""
        self.total[arm] += reward
        self.count[arm] += 1.0

    def due(self) -> bool:
        return self.since >= self.settings.every

    def posterior(self, arm: int) -> tuple[float, float]:
        """(mean, standard deviation) of the arm's mean reward."""
        w = self.settings.prior_weight
        n = w + self.count[arm]
        return (w * self.prior[arm] + self.total[arm]) / n, self.settings.noise / math.sqrt(n)

    def decide(self, allowed: list[int]) -> tuple[int, dict[int, float]]:
        """The arm with the best posterior draw among `allowed`, and every allowed arm's draw."""
        self.since = 0
        draws = {}
        for arm in allowed:
            mean, sd = self.posterior(arm)
            draws[arm] = mean + sd * float(torch.randn((), generator=self.gen))
        return max(allowed, key=lambda a: draws[a]), draws
