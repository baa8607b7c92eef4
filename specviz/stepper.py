"""Times target forwards of n new tokens after a cached prefix: what `profile` and `verify_cost` measure.

Below both (profile reaches up to the engine for its AR runs; verify_cost sits under the engine)."""
from __future__ import annotations

import time

import torch

from .lm import CachedLM

ROOM = 32  # the most new positions a timed forward writes (profile's largest size)


class Stepper:
    """Times forwards of n new tokens (the last committed token + n - 1 chain nodes) after a prefix."""

    def __init__(self, lm: CachedLM, prefix: list[int]):
        self.lm, self.prefix, self.i = lm, prefix, 0
        self.sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)
        lm.reset()
        lm.reserve(len(prefix) + 2 * ROOM + 8)
        lm.forward(prefix)  # prefill

    def step(self, n: int) -> float:
        lm, vocab = self.lm, self.lm.vocab
        self.i += 1
        last = (self.i * 7919) % vocab
        nodes = [(self.i * 104729 + 31 * j) % vocab for j in range(n - 1)]
        self.sync()
        start = time.perf_counter()
        lm.forward(self.prefix + [last], nodes, list(range(-1, n - 2)))
        self.sync()  # a GPU runs the forward asynchronously
        seconds = time.perf_counter() - start
        lm.accept([])  # the next step crops back to the prefix
        return seconds
