"""Online adaptation of a distilled drafter (Online Speculative Decoding, Liu et al. 2023).

While it serves, the drafter keeps the target's distribution at every position where its draft
was rejected (the engine hands each drafter `TargetView.logits`: the target's raw logits after the
root and after every drafted node; the row after the last accepted node is the position the draft
got wrong). Every `every` such positions it takes `steps` Adam steps of forward KL from the
target's top-K distribution on a small replay buffer of the most recent `capacity` positions,
each position read in its own context (one drafter forward with gradients per distinct text).

Only the drafter's own copy of its weights changes (make_distilled_drafter(online=True) deep-copies
them); the shipped file and the shared target embedding never do. Output stays lossless: the
verifier checks whatever q the drafter proposed, with whatever weights it had at that moment.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..tree import DraftTree
from ..verify import RESAMPLED, Verdict
from . import TargetView

LR = 1e-4
STEPS = 2
EVERY = 8
CAPACITY = 64
TOP_K = 32


@dataclass
class Item:
    context: tuple[int, ...]  # the committed text up to and including the position's token
    ids: torch.Tensor  # [K] the target's most likely next tokens there
    logp: torch.Tensor  # [K] their log-probabilities (temperature 1)


def own_parameters(model) -> list[torch.nn.Parameter]:
    """Every parameter but the input embedding (the target's, shared and frozen): what the learner updates."""
    emb = model.get_input_embeddings().weight
    return [p for p in model.parameters() if p is not emb]


class OnlineLearner:
    def __init__(self, model, lr: float = LR, steps: int = STEPS, every: int = EVERY, capacity: int = CAPACITY,
                 top_k: int = TOP_K):
        self.model = model
        self.params = own_parameters(model)
        self.opt = torch.optim.Adam(self.params, lr=lr)
        self.steps, self.every, self.capacity, self.top_k = steps, every, capacity, top_k
        kept = model.vocab_ids
        self.lookup = torch.full((int(model.config.vocab_size),), -1, dtype=torch.long)
        self.lookup[kept] = torch.arange(len(kept))
        self.buffer: list[Item] = []
        self.fresh = 0  # positions added since the last update
        self.updates = 0
        self.seen = 0
        self.seconds = 0.0
        self.losses: list[float] = []

    def observe(self, tree: DraftTree, verdict: Verdict, target: TargetView) -> bool:
        """Record the position this step's draft got wrong; update when enough are new. True = weights changed."""
        if not len(tree) or verdict.kind != RESAMPLED or target.logits is None:
            return False
        row = (verdict.path[-1] + 1) if verdict.path else 0
        top = target.logits[row].float().log_softmax(-1).topk(min(self.top_k, target.logits.shape[-1]))
        context = tuple(target.committed[:-1])  # the target's own token of this step comes after it
        self.buffer.append(Item(context, top.indices.cpu(), top.values.cpu()))
        self.buffer = self.buffer[-self.capacity:]
        self.fresh += 1
        self.seen += 1
        if self.fresh < self.every:
            return False
        self.fresh = 0
        self.update()
        return True

    def update(self) -> float:
        """`steps` Adam steps on the buffer; returns the last loss."""
        start = time.perf_counter()
        texts = self._texts()
        loss_value = 0.0
        with torch.enable_grad(), torch.inference_mode(False):
            for _ in range(self.steps):
                self.opt.zero_grad(set_to_none=True)
                total, count = 0.0, 0
                for text, items in texts:
                    loss, n = self._loss(text, items)
                    (loss * n).backward()
                    total += float(loss.detach()) * n
                    count += n
                for p in self.params:
                    if p.grad is not None:
                        p.grad /= max(count, 1)
                torch.nn.utils.clip_grad_norm_(self.params, 1.0)
                self.opt.step()
                loss_value = total / max(count, 1)
        self.updates += 1
        self.losses.append(loss_value)
        self.seconds += time.perf_counter() - start
        return loss_value

    def _texts(self) -> list[tuple[tuple[int, ...], list[Item]]]:
        """Group buffered positions by a text that contains each one's context as a prefix."""
        groups: list[tuple[tuple[int, ...], list[Item]]] = []
        for item in sorted(self.buffer, key=lambda it: -len(it.context)):
            for text, items in groups:
                if text[: len(item.context)] == item.context:
                    items.append(item)
                    break
            else:
                groups.append((item.context, [item]))
        return groups

    def _loss(self, text: tuple[int, ...], items: list[Item]) -> tuple[torch.Tensor, int]:
        """Forward KL(target top-K restricted to the kept tokens, renormalized || q) at the items' positions."""
        device = self.params[0].device
        ids = torch.tensor(text, device=device)[None]
        emb = self.model.get_input_embeddings()(ids).detach()
        positions = torch.tensor([len(it.context) - 1 for it in items], device=device)
        hidden = self.model.model(inputs_embeds=emb, position_ids=torch.arange(ids.shape[1], device=device)[None],
                                  use_cache=False).last_hidden_state[0]
        logq = self.model.lm_head(hidden[positions]).float().log_softmax(-1)
        sub = self.lookup[torch.stack([it.ids for it in items])].to(device)
        p = torch.stack([it.logp for it in items]).float().exp().to(device) * (sub >= 0)
        p = p / p.sum(-1, keepdim=True).clamp_min(1e-9)
        loss = -(p * logq.gather(-1, sub.clamp_min(0))).sum(-1) + (p * p.clamp_min(1e-12).log()).sum(-1)
        return loss.mean(), len(items)
