"""The drafter-choice seam: which drafter runs a prompt, and why.

A policy sees the prompt's token ids, the target's prefill features (when it asks for them), the
run config the user asked for and the history of finished runs, and returns a Choice. After a run
it is told the run's metrics, so a learned policy (a contextual bandit, REINFORCE) can update.
The app, the CLI and the bench all choose through a registered policy; today's only entry follows
the user.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from .metrics import Metrics
from .registry import Registry


@dataclass
class PolicyInput:
    prompt_ids: list[int]
    requested: str  # the drafter the user picked
    config: object  # the RunConfig asked for
    history: list = field(default_factory=list)  # finished runs (views.RunRecord) of this session
    features: torch.Tensor | None = None  # the target's prefill features, if the policy asked


@dataclass(frozen=True)
class Choice:
    drafter: str
    reason: str  # one line, shown in the drafter panel


class Policy(Protocol):
    name: str
    needs_features: bool

    def choose(self, given: PolicyInput) -> Choice: ...

    def learn(self, given: PolicyInput, choice: Choice, metrics: Metrics) -> None: ...


class UserPick:
    """The drafter in the menu, always."""

    name = "user"
    needs_features = False

    def choose(self, given: PolicyInput) -> Choice:
        return Choice(given.requested, "your pick in the drafter menu")

    def learn(self, given: PolicyInput, choice: Choice, metrics: Metrics) -> None:
        pass


@dataclass(frozen=True)
class PolicyEntry:
    name: str
    label: str
    make: Callable[[], Policy]


POLICIES: Registry[PolicyEntry] = Registry("drafter policy", PolicyEntry("user", "your pick", UserPick))
