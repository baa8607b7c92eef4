"""Running counters of a decoding run and the figures derived from them, defined once.

tau                   tokens emitted per target forward (bonus and resampled tokens included)
acceptance_rate       accepted draft tokens / drafted tokens: node-level, every node of a tree counts
checked_positions     positions on the verified path where the target checked a draft: the root and
                      each accepted node that had children tried (one beta each, see beta_by_depth);
                      accepted + 1 in a step that ended with a rejection, accepted after a bonus
path_acceptance       accepted draft tokens / checked positions: how often the target took the draft
                      it looked at, step by step (a chain's and a tree's on the same footing)
mean_accepted_length  accepted draft tokens per target forward (tau minus the target's own token)
beta_by_depth         mean over verified nodes at each depth of sum_x min(p(x), q(x)): the
                      probability that a draft from q is accepted under p there
alpha                 mean beta over all verified nodes (Leviathan et al.'s alpha)
c                     drafter seconds per drafted token / target seconds per verification forward
verify_cost_ratio     seconds of a target forward that verified drafts / of one that verified none
                      (one new token): what verifying several positions costs on this machine
predicted_speedup     (1 - alpha^(g+1)) / ((1 - alpha)(g c + 1)), g = mean draft length: Leviathan et al.'s
                      formula, for chains only (it assumes one guess per position and i.i.d. acceptance)
minus(first)          the counters of the steps after `first` (a snapshot): without the first step, whose
                      target forward reads the whole prompt (the prefill), decode-only figures follow
CostCurve             this machine's seconds of one target forward by new positions: medians of at least
                      MIN_SAMPLES forwards per octave of sizes, interpolated between them, never extrapolated
expected_speedup      tau x cost(1) / (draft seconds per step + cost(verified positions) per step): the
                      step's own expected tokens (trees and chains alike) against a one-token forward,
                      both from the cost curve; per-step overhead outside forwards is left out of both
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field, replace


@dataclass
class Metrics:
    tokens: int = 0
    steps: int = 0  # target forwards
    drafted: int = 0
    accepted: int = 0
    elapsed_s: float = 0.0  # decoding wall time, excluding consumers of the event stream
    draft_s: float = 0.0
    verify_s: float = 0.0
    forward_s: float = 0.0  # time inside model forwards (target and drafter)
    beta_sum: list[float] = field(default_factory=list)  # by depth - 1
    beta_count: list[int] = field(default_factory=list)
    accepted_hist: list[int] = field(default_factory=list)  # steps by accepted draft tokens
    wasted_forwards: int = 0  # drafter forwards spent on a position a stop rule then refused
    single_steps: int = 0  # target forwards with nothing drafted (one new position, as in AR)
    single_verify_s: float = 0.0

    def record_step(self, emitted: int, drafted: int, accepted: int, betas: list[tuple[int, float]]) -> None:
        self.tokens += emitted
        self.steps += 1
        self.drafted += drafted
        self.accepted += accepted
        for depth, beta in betas:
            while len(self.beta_sum) < depth:
                self.beta_sum.append(0.0)
                self.beta_count.append(0)
            self.beta_sum[depth - 1] += beta
            self.beta_count[depth - 1] += 1
        while len(self.accepted_hist) <= accepted:
            self.accepted_hist.append(0)
        self.accepted_hist[accepted] += 1

    def record_verify(self, seconds: float, nodes: int) -> None:
        """A target forward's seconds; those that verified no draft (one new position) also apart."""
        self.verify_s += seconds
        if not nodes:
            self.single_steps += 1
            self.single_verify_s += seconds

    def add(self, other: "Metrics") -> "Metrics":
        """Accumulate another run's counters (bench totals per category are sums of runs)."""
        for f in ("tokens", "steps", "drafted", "accepted", "elapsed_s", "draft_s", "verify_s", "forward_s",
                  "wasted_forwards", "single_steps", "single_verify_s"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        for mine, theirs in ((self.beta_sum, other.beta_sum), (self.beta_count, other.beta_count),
                             (self.accepted_hist, other.accepted_hist)):
            mine.extend([0] * (len(theirs) - len(mine)))
            for i, v in enumerate(theirs):
                mine[i] += v
        return self

    def minus(self, first: "Metrics") -> "Metrics":
        """The counters of the steps that came after the snapshot `first` of the same run."""
        out = self.snapshot()
        for f in ("tokens", "steps", "drafted", "accepted", "elapsed_s", "draft_s", "verify_s", "forward_s",
                  "wasted_forwards", "single_steps", "single_verify_s"):
            setattr(out, f, getattr(self, f) - getattr(first, f))
        for mine, theirs in ((out.beta_sum, first.beta_sum), (out.beta_count, first.beta_count),
                             (out.accepted_hist, first.accepted_hist)):
            for i, v in enumerate(theirs[: len(mine)]):
                mine[i] -= v
        return out

    def snapshot(self) -> "Metrics":
        return replace(self, beta_sum=list(self.beta_sum), beta_count=list(self.beta_count),
                       accepted_hist=list(self.accepted_hist))

    @property
    def overhead_s(self) -> float:
        return max(0.0, self.elapsed_s - self.draft_s - self.verify_s)

    @property
    def tau(self) -> float:
        return self.tokens / self.steps if self.steps else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def checked_positions(self) -> int:
        return sum(self.beta_count)

    @property
    def path_acceptance(self) -> float:
        n = self.checked_positions
        return self.accepted / n if n else 0.0

    @property
    def mean_accepted_length(self) -> float:
        return self.accepted / self.steps if self.steps else 0.0

    @property
    def mean_draft_length(self) -> float:
        return self.drafted / self.steps if self.steps else 0.0

    @property
    def beta_by_depth(self) -> list[float]:
        return [s / n if n else 0.0 for s, n in zip(self.beta_sum, self.beta_count)]

    @property
    def alpha(self) -> float:
        n = sum(self.beta_count)
        return sum(self.beta_sum) / n if n else 0.0

    @property
    def c(self) -> float:
        if not self.drafted or not self.steps or self.verify_s <= 0:
            return 0.0
        return (self.draft_s / self.drafted) / (self.verify_s / self.steps)

    @property
    def mean_verified_positions(self) -> float:
        """New positions per target forward that verified drafts (the draft nodes plus the root)."""
        wide = self.steps - self.single_steps
        return 1.0 + self.drafted / wide if wide else 1.0

    @property
    def verify_cost_ratio(self) -> float:
        """Mean seconds of a forward that verified drafts over those of a one-position forward in the
        same run; 0 where the run had only one kind."""
        wide = self.steps - self.single_steps
        if not wide or not self.single_steps or self.single_verify_s <= 0:
            return 0.0
        return ((self.verify_s - self.single_verify_s) / wide) / (self.single_verify_s / self.single_steps)

    @property
    def predicted_speedup(self) -> float:
        return predicted_speedup(self.alpha, self.mean_draft_length, self.c)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def outside_forward_share(self) -> float:
        """Share of decoding time spent outside model forwards (sampling, verification, events)."""
        return 1.0 - self.forward_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> dict:
        out = asdict(self)
        for name in ("tau", "acceptance_rate", "checked_positions", "path_acceptance", "mean_accepted_length", "mean_draft_length", "beta_by_depth",
                     "alpha", "c", "mean_verified_positions", "verify_cost_ratio", "predicted_speedup", "tokens_per_s", "overhead_s", "outside_forward_share"):
            out[name] = getattr(self, name)
        return out


def predicted_speedup(alpha: float, gamma: float, c: float) -> float:
    if gamma <= 0:
        return 1.0
    if alpha >= 1.0:
        return (gamma + 1) / (gamma * c + 1)
    return (1 - alpha ** (gamma + 1)) / ((1 - alpha) * (gamma * c + 1))


MIN_SAMPLES = 3  # forwards of one size before the cost curve uses that size


@dataclass
class CostCurve:
    """Seconds of one target forward by the number of new positions it scores (1: a one-token step, as in
    plain decoding; 1 + k: verifying k draft nodes), from forwards timed on this machine.

    Sizes are pooled in octaves (1; 2; 3-4; 5-8; 9-16; ...): a tree's forwards vary in size from step to
    step, and a point of the curve is the median of at least MIN_SAMPLES forwards, never one sample."""

    samples: dict[int, list[float]] = field(default_factory=dict)

    def add(self, positions: int, seconds: float) -> None:
        if positions >= 1 and seconds > 0:
            self.samples.setdefault(int(positions), []).append(float(seconds))

    def points(self) -> list[tuple[float, float, int]]:
        """(mean positions, median seconds, forwards) per octave with enough forwards, ascending."""
        pooled: dict[int, list[tuple[int, float]]] = {}
        for n, values in self.samples.items():
            pooled.setdefault(math.ceil(math.log2(n)), []).extend((n, v) for v in values)
        out = []
        for _, rows in sorted(pooled.items()):
            if len(rows) >= MIN_SAMPLES:
                out.append((statistics.fmean(n for n, _ in rows), statistics.median(v for _, v in rows), len(rows)))
        return out

    def sizes(self) -> list[float]:
        return [n for n, _, _ in self.points()]

    def seconds(self, positions: float) -> float | None:
        """The curve at `positions`: linear between the two points around it; None outside the points."""
        pts = self.points()
        if not pts or positions < pts[0][0] - 1e-9 or positions > pts[-1][0] + 1e-9:
            return None
        for (n0, s0, _), (n1, s1, _) in zip(pts, pts[1:]):
            if n0 <= positions <= n1:
                w = (positions - n0) / (n1 - n0)
                return (1 - w) * s0 + w * s1
        return pts[0][1]  # a single point, asked at its own size

    def count(self, positions: float) -> int:
        """Forwards behind the curve's point nearest to `positions` (0 without points)."""
        pts = self.points()
        return min(pts, key=lambda p: abs(p[0] - positions))[2] if pts else 0

    def ratio(self, positions: float) -> float | None:
        """cost(positions) / cost(1): what verifying that many positions costs in one-token forwards."""
        one, many = self.seconds(1), self.seconds(positions)
        return many / one if one and many is not None else None


def expected_speedup(m: Metrics, curve: CostCurve) -> float | None:
    """Expected speedup over plain decoding of steps like these (`m`, decode steps only): tau tokens per
    step, for the drafter's measured seconds per step plus the step's forward (one new position where it
    drafted nothing, else the mean verified positions of the steps that drafted), against one one-token
    forward per token; both forwards from the curve. None where the curve does not cover those sizes."""
    if not m.steps:
        return None
    wide = m.steps - m.single_steps
    one = curve.seconds(1)
    many = curve.seconds(m.mean_verified_positions) if wide else 0.0
    if not one or many is None:
        return None
    verify = (m.single_steps * one + wide * many) / m.steps
    return m.tau * one / (m.draft_s / m.steps + verify)
