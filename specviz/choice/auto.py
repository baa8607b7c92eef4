"""The `auto` drafter: a learned policy picks the drafter (or plain decoding) for each prompt from the
target's prefill, and, behind a switch, keeps re-deciding as the text goes.

    step 0        a policy that reads the prefill's states: drafts nothing; the target's forward is the
                  prefill, its final states are pooled (features.py), the policy chooses, and the chosen
                  arm reads that forward; the choice drafts from step 1 (argmax of pi; probabilities recorded)
                  a policy that reads only the prompt's text statistics chooses before the prefill
                  (`begin`), so the chosen arm drafts on the prefill, as it would alone
    every K steps (online) a Thompson switch (bandit.py) re-decides from the rewards just observed

It is an ordinary Drafter: whatever arm drafts, the engine's verification is the same, so output is
exact (greedy equals plain decoding token for token; sampling keeps the target's distribution).
Arms whose drafter runs on the text alone (prompt lookup, n-grams, a model drafter, which re-syncs
its cache from the text) can be left and re-entered at any step. An arm that reads the target's
states (EAGLE, DEL) needs them for every committed position: online, one that can `follow` (the
EAGLE heads, alone or merged) is handed the states of each verification while it sits out (the
engine computes them anyway; the head's cache catches up in one pass when it drafts again), so the
switch can return to it; one that cannot (DEL) leaves the run once left.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..drafters import Drafter, FreeDrafter, TargetView, hint
from ..sampling import Warp
from ..stop_rules import StopRule
from ..tree import DraftTree, depths
from ..verify import Verdict
from .bandit import SwitchSettings, ThompsonSwitch
from .features import pooled_states, text_stats
from .policy import ArmPolicy

PLAIN = "none"  # the arm that drafts nothing: plain decoding


def step_units(curve: list[tuple[float, float]], positions: int) -> float:
    """A forward over `positions` new positions in one-token forwards, from the cost curve's points
    (linear between them, the nearest point outside them); 1 per position without a curve would
    be wrong, so without one every forward counts 1."""
    if not curve:
        return 1.0
    pts = sorted(curve)
    one = pts[0][1]
    if positions <= pts[0][0]:
        return pts[0][1] / one
    for (n0, s0), (n1, s1) in zip(pts, pts[1:]):
        if n0 <= positions <= n1:
            return ((positions - n0) / (n1 - n0) * (s1 - s0) + s0) / one
    return pts[-1][1] / one


@dataclass
class Arm:
    label: str  # drafter:shape:length, or "none"
    drafter: Drafter | None

    @property
    def reads_target(self) -> tuple[int, ...]:
        return tuple(self.drafter.reads_target) if self.drafter is not None else ()

    @property
    def greedy_only(self) -> bool:
        return bool(self.drafter is not None and self.drafter.greedy_only)


class AutoDrafter:
    name = "auto"
    greedy_only = False

    def __init__(self, arms: list[Arm], policy: ArmPolicy, decode: Callable[[list[int]], str] | None = None,
                 switch: SwitchSettings | None = None, notes: list[str] | None = None):
        self.arms = arms
        self.policy = policy
        self.decode = decode
        self.switch_settings = switch
        self.notes = list(notes or [])  # arms skipped (weights missing), said once per run
        index = {label: i for i, label in enumerate(policy.arms)}
        self.policy_index = [index.get(a.label) for a in arms]  # arm -> its row in the policy (None: unknown)
        prior = [policy.prior[i] if i is not None and i < len(policy.prior) else 1.0 for i in self.policy_index]
        self.switch = ThompsonSwitch(prior, switch) if switch is not None else None
        self.costs, self._seconds = None, None  # seconds of a target forward by new positions (`price`)
        self.draft_s = 0.0  # what the active arm's last draft took
        if not arms:
            raise ValueError("the auto drafter has no arm to choose from")
        self.reset()

    # ---- the Drafter contract
    @property
    def forward_seconds(self) -> float:
        return sum(a.drafter.forward_seconds for a in self.arms if a.drafter is not None)

    @property
    def reads_target(self) -> tuple[int, ...]:
        if self.step == 0 and self.active is None:  # the prefill: pooled final states, and every arm's own layers
            return tuple(sorted({-1, *(layer for a in self.arms for layer in a.reads_target)}))
        if self.switch is None:
            return self.arms[self.active].reads_target if self.active is not None else ()
        # online: the arms that read the target's states and can follow the text stay in step, so the
        # switch may come back to them (their states arrive with every verification, whoever drafted)
        followers = [i for i in self.in_step if i == self.active or self._can_follow(i)]
        return tuple(sorted({layer for i in followers for layer in self.arms[i].reads_target}))

    def _can_follow(self, i: int) -> bool:
        return hasattr(self.arms[i].drafter, "follow")

    def price(self, costs) -> None:
        self.costs, self._seconds = costs, None  # the online switch's rewards read it too
        for arm in self.arms:
            hint(arm.drafter, "price", costs)

    def own_clock(self, clock) -> None:
        for arm in self.arms:
            hint(arm.drafter, "own_clock", clock)

    def reset(self) -> None:
        for arm in self.arms:
            if arm.drafter is not None:
                arm.drafter.reset()
        self.step = 0
        self.active: int | None = None
        self.pending: dict | None = None
        self.in_step = set(range(len(self.arms)))  # arms whose state follows the text
        self.greedy = True
        self.probs: list[float] = []
        self.chosen_by_policy: int | None = None
        self.shadows: list[tuple[int, int, DraftTree, float]] = []  # (arm, text length, its draft, its seconds)
        if self.switch is not None:
            self.switch.reset(seed=self.switch.settings.seed)

    def propose(self, ids: list[int], warp: Warp, gen: torch.Generator, stop: StopRule | None = None) -> DraftTree:
        self.greedy = warp.greedy
        if self.step == 0 and self.switch is not None and gen is not None:  # the run's seed (read, not drawn
            self.switch.reset(seed=self.switch.settings.seed + 7919 * gen.initial_seed())  # from) seeds the switch
        if self.active is None:
            return DraftTree()
        drafter = self.arms[self.active].drafter
        if drafter is None:
            return DraftTree()
        t = time.perf_counter()
        tree = drafter.propose(ids, warp, gen, None)  # each arm drafts in its own shape and length
        self.draft_s = time.perf_counter() - t
        return tree

    def begin(self, prompt: list[int], greedy: bool) -> None:
        """Before the prefill (the engine calls it once a run): a policy that reads no states chooses now."""
        self.greedy = greedy
        if self.policy.encoder.basis.shape[1] == 0:  # text statistics only: the prompt is all it needs
            self._choose(torch.zeros_like(self.policy.encoder.state_mean), list(prompt))

    def learn(self, tree: DraftTree, verdict: Verdict, target: TargetView | None = None) -> None:
        if self.step == 0 and self.active is None:
            self._first_choice(target)
            # nothing was drafted: the prefill is the chosen arm's own. Only it learns from it: an arm that
            # reads the target's states and does not draft the next step leaves the run anyway, and the free
            # arms learn nothing (they read the text), so the other heads' passes over the prompt were waste
            chosen = self.arms[self.active].drafter
            if chosen is not None:
                chosen.learn(tree, verdict, target)
            self._follow(target)
        else:
            arm = self.arms[self.active]
            if arm.drafter is not None:
                arm.drafter.learn(tree, verdict, target)
            self._follow(target)
            if self.switch is not None:
                committed = target.committed if target is not None else []
                self._score_shadows(committed)
                self._observe_and_switch(tree, verdict)
                self._draft_shadows(committed)
        self.step += 1

    def _follow(self, target: TargetView | None) -> None:
        """Arms that read the target's states and sit out: online, those that can follow keep the states
        of what was committed (a switch may return to them); the others missed this forward and leave."""
        for i, other in enumerate(self.arms):
            if i == self.active or not other.reads_target or i not in self.in_step:
                continue
            if self.switch is None or target is None or not self._can_follow(i) or not other.drafter.follow(target):
                self.in_step.discard(i)

    # ---- what the engine records
    def step_choice(self) -> tuple[str, dict | None]:
        """(the arm drafting the step about to start, the decision made before it or None)."""
        label = self.arms[self.active].label if self.active is not None else PLAIN
        pending, self.pending = self.pending, None
        return label, pending

    def policy_info(self) -> dict:
        return {"name": "auto", "method": self.policy.method, "arms": [a.label for a in self.arms],
                "online": self.switch is not None,
                "every": self.switch.settings.every if self.switch is not None else None,
                "skipped": list(self.notes)}

    # ---- choosing
    def allowed(self) -> list[int]:
        return [i for i in sorted(self.in_step) if self.greedy or not self.arms[i].greedy_only]

    def candidates(self) -> list[int]:
        """The arms the online switch weighs: the policy's pick, the one drafting now, and the arms it knows
        without trying them (the free arms, scored on the text while they sit out; plain decoding). Other
        arms would only be known by drafting with them: a blind draw among several alike heads every few
        steps cost more than it found on the tuning prompts."""
        def known(i: int) -> bool:
            return self.arms[i].drafter is None or isinstance(self.arms[i].drafter, FreeDrafter)
        return [i for i in self.allowed() if i in (self.chosen_by_policy, self.active) or known(i)]

    def _first_choice(self, target: TargetView | None) -> None:
        hidden = target.hidden.get(-1) if target is not None else None
        ids = target.committed[:-1] if target is not None else []  # the prompt (the last is this step's token)
        if hidden is None:
            raise RuntimeError("the auto drafter needs the target's final states of the prefill")
        self._choose(pooled_states(hidden), ids)

    def _choose(self, states: torch.Tensor, ids: list[int]) -> None:
        """The policy's arm for a prompt (its ids) from the pooled prefill states and the text statistics."""
        text = self.decode(ids) if self.decode is not None else ""
        stats = torch.tensor(text_stats(ids, text))
        p_all = self.policy.probs(states, stats)
        values = self.policy.expected(states, stats)  # this prompt's expected speedup per arm, if the policy has it
        probs = [float(p_all[i]) if i is not None else 0.0 for i in self.policy_index]
        allowed = self.allowed()
        total = sum(probs[i] for i in allowed)
        probs = [p / total if i in allowed and total > 0 else 0.0 for i, p in enumerate(probs)]
        self.probs = probs
        best = max(allowed, key=lambda i: (probs[i], -i))
        prior = [float(v) for v in values] if values is not None else self.policy.prior
        raw = {a.label: prior[j] for a, j in zip(self.arms, self.policy_index) if j is not None and j < len(prior)}
        expected = {k: round(v, 3) for k, v in raw.items()}
        reason = (f"the policy gives {self.arms[best].label} {probs[best]:.0%} for this prompt"
                  if self.policy.method != "untrained" else "no trained policy yet: plain decoding")
        kept = self._kept_default(best, allowed, raw) if values is not None else None
        if kept is not None:
            best, reason = kept
        self.active = self.chosen_by_policy = best
        if self.switch is not None and values is not None:  # the switch starts from this prompt's expectations
            self.switch.prior = [prior[j] if j is not None else 1.0 for j in self.policy_index]
        self.pending = {
            "by": "policy", "arm": self.arms[best].label,
            "probs": {a.label: round(p, 4) for a, p in zip(self.arms, probs)},
            "expected_speedup": expected,
            "expected_from": "this prompt" if values is not None else "the logged mean",
            "reason": reason,
        }

    def _kept_default(self, pick: int, allowed: list[int], expected: dict[str, float]) -> tuple[int, str] | None:
        """(the default arm, why) where the policy's pick does not clear the margin over it; else None."""
        margin, default = self.policy.margin, self.policy.default_arm
        labels = [a.label for a in self.arms]
        if margin is None or default not in labels or self.arms[pick].label == default:
            return None
        d = labels.index(default)
        if d not in allowed or default not in expected or self.arms[pick].label not in expected:
            return None
        gain = expected[self.arms[pick].label] - expected[default]
        if gain > margin:
            return None
        return d, (f"the policy leans to {self.arms[pick].label} ({gain:+.2f}x expected over {default}), "
                   f"which does not clear the margin of {margin:g}: {default}, the best arm on average")

    def _reward(self, arm: int, nodes: int, accepted: int, draft_s: float) -> float:
        """Tokens of a step per unit of its cost (one unit: a one-token target forward): the verification
        from this machine's measured curve (`price`) plus the draft's own time; without a curve, the
        collection's pooled curve and logged drafting cost per node."""
        if self.costs is not None:
            if self._seconds is None:
                self._seconds = self.costs()
            s = self._seconds
            return (accepted + 1) * s[1] / (s[min(1 + nodes, max(s))] + draft_s)
        j = self.policy_index[arm]
        cost = self.policy.draft_cost[j] if j is not None and j < len(self.policy.draft_cost) else 0.0
        return (accepted + 1) / (step_units(self.policy.curve, 1 + nodes) + cost * nodes)

    def _draft_shadows(self, committed: list[int]) -> None:
        """Free arms sitting out draft the text as it stands (no model runs, no randomness drawn)."""
        if not committed:
            return
        for i in self.allowed():
            drafter = self.arms[i].drafter
            if i != self.active and isinstance(drafter, FreeDrafter):
                t = time.perf_counter()
                tree = drafter.propose(list(committed), Warp(), None, None)
                self.shadows.append((i, len(committed), tree, time.perf_counter() - t))

    def _score_shadows(self, committed: list[int]) -> None:
        """Shadow drafts whose positions the target has committed since: how many it would have accepted
        (greedy: the longest path of the draft that the committed text follows)."""
        keep = []
        for i, start, tree, draft_s in self.shadows:
            deepest = max(depths(tree.parents), default=0)
            if start + deepest + 1 > len(committed):
                keep.append((i, start, tree, draft_s))
                continue
            node, accepted = -1, 0
            for tok in committed[start:start + deepest]:
                node = next((c for c in tree.children(node) if tree.tokens[c] == tok), None)
                if node is None:
                    break
                accepted += 1
            self.switch.add(i, self._reward(i, len(tree), accepted, draft_s))
        self.shadows = keep

    def _observe_and_switch(self, tree: DraftTree, verdict: Verdict) -> None:
        arm = self.arms[self.active]
        self.switch.observe(self.active, self._reward(self.active, len(tree), len(verdict.path), self.draft_s))
        if not self.switch.due():
            return
        allowed = self.candidates()
        best, draws = self.switch.decide(allowed)
        if best == self.active:
            return
        mean, _ = self.switch.posterior(self.active)
        self.pending = {
            "by": "online", "arm": self.arms[best].label, "from": arm.label,
            "draws": {self.arms[i].label: round(d, 3) for i, d in draws.items()},
            "reason": f"{arm.label} gave {mean:.2f}x lately; {self.arms[best].label} looks better now",
        }
        self.active = best
