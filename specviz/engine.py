"""The decoding loop: draft -> verify in one target forward -> emit, as a stream of typed events.

With no drafter every step drafts nothing and the loop is plain autoregressive decoding, so the
AR reference and speculative decoding share one code path and one set of metrics.
"""
from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

import torch

from .drafters import Drafter, TargetView, hint
from .events import Drafted, Emitted, Event, Node, Prefilled, RunFinished, RunStarted, StepFinished, StepStarted, Token, Verified
from .limits import ENGINE
from .lm import CachedLM
from .metrics import Metrics
from .sampling import Warp, check_warp, entropy, probs
from .stop_rules import StopNote, StopRule
from .text import IncrementalText
from .tree import DraftTree, depths
from .rules import make_rule, resolve
from .verify import ACCEPTED, UNVISITED, Rule
from . import verify_cost

MAX_NEW_TOKENS = ENGINE.max_new_tokens
# a longer prompt is read in chunks of this many tokens, with a Prefilled event (and, served, a turn) between
PREFILL_CHUNK = 256


@dataclass(frozen=True)
class Settings:
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop_at_eos: bool = True

    @property
    def warp(self) -> Warp:
        return Warp(self.temperature, self.top_k, self.top_p)


def check_settings(s: Settings) -> None:
    if not (1 <= s.max_new_tokens <= MAX_NEW_TOKENS):
        raise ValueError(f"max_new_tokens must be in [1, {MAX_NEW_TOKENS}], got {s.max_new_tokens}")
    check_warp(s.warp)


def interrupter(cancel: Callable[[], bool] | None, time_limit_s: float | None,
                clock: Callable[[], float] | None = None) -> Callable[[], str | None]:
    """Why a run that starts now must end ("cancelled", "time limit"), or None to go on. `clock()`: the
    seconds the run has used (default: wall clock since now); a scheduler that takes turns between runs
    counts only each run's own turns (scheduler.RunClock)."""
    if clock is None:
        started = time.monotonic()
        clock = lambda: time.monotonic() - started  # noqa: E731

    def interrupted() -> str | None:
        if cancel is not None and cancel():
            return "cancelled"
        if time_limit_s is not None and clock() > time_limit_s:
            return "time limit"
        return None

    return interrupted


@dataclass
class TargetForward:
    """A verification forward a batched stream asks its scheduler to run: CachedLM.forward's arguments
    (lm.forward(committed, tokens, parents, hidden_layers)). Not an event: no view ever sees it."""
    lm: CachedLM
    committed: list[int]
    tokens: list[int]
    parents: list[int]
    hidden_layers: tuple[int, ...]


@dataclass
class Result:
    text: str
    token_ids: list[int]
    metrics: Metrics
    stop_reason: str
    events: list[Event] = field(default_factory=list)


class Waits:
    """Seconds an engine's stream spent suspended at its yields (a consumer, a scheduler's other runs)."""

    __slots__ = ("waited",)

    def __init__(self):
        self.waited = 0.0

    def clock(self) -> float:
        """perf_counter without the waits: this run's own time."""
        return time.perf_counter() - self.waited


class Engine:
    def __init__(
        self,
        target: torch.nn.Module,
        decode: Callable[[list[int]], str],
        drafter: Drafter | None = None,
        eos_ids: set[int] | frozenset = frozenset(),
        target_name: str = "target",
        rule: str | Rule | None = None,
        max_draft: int = 128,
        stop: StopRule | None = None,
        fast_path: bool | None = None,
    ):
        self.target = CachedLM(target, fast_path)  # None: the CPU fast path where the model supports it
        self.decode = decode
        self.drafter = drafter
        self.eos_ids = set(eos_ids)
        self.target_name = target_name
        self.rule_name = rule
        self.max_draft = max_draft  # the most nodes a drafter may add to the context in one step
        self.stop = stop  # when drafting rounds end (None: the drafter's own fixed length)
        self._rules: dict[str, Rule] = {}
        # hints hold no strong reference to the engine or its target: through any cycle among a drafter's
        # objects they would keep a finished run's KV cache alive until the garbage collector's next full
        # pass (a page serving thirty visitors piled up 600 MB of them)
        target = weakref.ref(self.target)
        hint(drafter, "price", lambda: verify_cost.seconds_by_positions(target()))  # trees sized by it
        self.waits = Waits()
        hint(drafter, "own_clock", self.waits.clock)  # a drafter that times its steps reads this run's own time

    def _out(self, event):
        """Yield `event`, counting the time until the stream is resumed as waiting (Waits.clock)."""
        t = time.perf_counter()
        answer = yield event
        self.waits.waited += time.perf_counter() - t
        return answer

    def check_prompt(self, prompt_ids: list[int], settings: Settings) -> None:
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        need = len(prompt_ids) + settings.max_new_tokens + self.max_draft
        if need > self.target.context:
            raise ValueError(
                f"the prompt has {len(prompt_ids)} tokens; with max_new_tokens={settings.max_new_tokens} "
                f"it needs {need} positions but the target's context is {self.target.context}"
            )

    def rule(self, warp: Warp) -> tuple[str, Rule]:
        """The rule given (a callable, or a registered name), or the lossless one for the temperature."""
        if callable(self.rule_name):
            return getattr(self.rule_name, "__name__", "custom"), self.rule_name
        name = resolve(self.rule_name, warp.greedy)
        if name not in self._rules:  # built once per engine (LANTERN precomputes neighbours)
            self._rules[name] = make_rule(name, self.target.model)
        return name, self._rules[name]

    def run(self, prompt_ids: list[int], settings: Settings = Settings(), prompt: str = "",
            config: dict | None = None) -> Result:
        events = list(self.stream(prompt_ids, settings, prompt, config))
        end = events[-1]
        return Result(end.text, end.token_ids, end.metrics, end.stop_reason, events)

    def stream(self, prompt_ids: list[int], settings: Settings = Settings(), prompt: str = "",
               config: dict | None = None, cancel: Callable[[], bool] | None = None,
               time_limit_s: float | None = None, clock: Callable[[], float] | None = None,
               batched: bool = False, prompt_embeds: torch.Tensor | None = None,
               image: dict | None = None) -> Iterator[Event]:
        """The run's events. `config` (a RunConfig as a dict) is recorded in RunStarted as given.

        prompt_embeds ([len(prompt_ids), hidden], a VLM's prompt with its image merged in: vlm.py): the
        prefill reads these rows in place of the ids' embeddings; every later forward is text. `image`
        (what identifies that image, vlm.image_record) is recorded in RunStarted as given.

        batched=True (for a scheduler only): before each verification forward the stream yields a
        TargetForward instead of running it, and waits to be sent (root logits, node logits, seconds of
        this run's share), so that one forward can serve several runs (scheduler.py).

        `cancel()` is asked before every target forward (and every step); when it says so, or when
        `time_limit_s` have passed (wall clock, or the run's own `clock()`), the run ends there with what
        it has, stop_reason "cancelled" or "time limit". Every run starts from fresh caches, so the next
        one is right."""
        clock0 = time.perf_counter()
        interrupted = interrupter(cancel, time_limit_s, clock)
        rule_name, rule = self._start(prompt_ids, settings)
        if prompt_embeds is not None:
            self.target.set_prompt_embeds(prompt_ids, prompt_embeds)
        warp = settings.warp
        drafter_name = self.drafter.name if self.drafter else "none (autoregressive)"
        choosing = getattr(self.drafter, "step_choice", None)  # an `auto` drafter says which arm drafts, and why
        if begin := getattr(self.drafter, "begin", None):  # `auto` may choose from the prompt before the prefill
            begin(list(prompt_ids), warp.greedy)
        text = IncrementalText(self.decode)
        gen = torch.Generator().manual_seed(settings.seed)
        ids, new = list(prompt_ids), []
        metrics = Metrics()
        stop_reason = "length"
        yield RunStarted(self.target_name, drafter_name, rule_name, settings.__dict__.copy(), prompt, len(ids),
                         config, self.drafter.policy_info() if choosing else None, image)
        read_s = 0.0  # a long prompt's chunks read ahead: counted in the first step, which reads the rest
        for done in range(PREFILL_CHUNK, len(ids), PREFILL_CHUNK):
            if reason := interrupted():
                stop_reason = reason
                break
            t = time.perf_counter()
            self.target.prefill(ids[:done], tuple(self.drafter.reads_target) if self.drafter else ())
            read_s += time.perf_counter() - t
            yield from self._out(Prefilled(done, len(ids)))
        step = 0
        while len(new) < settings.max_new_tokens and stop_reason not in ("cancelled", "time limit"):
            if reason := interrupted():
                stop_reason = reason
                break
            yield from self._out(StepStarted(step, *(choosing() if choosing else (None, None))))
            layers = tuple(self.drafter.reads_target) if self.drafter else ()  # may change step to step (`auto`)
            t0 = time.perf_counter()
            fwd0 = self._forward_seconds()
            tree = self.drafter.propose(ids, warp, gen, self.stop) if self.drafter else DraftTree()
            if self.stop is not None and tree.stop is None and len(tree):  # drafters without their own note
                tree.stop = StopNote(self.stop.name, max(depths(tree.parents)), "limit", self.stop.state()).as_dict()
            t_draft = time.perf_counter() - t0
            nodes = self._nodes(tree)
            pause = time.perf_counter()
            yield from self._out(Drafted(step, [replace(n) for n in nodes], tree.draw, tree.stop,
                                         list(tree.sources) or None))
            if reason := interrupted():  # before the (costly) target forward
                stop_reason = reason
                break
            t1 = time.perf_counter()
            if batched:  # the scheduler runs this forward together with other runs' and sends back our part
                root, node_logits, shared_s = yield from self._out(TargetForward(
                    self.target, list(ids), list(tree.tokens), list(tree.parents), layers))
                self.waits.waited -= shared_s  # this run's share of the batched forward is its own time
                t1 = time.perf_counter() - shared_s  # the wait for the others is not this run's time
            else:
                root, node_logits = self.target.forward(ids, tree.tokens, tree.parents, layers)
            logits = torch.cat([root[None], node_logits]) if len(tree) else root[None]
            p_rows = probs(logits, warp).cpu()
            ent_rows = entropy(logits).cpu()
            t_verify = time.perf_counter() - t1 + read_s
            verdict = rule(tree, p_rows, gen)
            self.target.accept(verdict.path)
            if self.drafter:
                self.drafter.learn(tree, verdict, self._target_view(ids, tree, verdict, logits, layers))
            if self.stop is not None and len(tree):
                self.stop.update(max(depths(tree.parents)), len(verdict.path))
            betas = self._fill_verdict(nodes, tree, p_rows, verdict)
            tokens, eos = self._cut(self._tokens(tree, verdict, nodes, p_rows, ent_rows), settings, len(new))
            stop_reason = "eos" if eos else stop_reason
            ids += [t.id for t in tokens]
            new += [t.id for t in tokens]
            for tok in tokens:
                tok.text = text.add(tok.id)
            accepted = sum(t.kind == ACCEPTED for t in tokens)
            metrics.record_step(len(tokens), len(tree), accepted, betas)
            metrics.wasted_forwards += tree.wasted_forwards
            elapsed = (pause - t0) + (time.perf_counter() - t1) + read_s
            metrics.elapsed_s += elapsed
            metrics.draft_s += t_draft
            metrics.record_verify(t_verify, len(tree))
            metrics.forward_s += self._forward_seconds() - fwd0 + read_s
            read_s = 0.0
            yield from self._out(Verified(step, nodes, verdict.path, verdict.kind))
            yield from self._out(Emitted(step, tokens))
            yield from self._out(StepFinished(step, t_draft, t_verify, max(0.0, elapsed - t_draft - t_verify),
                                              metrics.snapshot(), t0 - clock0, t1 - clock0))
            step += 1
            if stop_reason == "eos":
                break
        yield from self._out(RunFinished(self.decode(new), new, stop_reason, metrics))

    def _start(self, prompt_ids: list[int], settings: Settings) -> tuple[str, Rule]:
        """Check a run's settings and prompt and give it fresh caches: (rule name, rule)."""
        check_settings(settings)
        self.check_prompt(list(prompt_ids), settings)
        rule_name, rule = self.rule(settings.warp)
        if self.drafter is not None and self.drafter.greedy_only and not settings.warp.greedy:
            raise ValueError(f"drafter '{self.drafter.name}' drafts for greedy decoding only: set temperature 0")
        self.target.reset()
        self.target.reserve(len(prompt_ids) + settings.max_new_tokens + self.max_draft)  # fast path: one KV allocation
        if self.drafter:
            self.drafter.reset()
        if self.stop is not None:
            self.stop.reset()
        return rule_name, rule

    def _cut(self, tokens: list[Token], settings: Settings, emitted: int) -> tuple[list[Token], bool]:
        """A step's tokens cut to the token budget and after an end-of-text token (True: one came)."""
        tokens = tokens[: settings.max_new_tokens - emitted]
        for i, tok in enumerate(tokens):
            if settings.stop_at_eos and tok.id in self.eos_ids:
                return tokens[: i + 1], True
        return tokens, False

    def _forward_seconds(self) -> float:
        return self.target.forward_seconds + (self.drafter.forward_seconds if self.drafter else 0.0)

    def _target_view(self, ids: list[int], tree: DraftTree, verdict, logits: torch.Tensor,
                     layers: tuple[int, ...]) -> TargetView:
        """The target's states of the positions this forward committed (fed rows, then the path)."""
        hidden, start = {}, len(ids)
        if layers and self.target.hidden:
            fed = next(iter(self.target.hidden.values())).shape[0] - len(tree)
            rows = list(range(fed)) + [fed + n for n in verdict.path]
            index = torch.tensor(rows, device=self.target.device)
            hidden = {layer: h.index_select(0, index) for layer, h in self.target.hidden.items()}
            start = len(ids) - fed
        committed = ids + [tree.tokens[n] for n in verdict.path] + [verdict.token]
        return TargetView(hidden, start, logits, committed)

    def _nodes(self, tree: DraftTree) -> list[Node]:
        d = depths(tree.parents)
        return [
            Node(i, par, d[i], tok, self.decode([tok]), float(tree.q_of(i)[tok]), tree.entropy.get(par, 0.0),
                 source=tree.origin.get(i))
            for i, (tok, par) in enumerate(zip(tree.tokens, tree.parents))
        ]

    @staticmethod
    def _fill_verdict(nodes: list[Node], tree: DraftTree, p_rows: torch.Tensor, verdict) -> list[tuple[int, float]]:
        beta_at: dict[int, float] = {}
        betas = []
        for node in nodes:
            p = p_rows[node.parent + 1]
            node.p = float(p[node.token])
            node.status = verdict.status[node.id]
            node.accept_prob = verdict.accept_prob[node.id]
            if node.status != UNVISITED:
                if node.parent not in beta_at:
                    beta_at[node.parent] = float(torch.minimum(p, tree.q[node.parent]).sum())
                    betas.append((node.depth, beta_at[node.parent]))
                node.beta = beta_at[node.parent]
        return betas

    @staticmethod
    def _tokens(tree, verdict, nodes, p_rows, ent_rows) -> list[Token]:
        out = []
        for n in verdict.path:
            node = nodes[n]
            out.append(Token(node.token, "", ACCEPTED, node.p, float(ent_rows[node.parent + 1]),
                             node.q, node.accept_prob, n))
        last = verdict.path[-1] if verdict.path else -1
        out.append(Token(verdict.token, "", verdict.kind, float(p_rows[last + 1][verdict.token]),
                         float(ent_rows[last + 1])))
        return out
