"""Parallel speculative decoding with adaptive draft length (PEARL, Liu et al. 2024).

The drafter and the target run at the same time, each in its own worker thread (a `Lane`) with
its share of the CPU cores (torch releases the GIL inside forwards; on CUDA each lane draws on its
own stream). A step is still one target forward, checked by the engine's own verification rule
and reported with the engine's own events; what changes is what the drafter does meanwhile.

- pre-verify: after a rejection the target's next forward feeds only the committed text (its new
  last token), while the drafter drafts the next round on top of it; that forward's distribution
  checks the round's first token as soon as it is drafted. A rejection there drops the rest of
  the round at once (tasks not yet started are skipped; a drafter forward under way finishes and
  is thrown away: a forward cannot be interrupted).
- post-verify: while the target verifies the rest of a round in one forward, the drafter keeps
  drafting on top of it. The continuation's first token (the "lookahead") is checked against the
  distribution after the round's last token, in place of the bonus token; if every token is
  accepted, the rest of the continuation is already the next round's draft. Otherwise the
  continuation is dropped and the next step pre-verifies a fresh round.

So long acceptance streaks run in post-verify with both models busy, and early rejections cost
one short forward: the draft length adapts by itself (PEARL's point).

Lossless: every token is a draft accepted by the rule against the target's distribution at its
position (with the q it was drawn from), or the rule's own resampled / bonus token, as in the
sequential engine. What a step verifies never depends on timing: a round always has draft_len
tokens, a step always waits for the tokens it verifies, and the drafter draws each position from
its own generator (seeded by the run's seed and the position; the verifier keeps the run's
generator), so a cancelled round leaves no trace in later draws. A seed therefore gives the same
tokens whatever the threads' timing. Each position is tested at most once: a test commits it.

The drafter must draft chains one token per call, without reading the target's states and without
learning from verdicts (its `learn` is never called: it drafts ahead of them).
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import torch

from .drafters import Drafter, FreeDrafter
from .engine import Engine, Settings, interrupter
from .events import Drafted, Emitted, Event, RunFinished, RunStarted, StepFinished, StepStarted, Verified
from .metrics import Metrics
from .sampling import Warp, entropy, probs
from .text import IncrementalText
from .tree import IID, DraftTree
from .verify import ACCEPTED, Rule, Verdict

_MASK64 = (1 << 64) - 1


def position_generator(seed: int, position: int) -> torch.Generator:
    """The drafter's random stream for one position of one run (SplitMix64 of seed and position)."""
    z = (((seed << 32) ^ position) + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return torch.Generator().manual_seed((z ^ (z >> 31)) >> 1)


class OneToken:
    """The stop rule the drafter lane drafts with: one token per call (the engine decides the rest)."""

    name = "one token"

    def limit(self) -> int:
        return 1

    def stop(self, depth: int, entropy: float, top_prob: float) -> str | None:
        return None

    def update(self, drafted: int, accepted: int) -> None:
        pass

    def reset(self) -> None:
        pass

    def state(self) -> dict[str, float]:
        return {}


ONE_TOKEN = OneToken()


class Lane:
    """A worker thread with its own share of the CPU (torch threads; set per thread with OpenMP)
    and, on CUDA, its own stream. It runs what it is given, in order."""

    def __init__(self, name: str, threads: int, device: torch.device):
        if threads < 1:
            raise ValueError(f"a lane needs at least one thread, got {threads}")
        self.threads = threads
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"specviz-{name}", initializer=self._setup,
                                        initargs=(threads, device))

    @staticmethod
    def _setup(threads: int, device: torch.device) -> None:
        torch.set_num_threads(threads)
        if device.type == "cuda":  # the seam for GPUs: each lane queues its kernels on its own stream
            torch.cuda.set_stream(torch.cuda.Stream(device))

    def submit(self, fn: Callable, *args) -> Future:
        return self._pool.submit(fn, *args)

    def drain(self) -> None:
        """Wait until everything given so far has run."""
        self._pool.submit(lambda: None).result()


@dataclass
class Drafting:
    """One drafted token, with the distribution it was drawn from and when it was drafted."""

    token: int
    q: torch.Tensor
    entropy: float
    start: float  # perf_counter
    end: float


class DraftRound:
    """`size` draft tokens on top of `base`, one drafter forward per task on the drafter lane.

    cancel() skips the tasks that have not started; `started` counts the drafter forwards run
    (or running), `shown` the tokens that became nodes of a verified tree."""

    def __init__(self, lane: Lane, drafter: Drafter, base: list[int], size: int, warp: Warp, seed: int):
        self.base, self.drafter, self.warp, self.seed = list(base), drafter, warp, seed
        self.tokens: list[Drafting] = []
        self.started = self.shown = 0
        self.cancelled = False
        self._lock = threading.Lock()
        self._tasks = [lane.submit(self._draft) for _ in range(size)]

    def __len__(self) -> int:
        return len(self._tasks)

    def _draft(self) -> None:
        with self._lock:
            if self.cancelled:
                return
            self.started += 1
        try:
            ids = self.base + [d.token for d in self.tokens]
            start = time.perf_counter()
            tree = self.drafter.propose(ids, self.warp, position_generator(self.seed, len(ids)), ONE_TOKEN)
            if len(tree) != 1:
                raise ValueError(f"parallel decoding drafts one token per drafter call, but drafter "
                                 f"'{self.drafter.name}' proposed {len(tree)}: it needs a chain drafter")
            self.tokens.append(Drafting(tree.tokens[0], tree.q_of(0), tree.entropy.get(-1, 0.0), start,
                                        time.perf_counter()))
        except BaseException:
            self.cancelled = True  # later tasks would draft at the wrong position
            raise

    def get(self, i: int) -> Drafting:
        """Token i, once drafted (waits for it; re-raises the drafter's error)."""
        self._tasks[i].result()
        self.shown = max(self.shown, i + 1)
        return self.tokens[i]

    def cancel(self) -> int:
        """Stop drafting; the number of its drafter forwards no verified tree will use."""
        with self._lock:
            wasted = 0 if self.cancelled else self.started - self.shown  # counted once
            self.cancelled = True
        for task in self._tasks:
            task.cancel()
        return wasted


def chain_tree(drafts: list[Drafting]) -> DraftTree:
    tree = DraftTree(draw=IID)
    for d in drafts:
        parent = len(tree) - 1
        tree.q[parent], tree.entropy[parent] = d.q, d.entropy
        tree.add(d.token, parent)
    return tree


def default_threads() -> tuple[int, int]:
    """(target, drafter) threads: the calling thread's torch threads split between the two."""
    n = torch.get_num_threads()
    return max(1, n - n // 2), max(1, n // 2)


class ParallelEngine(Engine):
    """The engine with drafting and verification overlapped (see the module doc).

    threads: (target, drafter) torch threads, each model in its own lane; default: the caller's
    threads split in two. draft_len: tokens per round when no stop rule sets it."""

    def __init__(self, target: torch.nn.Module, decode: Callable[[list[int]], str], drafter: Drafter,
                 eos_ids=frozenset(), target_name: str = "target", rule: str | Rule | None = None,
                 max_draft: int = 128, stop=None, fast_path: bool | None = None, draft_len: int = 4,
                 threads: tuple[int, int] | None = None):
        if drafter is None or isinstance(drafter, FreeDrafter):
            raise ValueError("parallel decoding needs a drafter with its own model (kind 'model' or 'trained'): "
                             "a drafter without one has no forward to overlap")
        if tuple(drafter.reads_target):
            raise ValueError(f"drafter '{drafter.name}' reads the target's states of verified tokens, so it cannot "
                             "draft ahead of verification: parallel decoding needs a drafter with its own model")
        if getattr(drafter, "online", None) is not None:  # e.g. DistilledDrafter(online=...)
            raise ValueError(f"drafter '{drafter.name}' learns from each verdict as it serves, so it cannot draft "
                             "ahead of them: parallel decoding needs a drafter that does not learn online")
        if stop is not None and stop.name not in ("static", "schedule"):
            raise ValueError(f"parallel decoding adapts the draft length itself; stopping rule '{stop.name}' "
                             "is not supported there (use static or schedule)")
        super().__init__(target, decode, drafter, eos_ids, target_name, rule, max_draft, stop, fast_path)
        self.draft_len = draft_len
        self.threads = tuple(threads) if threads else None
        self._lanes: tuple[Lane, Lane] | None = None
        self._rounds: list[DraftRound] = []  # rounds of the current run still drafting

    def lanes(self) -> tuple[Lane, Lane]:
        if self._lanes is None:
            target_threads, draft_threads = self.threads or default_threads()
            self.threads = (target_threads, draft_threads)
            self._lanes = (Lane("target", target_threads, self.target.device),
                           Lane("drafter", draft_threads, self.drafter.lm.device if hasattr(self.drafter, "lm")
                                else self.target.device))
        return self._lanes

    def _settle(self) -> int:
        """Cancel every round still drafting and wait until both lanes are idle: drafter forwards
        no tree used."""
        wasted = sum(r.cancel() for r in self._rounds)
        self._rounds = []
        if self._lanes is not None:
            for lane in self._lanes:
                lane.drain()
        return wasted

    def _round(self, base: list[int], warp: Warp, seed: int) -> DraftRound:
        size = self.stop.limit() if self.stop is not None else self.draft_len
        r = DraftRound(self.lanes()[1], self.drafter, base, size, warp, seed)
        self._rounds.append(r)
        return r

    def _retire(self, r: DraftRound | None) -> int:
        if r is None or r not in self._rounds:
            return 0
        self._rounds.remove(r)
        return r.cancel()

    def _forward(self, ids: list[int], chain: list[int], warp: Warp) -> tuple[torch.Tensor, torch.Tensor, float, float]:
        """On the target lane: p and entropy rows after the last committed token and each chain token."""
        start = time.perf_counter()
        root, node_logits = self.target.forward(ids, chain, list(range(-1, len(chain) - 1)))
        logits = torch.cat([root[None], node_logits]) if chain else root[None]
        return probs(logits, warp).cpu(), entropy(logits).cpu(), start, time.perf_counter() - start

    @staticmethod
    def verify(rule: Rule, tree: DraftTree, p_rows: torch.Tensor, ent_rows: torch.Tensor, gen: torch.Generator,
               lookahead: bool) -> tuple[Verdict, torch.Tensor, torch.Tensor]:
        """The rule's verdict on a step's tree. With a lookahead (the tree's last node, drafted while
        the forward ran) there is no row after the last node: the rule gets a copy of the row before it
        as a stand-in for the bonus distribution, whose token is never emitted (the caller drops it)."""
        if lookahead:
            p_rows, ent_rows = torch.cat([p_rows, p_rows[-1:]]), torch.cat([ent_rows, ent_rows[-1:]])
        return rule(tree, p_rows, gen), p_rows, ent_rows

    def stream(self, prompt_ids: list[int], settings: Settings = Settings(), prompt: str = "",
               config: dict | None = None, cancel: Callable[[], bool] | None = None,
               time_limit_s: float | None = None, clock: Callable[[], float] | None = None,
               batched: bool = False, prompt_embeds=None) -> Iterator[Event]:
        """The run's events, as Engine.stream gives them; drafting and verification overlap (its own
        threads: `batched` is ignored, its forwards are never shared)."""
        if prompt_embeds is not None:
            raise ValueError("parallel (PEARL) decoding of a vision-language target is not supported")
        clock0 = time.perf_counter()
        interrupted = interrupter(cancel, time_limit_s, clock)
        self._settle()  # a run abandoned mid-way may have left work queued
        rule_name, rule = self._start(prompt_ids, settings)
        target_lane, _ = self.lanes()
        warp, seed = settings.warp, settings.seed
        gen = torch.Generator().manual_seed(seed)  # the verifier's; the drafter draws per position
        text = IncrementalText(self.decode)
        ids, new = list(prompt_ids), []
        metrics = Metrics()
        stop_reason, step = "length", 0
        yield RunStarted(self.target_name, f"{self.drafter.name} · parallel", rule_name, settings.__dict__.copy(),
                         prompt, len(ids), config)
        job, used, pre = self._round(ids, warp, seed), 0, True  # `used` tokens of `job` are committed
        try:
            while len(new) < settings.max_new_tokens:
                if reason := interrupted():
                    stop_reason = reason
                    break
                yield StepStarted(step)
                t0 = time.perf_counter()
                if pre:  # pre-verify: the forward feeds the text; the round's first token is the lookahead
                    chain, look = [], job
                else:  # post-verify: the rest of the round, and its continuation drafted meanwhile
                    chain = [job.get(i) for i in range(used, len(job))]
                    room = settings.max_new_tokens - len(new) > len(chain)
                    look = self._round(ids + [d.token for d in chain], warp, seed) if room else None
                forward = target_lane.submit(self._forward, ids, [d.token for d in chain], warp)
                drafts = chain + ([look.get(0)] if look is not None else [])
                tree = chain_tree(drafts)
                nodes = self._nodes(tree)
                pause = time.perf_counter()
                yield Drafted(step, [replace(n) for n in nodes], tree.draw, None)
                pause = time.perf_counter() - pause
                p_rows, ent_rows, t1, t_verify = forward.result()
                verdict, p_rows, ent_rows = self.verify(rule, tree, p_rows, ent_rows, gen, look is not None)
                self.target.accept(verdict.path)
                if self.stop is not None and len(tree):
                    self.stop.update(len(tree), len(verdict.path))
                betas = self._fill_verdict(nodes, tree, p_rows, verdict)
                tokens = self._tokens(tree, verdict, nodes, p_rows, ent_rows)
                continued = look is not None and len(verdict.path) == len(tree)  # the lookahead was accepted
                if continued:
                    tokens = tokens[:-1]  # no bonus token: the continuation's first token took its place
                tokens, eos = self._cut(tokens, settings, len(new))
                stop_reason = "eos" if eos else stop_reason
                ids += [t.id for t in tokens]
                new += [t.id for t in tokens]
                for tok in tokens:
                    tok.text = text.add(tok.id)
                if continued:
                    if look is not job:
                        metrics.wasted_forwards += self._retire(job)  # wholly used: nothing
                    job, used, pre = look, 1, False
                else:  # a rejection (or the run's last step): drop the continuation, pre-verify a new round
                    metrics.wasted_forwards += self._retire(look) + self._retire(job)
                    job, used, pre = None, 0, True
                    if len(new) < settings.max_new_tokens and not eos:
                        job = self._round(ids, warp, seed)
                accepted = sum(t.kind == ACCEPTED for t in tokens)
                metrics.record_step(len(tokens), len(tree), accepted, betas)
                elapsed = time.perf_counter() - t0 - pause
                t_draft = sum(d.end - d.start for d in drafts)
                metrics.elapsed_s += elapsed
                metrics.draft_s += t_draft
                metrics.record_verify(t_verify, len(tree))
                metrics.forward_s += t_verify  # the target's only: outside_forward_share = the target's idle share
                yield Verified(step, nodes, verdict.path, verdict.kind)
                yield Emitted(step, tokens)
                draft_start = min((d.start for d in drafts), default=t0)
                yield StepFinished(step, t_draft, t_verify, max(0.0, elapsed - t_draft - t_verify), metrics.snapshot(),
                                   draft_start - clock0, t1 - clock0)
                step += 1
                if eos:
                    break
            end = time.perf_counter()
            metrics.wasted_forwards += self._settle()
            metrics.elapsed_s += time.perf_counter() - end  # waiting for a drafter forward under way
        finally:
            self._settle()
        yield RunFinished(self.decode(new), new, stop_reason, metrics)
