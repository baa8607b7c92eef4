"""Total variation distance and the TVD++ estimator of its gradient (Goel et al. 2024, "Direct Alignment
of Draft Model for Speculative Decoding with Chat-Fine-Tuned LLMs").

For one position with target distribution p and drafter q = softmax(z):

    TV(p, q) = 1/2 sum_x |p(x) - q(x)| = 1 - sum_x min(p(x), q(x))

and 1 - TV is exactly the probability that speculative sampling accepts the drafted token there,
which is why a drafter would rather minimize TV than KL. Its gradient (almost everywhere) is

    grad TV = 1/2 sum_x sign(q(x) - p(x)) grad q(x)
            = - sum_x 1[p(x) > q(x)] grad q(x)          (sum_x grad q(x) = 0, sign = 1 - 2 * 1[p > q])
            = - E_{x ~ q} [ r(x) grad log q(x) ],   r(x) = 1[p(x) > q(x)]

a policy gradient with reward r: "draft x more often when the target likes it more than you do".
Any baseline b independent of the sample keeps it unbiased (E_q[grad log q] = 0), so TVD++ uses
the normalized advantage

    A(x) = (r(x) - mu) / sigma,    mu = E_{x ~ q}[r(x)] = sum_x q(x) 1[p(x) > q(x)]   (per position, exact)
                                    sigma = the standard deviation of r over the batch's samples

and the surrogate loss  L = - mean over positions and samples of  stopgrad(A(x_s)) log q(x_s),
x_s ~ q (S samples per position). Its expected gradient is grad TV / sigma: the TV gradient, with
the batch's reward spread as a step-size normalization (sigma is treated as a constant). The
paper normalizes the reward by its batch mean and standard deviation; the per-position mean used
here is an unbiased baseline of lower variance, available because q is explicit.
(tests/test_distilled_drafter.py checks the expectation against autograd of the exact TV.)

p is the target's top-K (log-probabilities from the distillation data, not renormalized: the tail
outside the top-K counts as p = 0, so r = 0 there and TV is an upper bound on the true one).
"""
from __future__ import annotations

import torch

SAMPLES = 4  # draft samples per position


def exact_tv(p: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """[...] TV(p, softmax(logits)) per row, differentiable in the logits."""
    return 0.5 * (p - logits.float().softmax(-1)).abs().sum(-1)


def reward(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """r(x) = 1[p(x) > q(x)], same shape as p."""
    return (p > q).float()


def tvdpp_advantage(p: torch.Tensor, q: torch.Tensor, x: torch.Tensor, sigma: float | torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """A(x) for sampled tokens x [N, S] given p, q [N, V] (q detached): (advantages, sigma used)."""
    r_all = reward(p, q)
    mu = (q * r_all).sum(-1, keepdim=True)  # E_q[r], exact per position
    r = r_all.gather(-1, x)
    if sigma is None:
        sigma = r.std(unbiased=False).clamp_min(1e-3) if r.numel() > 1 else torch.tensor(1.0)
    return (r - mu) / sigma, torch.as_tensor(sigma)


def tvdpp_loss(logits: torch.Tensor, p: torch.Tensor, gen: torch.Generator | None = None, samples: int = SAMPLES,
               sigma: float | None = None) -> tuple[torch.Tensor, dict]:
    """The TVD++ surrogate over rows [N, V] of drafter logits and target probabilities p [N, V].

    Returns (loss, stats): loss.backward() gives the estimator of grad mean_n TV_n / sigma."""
    logq = logits.float().log_softmax(-1)
    q = logq.detach().exp()
    x = torch.multinomial(q, samples, replacement=True, generator=gen)  # [N, S]
    adv, sig = tvdpp_advantage(p, q, x, sigma)
    loss = -(adv * logq.gather(-1, x)).mean()
    with torch.no_grad():
        tv = 0.5 * (p - q).abs().sum(-1).mean()
    return loss, {"tv": float(tv), "sigma": float(sig)}


def expected_tvdpp_grad(logits: torch.Tensor, p: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """The estimator's expectation over x ~ q, by enumerating the vocabulary (for tests): the
    gradient wrt the logits of sum_x q(x) * (-A(x) log q(x)), A with a fixed sigma, averaged over rows."""
    logits = logits.detach().float().requires_grad_(True)
    logq = logits.log_softmax(-1)
    q = logq.detach().exp()
    r = reward(p, q)
    adv = (r - (q * r).sum(-1, keepdim=True)) / sigma
    (-(q * adv * logq).sum(-1).mean()).backward()
    return logits.grad
