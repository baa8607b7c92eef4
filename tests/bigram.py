"""A language model whose next-token logits depend only on the last token and its position.

It runs through the real engine (CachedLM, drafters, verification, truncation) in microseconds,
and its exact joint distribution over the first tokens is a short product, so tens of thousands
of sampled runs can be compared with the truth.
"""
from itertools import product
from types import SimpleNamespace

import torch
from transformers import LlamaConfig

from specviz.sampling import Warp, probs


class BigramLM(torch.nn.Module):
    def __init__(self, vocab: int, seed: int, sharpness: float = 1.5):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=gen) * sharpness)
        self.by_position = torch.nn.Parameter(torch.randn(64, vocab, generator=gen) * 0.5)
        self.config = LlamaConfig(vocab_size=vocab, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                                  num_key_value_heads=1, max_position_embeddings=512)

    def logits(self, last: int, position: int) -> torch.Tensor:
        return self.table[last] + self.by_position[position % 64]

    def forward(self, input_ids, position_ids, logits_to_keep=0, **_):
        logits = self.table[input_ids] + self.by_position[position_ids % 64]
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


def exact_joint(model: BigramLM, prompt: list[int], n: int, warp: Warp) -> dict[tuple, float]:
    vocab = model.config.vocab_size
    out = {}
    with torch.no_grad():
        for seq in product(range(vocab), repeat=n):
            prob, last, pos = 1.0, prompt[-1], len(prompt) - 1
            for tok in seq:
                prob *= float(probs(model.logits(last, pos)[None], warp)[0, tok])
                last, pos = tok, pos + 1
            out[seq] = prob
    return out
