"""Running counters of a decoding run and the figures derived from them, defined once.

tau                   tokens emitted per target forward (bonus and resampled tokens included)
acceptance_rate       accepted draft tokens / drafted tokens
mean_accepted_length  accepted draft tokens per target forward (tau minus the target's own token)
beta_by_depth         mean over verified nodes at each depth of sum_x min(p(x), q(x)): the
                      probability that a draft from q is accepted under p there
alpha                 mean beta over all verified nodes (Leviathan et al.'s alpha)
c                     drafter seconds per drafted token / target seconds per verification forward
verify_cost_ratio     seconds of a target forward that verified drafts / of one that verified none
                      (one new token): what verifying several positions costs on this machine
predicted_speedup     (1 - alpha^(g+1)) / ((1 - alpha)(g c + 1)), g = mean draft length (chain formula)
"""
from __future__ import annotations

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
        for name in ("tau", "acceptance_rate", "mean_accepted_length", "mean_draft_length", "beta_by_depth",
                     "alpha", "c", "mean_verified_positions", "verify_cost_ratio", "predicted_speedup", "tokens_per_s", "overhead_s", "outside_forward_share"):
            out[name] = getattr(self, name)
        return out


def predicted_speedup(alpha: float, gamma: float, c: float) -> float:
    if gamma <= 0:
        return 1.0
    if alpha >= 1.0:
        return (gamma + 1) / (gamma * c + 1)
    return (1 - alpha ** (gamma + 1)) / ((1 - alpha) * (gamma * c + 1))
