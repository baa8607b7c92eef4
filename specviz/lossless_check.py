"""Is it really lossless? Sample the first k tokens many times from plain decoding and from a speculative
configuration, and compare both with the target's exact distribution.

    for item in check_config(RunConfig(drafter="pld", settings=Settings(temperature=0.8)), "Hi", k=2, n=1000):
        ...  # Progress(done, total, phase) while it runs, then one CheckResult

How it stays fast enough for a shared page: the target's logits depend only on the text before a position,
so one MemoLM answers every forward of every run from a table keyed by that text and runs the real model only
for texts it has not seen (batched as one tree forward after the prompt's cache). The engine itself (drafter,
verification rule, cache bookkeeping, truncation) runs unchanged, once per sample, with seed = seed0 + i.

The exact side: every sequence of k tokens whose exact probability is at least MIN_EXPECTED / n is a cell of
its own, every other sequence falls into one "rest" cell whose probability is 1 minus the others (exact too).
The cells are fixed before any sampling, so Pearson's chi-square test is valid; its p-value comes from the
regularized upper incomplete gamma function. The total-variation distance on those cells is compared with its
noise floor: the same distance for n draws from the exact distribution itself (NOISE_DRAWS, fixed seed).
"""
from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Callable, Iterator

import torch
from transformers import DynamicCache

from .engine import Engine, Settings
from .lm import CachedLM
from .limits import ENGINE
from .sampling import Warp, probs
from .verify import verify_sampling

MAX_TOKENS = 3  # k: the first tokens compared
MAX_SAMPLES = 4000  # n per side
DEFAULT_SAMPLES = 1000
MIN_EXPECTED = 5  # a sequence is a cell of its own when it expects at least this many of n samples
PASS_P = 1e-3  # below this p-value the samples disagree with the target's distribution
NOISE_DRAWS = 200  # samples of n exact draws behind the noise floor
MEMO_BYTES = 256 * 2**20  # logits kept per check (about 1,300 texts for SmolLM2's 49k vocabulary)
CHUNK_NODES = 96  # texts scored per real forward


class TooManyTexts(ValueError):
    """The runs reached more distinct texts than the memo may hold."""


# ---------------------------------------------------------------- the memoized target


class TokenLog(DynamicCache):
    """Not a KV cache: layer 0 'keys' hold the token ids fed so far (CachedLM crops and compacts them like KV)."""


class _Hidden:
    """out.hidden_states as CachedLM reads it: [layer] -> [1, rows, hidden]."""

    def __init__(self, rows: dict[int, torch.Tensor]):
        self.rows = rows

    def __getitem__(self, layer: int) -> torch.Tensor:
        return self.rows[layer][None]


class MemoLM(torch.nn.Module):
    """A causal LM answered from a table keyed by the text before each position; the real model runs (through
    a CachedLM that keeps the prompt's cache) only for texts not seen yet. Every text starts with `prompt`.
    Speaks the transformers forward that CachedLM calls with fast_path=False; `layers` are the hidden states
    it can hand out (a drafter's reads_target)."""

    def __init__(self, model: torch.nn.Module, prompt: list[int], layers: tuple[int, ...] = (),
                 memo_bytes: int = MEMO_BYTES, horizon: int | None = None):
        """horizon: texts of more than `horizon` tokens after the prompt are answered with uniform logits and
        zero states without a forward (positions after the first k tokens, which decide nothing about them
        under a rule that walks the tree from the root; None: always the real model)."""
        super().__init__()
        self.horizon = horizon
        self.config = model.config
        self.real = CachedLM(model)
        self.prompt = tuple(prompt)
        self.layers = tuple(layers)
        self._anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)  # CachedLM reads device and dtype
        self.max_texts = max(16, memo_bytes // (4 * int(model.config.vocab_size)))
        self.logits: dict[tuple, torch.Tensor] = {}
        self.hidden: dict[tuple, dict[int, torch.Tensor]] = {}
        self.real_forwards = 0
        self.real_seconds = 0.0

    @torch.inference_mode()
    def _prefill(self) -> None:
        """The prompt's own forward (its cache stays in self.real), on first use: `layers` may be set until then."""
        if self.prompt in self.logits:
            return
        t0 = time.perf_counter()
        root, _ = self.real.forward(list(self.prompt), [], [], self.layers)
        self.real_forwards += 1
        self.real_seconds += time.perf_counter() - t0
        self.logits[self.prompt] = root.float().cpu()
        for i in range(len(self.prompt)):
            self.hidden[self.prompt[: i + 1]] = {L: h[i].cpu() for L, h in self.real.hidden.items()}

    @torch.inference_mode()
    def ensure(self, texts: list[tuple]) -> None:
        """Score every text not in the table (each is the prompt plus a few tokens), CHUNK_NODES at a time."""
        self._prefill()
        todo = sorted({t for t in texts if t not in self.logits})
        if len(self.logits) + len(todo) > self.max_texts:
            raise TooManyTexts(f"the runs reached more than {self.max_texts} distinct texts; lower the temperature, "
                               "top-p, k or the number of samples")
        n0 = len(self.prompt)
        for start in range(0, len(todo), CHUNK_NODES):
            chunk = todo[start:start + CHUNK_NODES]
            node_of: dict[tuple, int] = {}  # tail -> node index in this forward (a trie of the tails)
            tokens, parents = [], []
            for text in chunk:
                if text[:n0] != self.prompt:
                    raise ValueError("a text that does not start with the prompt")
                tail = text[n0:]
                for d in range(1, len(tail) + 1):
                    if tail[:d] not in node_of:
                        node_of[tail[:d]] = len(tokens)
                        tokens.append(tail[d - 1])
                        parents.append(node_of[tail[: d - 1]] if d > 1 else -1)
            t0 = time.perf_counter()
            root, rows = self.real.forward(list(self.prompt), tokens, parents, self.layers)
            fed = 0 if root is None else 1
            hidden = dict(self.real.hidden)
            self.real.accept([])
            self.real_forwards += 1
            self.real_seconds += time.perf_counter() - t0
            for tail, node in node_of.items():
                text = self.prompt + tail
                self.logits.setdefault(text, rows[node].float().cpu())
                self.hidden.setdefault(text, {L: h[fed + node].cpu() for L, h in hidden.items()})

    def forward(self, input_ids, position_ids=None, attention_mask=None, logits_to_keep=0, output_hidden_states=False,
                past_key_values=None, cache=None, **_):
        log = cache if cache is not None else past_key_values
        ids = input_ids[0].tolist()
        layer = log.layers[0]
        before = [] if getattr(layer, "keys", None) is None else layer.keys[0, 0, :, 0].long().tolist()
        row = torch.tensor(ids, dtype=torch.float32).view(1, 1, -1, 1)
        log.update(row, torch.zeros_like(row), 0)
        every = before + ids
        texts = []
        for i in range(len(ids)):
            col = len(before) + i
            if attention_mask is None:
                texts.append(tuple(every[: col + 1]))
            else:
                allowed = (attention_mask[0, 0, i] == 0).nonzero().flatten().tolist()
                texts.append(tuple(every[c] for c in allowed))
        keep = logits_to_keep or len(ids)
        self.ensure([t for t in texts if len(self.prompt) < len(t) and not self._beyond(t)])
        logits = torch.stack([self._logits(t) for t in texts[-keep:]])[None]
        hidden = None
        if output_hidden_states:
            hidden = _Hidden({L: torch.stack([self._hidden(t, L) for t in texts]) for L in self.layers})
        return SimpleNamespace(logits=logits, hidden_states=hidden)

    def _beyond(self, text: tuple) -> bool:
        return self.horizon is not None and len(text) - len(self.prompt) > self.horizon

    def _logits(self, text: tuple) -> torch.Tensor:
        return torch.zeros(self.config.vocab_size) if self._beyond(text) else self.logits[text]

    def _hidden(self, text: tuple, layer: int) -> torch.Tensor:
        if self._beyond(text):
            return torch.zeros_like(self.hidden[self.prompt][layer])
        return self.hidden[text][layer]

    def dist(self, text: tuple, warp: Warp) -> torch.Tensor:
        return probs(self.logits[text][None], warp)[0]


# ---------------------------------------------------------------- the exact distribution on fixed cells


def exact_cells(memo: MemoLM, k: int, warp: Warp, n: int) -> dict[tuple, float]:
    """{k tokens: exact probability} for every sequence expecting at least MIN_EXPECTED of n samples (every
    prefix of such a sequence is at least as likely, so the search expands only those)."""
    floor = MIN_EXPECTED / n
    memo._prefill()
    level: dict[tuple, float] = {(): 1.0}
    for _ in range(k):
        memo.ensure([memo.prompt + tail for tail in level if tail])
        nxt: dict[tuple, float] = {}
        for tail, p_tail in level.items():
            p = memo.dist(memo.prompt + tail, warp) * p_tail
            for tok in (p >= floor).nonzero().flatten().tolist():
                nxt[tail + (tok,)] = float(p[tok])
        level = nxt
    return level


def chi_square(counts: Counter, cells: dict[tuple, float], n: int) -> tuple[float, int, float]:
    """(statistic, degrees of freedom, p-value) of n sampled sequences against the cells plus the rest cell. A rest
    cell expecting fewer than MIN_EXPECTED takes in the least likely cells until it does (or is left out when it
    can hold nothing at all), so that no cell of the test expects a handful of samples or less."""
    order = sorted(cells, key=lambda s: cells[s])
    rest_p = max(0.0, 1.0 - sum(cells.values()))
    rest_obs = n - sum(counts[s] for s in cells)
    while 0 < rest_p * n < MIN_EXPECTED and len(order) > 1:
        merged = order.pop(0)
        rest_p, rest_obs = rest_p + cells[merged], rest_obs + counts[merged]
    obs = [counts[s] for s in order] + [rest_obs]
    exp = [cells[s] * n for s in order] + [rest_p * n]
    if exp[-1] < 1e-9 and rest_obs == 0:  # nothing outside the cells (a small support): no rest cell
        obs, exp = obs[:-1], exp[:-1]
    stat = sum((o - e) ** 2 / e for o, e in zip(obs, exp) if e > 0)
    if any(o > 0 and e <= 0 for o, e in zip(obs, exp)):
        return math.inf, max(1, len(exp) - 1), 0.0
    df = len(exp) - 1
    if df < 1:
        return 0.0, 0, 1.0
    pvalue = float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                           torch.tensor(stat / 2, dtype=torch.float64)))
    return stat, df, pvalue


def tv_distance(counts: Counter, cells: dict[tuple, float], n: int) -> float:
    """Total variation between the sample and the exact distribution, on the cells and the rest."""
    rest_p = max(0.0, 1.0 - sum(cells.values()))
    inside = sum(abs(counts[s] / n - p) for s, p in cells.items())
    rest = (n - sum(counts[s] for s in cells)) / n
    return 0.5 * (inside + abs(rest - rest_p))


def noise_floor(cells: dict[tuple, float], n: int, seed: int = 0) -> tuple[float, float]:
    """(median, 95th percentile) of the total variation of n draws from the exact distribution itself."""
    p = torch.tensor(list(cells.values()) + [max(0.0, 1.0 - sum(cells.values()))], dtype=torch.float64)
    p = p / p.sum()
    gen = torch.Generator().manual_seed(seed)
    draws = torch.multinomial(p.expand(NOISE_DRAWS, -1), n, replacement=True, generator=gen)
    freq = torch.nn.functional.one_hot(draws, len(p)).sum(1).double() / n
    tv = 0.5 * (freq - p).abs().sum(1)
    return float(tv.median()), float(tv.quantile(0.95))


# ---------------------------------------------------------------- the check


@dataclass
class Progress:
    done: int
    total: int
    phase: str  # "exact" (the target's distribution), then "both" (done of total runs per side)


@dataclass
class Side:
    """One sampler's n runs against the exact distribution."""

    name: str
    counts: Counter
    n: int
    chi2: float
    df: int
    pvalue: float
    tv: float
    drafted: int = 0  # draft tokens over all runs (0 for plain decoding)
    accepted: int = 0

    @property
    def passed(self) -> bool:
        return self.pvalue >= PASS_P


@dataclass
class CheckResult:
    k: int
    n: int
    warp: Warp
    rule: str
    lossless_rule: bool  # what the rule registry says (None-safe: False for a broken or unknown rule)
    cells: dict[tuple, float]
    plain: Side
    speculative: Side
    noise: tuple[float, float]  # TV noise floor (median, 95th percentile)
    real_forwards: int
    seconds: float
    note: str = ""  # why the run ended early, if it did
    labels: dict[tuple, str] = field(default_factory=dict)  # sequence -> readable text (filled by the caller)

    @property
    def rest(self) -> float:
        return max(0.0, 1.0 - sum(self.cells.values()))

    @property
    def passed(self) -> bool:
        return self.speculative.passed

    def sentence(self) -> str:
        s, p = self.speculative, self.plain
        if self.warp.greedy:
            return ("At temperature 0 both decoders are deterministic: the check compares one sequence. "
                    + ("They agree." if s.counts == p.counts else "They differ (see the bars)."))
        if not s.drafted:
            return ("No draft was proposed in these runs, so speculative decoding ran exactly like plain decoding "
                    "here: pick a prompt or drafter that drafts to test the verifier.")
        if s.passed:
            return (f"Lossless as far as {s.n:,} samples can tell: the speculative output matches the target's exact "
                    f"distribution (p = {s.pvalue:.3g}, TV {s.tv:.3f} within the noise floor of "
                    f"{self.noise[1]:.3f}), although {s.accepted:,} of its tokens were the drafter's guesses "
                    f"({s.drafted:,} drafted).")
        return (f"Not lossless: the speculative samples are not distributed like the target's (p = {s.pvalue:.2g}, "
                f"TV {s.tv:.3f} against a noise floor of {self.noise[1]:.3f}), while plain decoding matches it "
                f"(p = {p.pvalue:.2g}).")


def _side(name: str, counts: Counter, n: int, cells: dict, drafted: int = 0, accepted: int = 0) -> Side:
    stat, df, pvalue = chi_square(counts, cells, n)
    return Side(name, counts, n, stat, df, pvalue, tv_distance(counts, cells, n), drafted, accepted)


def run_check(target: torch.nn.Module, prompt: list[int], settings: Settings, k: int, n: int,
              make_drafter: Callable[[torch.nn.Module], object | None], rule=None, rule_lossless: bool = True,
              time_limit_s: float | None = None, cancel: Callable[[], bool] | None = None,
              progress_every: int = 50) -> Iterator[Progress | CheckResult]:
    """Progress while it samples, then a CheckResult. `make_drafter(memo_target)` builds the speculative side's
    drafter around the memoized target; `rule` is a name, a Rule, or None (the lossless rule for the
    temperature). Runs i = 0..n-1 use seed settings.seed + i on both sides."""
    if not 1 <= k <= MAX_TOKENS:
        raise ValueError(f"k must be in [1, {MAX_TOKENS}], got {k}")
    if not 1 <= n <= MAX_SAMPLES:
        raise ValueError(f"the number of samples must be in [1, {MAX_SAMPLES}], got {n}")
    if settings.seed + n > ENGINE.max_seed:
        raise ValueError("seed too large for this many samples")
    t0 = time.perf_counter()
    deadline = None if time_limit_s is None else t0 + time_limit_s
    settings = replace(settings, max_new_tokens=k, stop_at_eos=False)
    warp = settings.warp
    # a rule that walks the tree from the root decides the first k tokens from the positions before them;
    # typical acceptance picks the longest accepted path, which may look deeper
    walks = not (isinstance(rule, str) and rule.startswith("typical"))
    memo = MemoLM(target, prompt, horizon=k - 1 if walks else None)
    drafter = make_drafter(memo)
    memo.layers = tuple(getattr(drafter, "reads_target", ()) or ())  # before the prompt's forward
    yield Progress(0, n, "exact")
    cells = exact_cells(memo, k, warp, n)
    ar = Engine(memo, lambda ids: "", None, fast_path=False, max_draft=0)
    spec = Engine(memo, lambda ids: "", drafter, rule=rule, fast_path=False)
    # the two sides alternate run by run, so a time limit or a cancel leaves them with the same number of samples
    counts = {"plain": Counter(), "speculative": Counter()}
    drafted = accepted = done = 0
    note = ""
    for i in range(n):
        if cancel is not None and cancel():
            note = "cancelled"
        elif deadline is not None and time.perf_counter() > deadline:
            note = f"time limit of {time_limit_s:g} s"
        if note:
            break
        run_settings = replace(settings, seed=settings.seed + i)
        counts["plain"][tuple(ar.run(prompt, run_settings).token_ids)] += 1
        result = spec.run(prompt, run_settings)
        counts["speculative"][tuple(result.token_ids)] += 1
        drafted += result.metrics.drafted
        accepted += result.metrics.accepted
        done += 1
        if done % progress_every == 0:
            yield Progress(done, n, "both")
    if not done:
        raise ValueError(f"the check drew no sample ({note}): allow it more time")
    m = done
    if m < n:  # fewer samples than planned: cells that expect MIN_EXPECTED of m (a subset, no new forwards)
        cells = exact_cells(memo, k, warp, m)
    plain = _side("plain", counts["plain"], m, cells)
    speculative = _side("speculative", counts["speculative"], m, cells, drafted, accepted)
    rule_name = rule if isinstance(rule, str) else getattr(rule, "__name__", "auto") if rule else "auto"
    yield CheckResult(k, m, warp, rule_name, rule_lossless, cells, plain, speculative, noise_floor(cells, m),
                      memo.real_forwards, time.perf_counter() - t0, note)


# ---------------------------------------------------------------- a broken verifier, for the teacher


def broken_sampling(tree, p_rows, gen):
    """Speculative sampling with the classic bug: after a rejection it draws from p instead of the residual
    norm(max(0, p - q)), so the drafter's guesses are counted twice. Not lossless."""
    return verify_sampling(tree, p_rows, gen, residual=lambda p, q: p)


broken_sampling.__name__ = "broken (teacher: resample from p)"


# ---------------------------------------------------------------- from a run configuration


def check_config(config, prompt: str, k: int = 2, n: int = DEFAULT_SAMPLES, broken: bool = False,
                 time_limit_s: float | None = None, cancel: Callable[[], bool] | None = None
                 ) -> Iterator[Progress | CheckResult]:
    """run_check for a RunConfig (the app's and the CLI's request): its target, drafter, rule and settings.
    The finished CheckResult carries readable labels of its sequences."""
    from . import api
    from .drafters import registry as drafter_registry
    from .drafters.model import ModelDrafter
    from .drafters.strategies import STRATEGIES
    from .rules import VERIFY_RULES, resolve

    config = config.checked()
    if config.drafter == "none":
        raise ValueError("the check compares a drafter's speculative decoding with plain decoding: pick a drafter")
    if config.parallel:
        raise ValueError("the check runs one sample at a time: switch parallel (PEARL) off")
    model, tokenizer, _ = api.load_model(config.target, config.dtype)
    entry = drafter_registry.drafter_entry(config.drafter)

    def make_drafter(memo_target):
        if entry.kind == "model":  # the drafter model is memoized the same way (its own table)
            draft_model, _, _ = api.load_model(config.drafter, config.dtype)
            shape = STRATEGIES.get(config.shape)
            return ModelDrafter(MemoLM(draft_model, ids, horizon=memo_target.horizon), shape.build(config.draft_len),
                                config.drafter, greedy_only=shape.greedy_only, fast_path=False)
        target_model = model if entry.kind == "trained" else memo_target  # trained heads read the real layers
        return drafter_registry.make_drafter(drafter_registry.DraftRequest(
            config.drafter, target_model, config.target, config.draft_len, config.shape, False))

    preset = api.load_model(config.target, config.dtype)[2]
    chat = preset.chat if preset else bool(getattr(tokenizer, "chat_template", None))
    ids = api.encode_prompt(tokenizer, prompt, chat and not config.raw)
    name = resolve(None if config.rule == "auto" else config.rule, config.settings.warp.greedy)
    rule = broken_sampling if broken else name
    lossless = False if broken else VERIFY_RULES.get(name).lossless
    for item in run_check(model, ids, config.settings, k, n, make_drafter, rule, lossless, time_limit_s, cancel):
        if isinstance(item, CheckResult):
            seen = set(item.cells) | set(item.plain.counts) | set(item.speculative.counts)
            item.labels = {s: tokenizer.decode(list(s)) for s in seen}
        yield item
