"""Exact joint distributions of the first tokens of ANY causal LM (cache-free forwards), so the
distribution tests can run on models whose next token depends on the whole context: a wrong tree
mask or a stale cache entry changes such a model's output and must fail the test."""
from itertools import product

import torch

from specviz.sampling import Warp, probs


@torch.no_grad()
def exact_joint_lm(model, prompt: list[int], n: int, warp: Warp) -> dict[tuple, float]:
    return exact_joint(lambda prefix: model(torch.tensor([prompt + list(prefix)])).logits[0, -1],
                       model.config.vocab_size, n, warp)


def exact_joint(next_logits, vocab: int, n: int, warp: Warp) -> dict[tuple, float]:
    """The exact joint of the first n tokens of any model given by `next_logits(prefix) -> [vocab]` (the
    logits after the prompt and the tokens `prefix`; each prefix asked once)."""
    cache: dict[tuple, torch.Tensor] = {}

    def dist(prefix: tuple) -> torch.Tensor:
        if prefix not in cache:
            cache[prefix] = probs(next_logits(prefix)[None], warp)[0]
        return cache[prefix]

    out = {}
    for seq in product(range(vocab), repeat=n):
        prob = 1.0
        for i, tok in enumerate(seq):
            prob *= float(dist(seq[:i])[tok])
            if prob == 0.0:
                break
        out[seq] = prob
    return out


def context_llama(vocab: int = 6, seed: int = 3):
    """A tiny Llama whose next token depends strongly on the whole context (sharp attention, large
    values): a stale cache entry or a wrong tree mask changes its output measurably."""
    from conftest import tiny_llama

    target = tiny_llama(seed, vocab=vocab)
    with torch.no_grad():
        target.model.embed_tokens.weight.mul_(2.0)
        for layer in target.model.layers:
            for proj, scale in (("q_proj", 6), ("k_proj", 6), ("v_proj", 3), ("o_proj", 3)):
                getattr(layer.self_attn, proj).weight.mul_(scale)
    return target


def sampled(engine, prompt: list[int], settings, samples: int):
    """Counter of the engine's token sequences over `samples` seeded runs (seeds 0..samples-1)."""
    from collections import Counter
    from dataclasses import replace

    return Counter(tuple(engine.run(prompt, replace(settings, seed=s)).token_ids) for s in range(samples))


def pooled_pvalue(counts, truth: dict[tuple, float], samples: int) -> float:
    """Chi-square p-value of observed counts against exact probabilities, with the cells expecting fewer
    than 5 pooled into one (dropped when the pool expects nothing)."""
    from scipy.stats import chisquare

    rare = [s for s, p in truth.items() if p * samples < 5]
    cells = [s for s in truth if s not in rare]
    obs = [counts[s] for s in cells] + [sum(counts[s] for s in rare)]
    exp = [truth[s] * samples for s in cells] + [sum(truth[s] for s in rare) * samples]
    obs, exp = (obs[:-1], exp[:-1]) if exp[-1] == 0 else (obs, exp)
    exp = [e * sum(obs) / sum(exp) for e in exp]  # float rounding only
    return float(chisquare(obs, exp).pvalue)


def pvalue_against_exact(engine, prompt: list[int], n: int, settings, samples: int) -> float:
    """Chi-square p-value of the engine's first n tokens over `samples` seeded runs (seeds 0..samples-1)
    against the exact joint of its target (cells expecting < 5 pooled). Deterministic."""
    counts = sampled(engine, prompt, settings, samples)
    return pooled_pvalue(counts, exact_joint_lm(engine.target.model, prompt, n, settings.warp), samples)
