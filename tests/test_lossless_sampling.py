"""Speculative sampling must reproduce the target's own sampling distribution exactly.

20,000 seeded runs of the real engine on a 6-token vocabulary; the joint distribution of the first
three tokens is compared with the exact one by Pearson's chi-square test. Seeds are fixed, so the
verdict is deterministic. A deliberately broken verifier must fail the same test.
"""
from functools import partial

import pytest
from bigram import BigramLM, exact_joint
from exact import pooled_pvalue, sampled

from specviz.drafters.model import ModelDrafter, chain_builder
from specviz.drafters.prompt_lookup import PromptLookupDrafter
from specviz.engine import Engine, Settings
from specviz.verify import verify_sampling

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, N_TOKENS, SAMPLES = 6, 3, 20_000
PROMPT = [1, 2, 3, 1, 2]


def chi_square(engine: Engine, settings: Settings, prompt: list[int] = PROMPT) -> tuple[float, float]:
    """(p-value, total variation distance) of sampled first tokens against the exact joint."""
    counts = sampled(engine, prompt, settings, SAMPLES)
    truth = exact_joint(engine.target.model, prompt, N_TOKENS, settings.warp)
    tvd = 0.5 * sum(abs(counts[s] / SAMPLES - p) for s, p in truth.items())
    return pooled_pvalue(counts, truth, SAMPLES), tvd



CASES = {
    "chain k=2, T=1": (lambda d: ModelDrafter(d, chain_builder(2)), Settings(N_TOKENS, temperature=1.0)),
    "chain k=3, T=0.8 top-p 0.9": (lambda d: ModelDrafter(d, chain_builder(3)), Settings(N_TOKENS, temperature=0.8, top_p=0.9)),
    "prompt lookup, T=1": (lambda d: PromptLookupDrafter(VOCAB, k=3, min_ngram=1), Settings(N_TOKENS, temperature=1.0)),
}
# The last token 1 occurred three times before, followed by 5, 4 and 2: a three-way tree of
# deterministic (one-hot) siblings at the root.
TREE_PROMPT = [1, 2, 3, 1, 4, 1, 5, 2, 1]


def test_prompt_lookup_tree_sampling_matches_target_distribution(target):
    drafter = PromptLookupDrafter(VOCAB, k=6, min_ngram=1, branches=4)
    assert len(drafter.propose(TREE_PROMPT, Settings().warp, None).children(-1)) == 3
    pvalue, tvd = chi_square(Engine(target, str, drafter, rule="sampling"), Settings(N_TOKENS, temperature=1.0),
                             TREE_PROMPT)
    print(f"prompt lookup tree: chi-square p={pvalue:.3g} tvd={tvd:.4f}")
    assert pvalue > 1e-3



@pytest.mark.parametrize("case", CASES)
def test_speculative_sampling_matches_target_distribution(target, drafter_model, case):
    make, settings = CASES[case]
    pvalue, tvd = chi_square(Engine(target, str, make(drafter_model), rule="sampling"), settings)
    print(f"{case}: chi-square p={pvalue:.3g} tvd={tvd:.4f}")
    assert pvalue > 1e-3


def test_autoregressive_sampling_matches_target_distribution(target):
    pvalue, _ = chi_square(Engine(target, str), Settings(N_TOKENS, temperature=1.0))
    assert pvalue > 1e-3


def test_a_broken_verifier_fails_the_same_test(target, drafter_model):
    # sampling from p instead of the residual after a rejection double-counts the drafter's picks
    broken = partial(verify_sampling, residual=lambda p, q: p)
    engine = Engine(target, str, ModelDrafter(drafter_model, chain_builder(2)), rule=broken)
    pvalue, tvd = chi_square(engine, Settings(N_TOKENS, temperature=1.0))
    print(f"broken verifier: chi-square p={pvalue:.3g} tvd={tvd:.4f}")
    assert pvalue < 1e-6
