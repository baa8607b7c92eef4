"""One verification of a merged tree (drafters/merged.py) leaves the target's distribution unchanged:
the first emitted token is distributed as p, whether or not the graft's token is one the first drafter
also drew (a shared node), with the first drafter's siblings i.i.d. or drawn without replacement. A
graft verified as if it were one more draw from the first drafter's q fails the same test."""
import pytest
import torch
from exact import pooled_pvalue

from specviz.drafters.merged import graft
from specviz.tree import IID, WITHOUT_REPLACEMENT, DraftTree
from specviz.verify import verify_sampling

V, DRAWS = 6, 20_000
P = torch.tensor([0.05, 0.30, 0.10, 0.25, 0.20, 0.10])
Q = torch.tensor([0.40, 0.05, 0.30, 0.05, 0.10, 0.10])  # the first drafter: far from p


def first_tokens(draw: str, graft_token: int, broken: bool = False, seed: int = 0) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    counts = [0] * V
    for _ in range(DRAWS):
        tree = DraftTree(draw=draw)
        drawn = torch.multinomial(Q, 2, replacement=draw == IID, generator=gen).tolist()
        for tok in drawn:
            tree.add(tok, -1)
        tree.q[-1] = Q
        other = DraftTree()
        other.add_certain(graft_token, -1, V)
        tree, _ = graft(tree, other, V)
        if broken:  # verify the grafted node as if the first drafter had drawn it
            tree.q_node.clear()
        verdict = verify_sampling(tree, P.expand(len(tree) + 1, V), gen)
        counts[tree.tokens[verdict.path[0]] if verdict.path else verdict.token] += 1
    return counts


def pvalue(counts: list[int]) -> float:
    return pooled_pvalue(dict(enumerate(counts)), {i: float(P[i]) for i in range(V)}, DRAWS)


@pytest.mark.parametrize("draw", [IID, WITHOUT_REPLACEMENT])
@pytest.mark.parametrize("graft_token", [1, 0])  # 0: the first drafter's likeliest, often shared
def test_a_merged_tree_keeps_the_targets_distribution(draw, graft_token):
    assert pvalue(first_tokens(draw, graft_token)) > 1e-3


def test_a_graft_verified_with_the_wrong_q_is_caught():
    assert pvalue(first_tokens(IID, graft_token=1, broken=True)) < 1e-6
