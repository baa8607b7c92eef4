import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

torch.set_num_threads(min(2, os.cpu_count() or 1))


def tiny_llama(seed: int, vocab: int = 32, layers: int = 2, hidden: int = 32) -> LlamaForCausalLM:
    """A random-weight model small enough for thousands of exact runs."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    # sharper logits than the default init so greedy paths are not near-ties
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model


@pytest.fixture(scope="session")
def tiny_target():
    return tiny_llama(0)


def perturbed(model: LlamaForCausalLM, scale: float, seed: int) -> LlamaForCausalLM:
    """A drafter that agrees with the target often but not always."""
    import copy

    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in out.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * scale * param.std())
    return out


@pytest.fixture(scope="session")
def tiny_drafter(tiny_target):
    return perturbed(tiny_target, 0.3, seed=1)


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from a second thread and lose a lot when the cores are busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def target():
    """The 6-token bigram target of the distribution tests (exact joints are cheap to compute)."""
    from bigram import BigramLM

    return BigramLM(6, seed=0)


@pytest.fixture(scope="session")
def drafter_model():
    from bigram import BigramLM

    return BigramLM(6, seed=1)


def decode(ids):
    return "".join(f"<{i}>" for i in ids)
