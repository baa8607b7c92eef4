"""The wide instruction set for drafter data (data v2): `instructions()` plus sources that scale.

Every source is text this machine has offline, installed from the package registries:
- long passages of the Python reference documentation (`pydoc_data.topics`, shipped with Python):
  summaries and context-grounded answers over 150-450-word passages (long-context prompts);
- docstrings of installed scientific packages (numpy, scipy, networkx, pandas, sympy, torch):
  explanations, usage examples, summaries, and "write a function whose docstring is ..." tasks;
- source of short pure-Python functions of installed packages (networkx, sympy, jinja2, click,
  pygments, ...): review, explain, document, test, translate;
- many more topics and templates for questions and writing, more arithmetic word problems,
  every practice sentence into every language.
Each source row carries `source` so the data card can say what each one adds.

Nothing here may share material with the evaluation prompts: besides `overlapping` (containment),
any training prompt sharing an 8-word span with an evaluation prompt is dropped
(`shares_material`), and tests/test_feature_drafter.py checks the whole list.
"""
from __future__ import annotations

import importlib
import inspect
import random
import re
import textwrap

from . import instructions as base

_DOC_PACKAGES = [
    "numpy", "numpy.linalg", "numpy.fft", "numpy.random", "scipy.stats", "scipy.optimize", "scipy.signal",
    "scipy.interpolate", "scipy.spatial", "scipy.special", "networkx", "pandas", "sympy", "torch.nn.functional",
    "torch", "itertools", "collections", "functools", "re", "json", "pathlib", "datetime", "decimal",
    "unicodedata", "logging", "argparse", "sqlite3", "threading", "queue", "socket", "hashlib", "hmac",
    "gzip", "tarfile", "zipfile", "enum", "typing", "contextlib", "selectors", "ssl", "email", "xml.etree.ElementTree",
]
_CODE_PACKAGES = [
    "networkx.algorithms.shortest_paths.generic", "networkx.algorithms.cycles", "networkx.algorithms.dag",
    "networkx.algorithms.components.connected", "networkx.algorithms.cluster", "networkx.algorithms.core",
    "networkx.algorithms.matching", "networkx.algorithms.simple_paths", "networkx.algorithms.traversal.depth_first_search",
    "networkx.algorithms.traversal.breadth_first_search", "networkx.utils.misc", "networkx.generators.classic",
    "networkx.algorithms.bipartite.basic", "networkx.algorithms.isolate", "networkx.algorithms.tree.recognition",
    "sympy.utilities.iterables", "sympy.ntheory.factor_", "sympy.ntheory.primetest", "sympy.core.compatibility",
    "jinja2.utils", "jinja2.filters", "click.utils", "click.formatting", "pygments.util", "markdown_it.common.utils",
    "tqdm.utils", "packaging.version", "packaging.utils", "pandas.io.formats.format", "numpy.lib._function_base_impl",
    "numpy.lib._shape_base_impl", "numpy.lib._arraysetops_impl", "numpy._core.numeric", "scipy.special._basic",
    "email.utils", "http.cookiejar", "string", "textwrap", "difflib", "heapq", "bisect", "statistics",
    "fractions", "calendar", "ipaddress", "shlex", "fnmatch", "glob", "posixpath", "urllib.parse",
]
_DOC_TASKS = [
    "Explain what this documentation describes, in plain words, for a beginner:\n\n{d}",
    "Summarize this documentation in two sentences:\n\n{d}",
    "Here is the documentation of `{n}`. Write a short example that uses it and explain the output.\n\n{d}",
    "Read the documentation below and list the three most important things to remember about `{n}`.\n\n{d}",
    "Context:\n{d}\n\nQuestion: What does `{n}` return, and when would you use it? Answer using the context.",
    "Rewrite this documentation as a short friendly tutorial paragraph:\n\n{d}",
]
_SPEC_TASKS = [
    "Write a Python function `{n}` that does the following: {s} Include a docstring.",
    "Implement `{n}` in Python from scratch (no libraries): {s}",
    "Describe how you would implement a function that does this, then write it in Python: {s}",
]
_LONG_TASKS = [
    "Summarize the following documentation in a short paragraph.\n\n{d}",
    "Read this text and write the five most important points as a bulleted list.\n\n{d}",
    "Explain the following text to a student who knows a little Python.\n\n{d}",
    "Context:\n{d}\n\nUsing only the context above, write three questions a student could answer after reading it, with the answers.",
    "Context:\n{d}\n\nQuestion: What is the main rule this text explains? Answer from the context and quote one sentence that supports it.",
    "Give this text a title, then a three-sentence summary, then one example.\n\n{d}",
]
_CODE_TASKS = base._CODE_TASKS + [
    "Write three unit tests (pytest) for this function:", "Simplify this function if you can and explain what changed:",
    "Explain this function line by line:", "Rewrite this function with type hints and a docstring:",
    "What inputs would make this function fail? Explain.", "Translate this Python function into Go:",
]
_TOPICS = [
    "volcanoes", "the printing press", "a compiler", "the moon landing", "bees", "a thunderstorm", "the internet",
    "a heat pump", "the Industrial Revolution", "an electric car", "DNA", "the periodic table", "a rainbow",
    "the Amazon river", "sleep", "a telescope", "the stock exchange", "a vaccine trial", "typography", "jazz",
    "the Pythagorean theorem", "gravity", "a database index", "caching", "the TCP handshake", "a web browser",
    "version control", "unit testing", "a password manager", "a spreadsheet", "sorting algorithms", "a GPU",
    "the Fibonacci sequence", "prime numbers", "probability", "statistics", "a budget", "a mortgage", "taxes",
    "climate change", "deforestation", "nuclear energy", "batteries", "the human eye", "the digestive system",
    "muscles", "the common cold", "exercise", "a balanced diet", "coffee", "chocolate", "cheese making",
    "a sourdough starter", "composting", "a vegetable garden", "houseplants", "dogs", "cats", "whales", "owls",
    "ants", "dinosaurs", "fossils", "the ice age", "ancient Egypt", "the Vikings", "the Maya", "the Cold War",
    "the printing of money", "a constitution", "elections", "the United Nations", "a job interview", "a resume",
    "public speaking", "time management", "learning a language", "a study plan", "an exam", "a science fair",
    "a birthday party", "a wedding", "a road trip", "camping", "a train journey", "an airport", "a hotel",
    "a new city", "a market", "a bakery", "a restaurant kitchen", "a football match", "a marathon", "swimming",
    "yoga", "a chess tournament", "a rock band", "a painting", "a sculpture", "a film festival", "a podcast",
    "a video game", "a robot", "artificial intelligence", "a self-driving car", "a drone", "a smartphone",
    "a smartwatch", "a 3D printer", "a satellite", "Mars", "Jupiter", "a comet", "the Milky Way", "the Big Bang",
    "a rainforest frog", "a desert", "an island", "a river delta", "a coral atoll", "a lighthouse keeper",
    "a firefighter", "a nurse", "a teacher", "a farmer", "a programmer", "an astronaut", "a detective novel",
    "a fairy tale", "a haunted house", "a secret door", "a message in a bottle", "a snowstorm", "spring",
    "summer holidays", "a winter morning", "a forgotten letter", "a old photograph", "a new neighbour",
]
_QA_TEMPLATES = base._QA_TEMPLATES + [
    "What are common misconceptions about {t}?", "Compare {t} with something similar and explain the difference.",
    "Give a step-by-step explanation of how {t} works.", "What questions do people often ask about {t}? Answer two of them.",
    "Explain {t} in three sentences.", "What would happen without {t}?", "Give a short definition of {t} and an example.",
]
_WRITING_TEMPLATES = base._WRITING_TEMPLATES + [
    "Write a short blog post about {t}.", "Write a motivational message inspired by {t}.",
    "Write a news headline and a short article about {t}.", "Write a children's story about {t} in under 150 words.",
    "Write a persuasive paragraph about {t}.", "Write a short speech about {t}.",
    "Write a letter to a friend describing {t}.", "Write a short scene for a play about {t}.",
]
_WORDS = re.compile(r"\w+")
_SET = re.compile(r"\{('[^']*'(?:, '[^']*')+)\}")  # a printed set of strings: its order varies per process


def _shingles(text: str, n: int = 8) -> set[tuple[str, ...]]:
    w = _WORDS.findall(text.lower())
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def shares_material(training: list[str], evaluation: list[str] | None = None, n: int = 8) -> list[str]:
    """Training texts that share any n-word span with an evaluation prompt (or contain/are contained in one)."""
    from ..prompts import evaluation_prompts, overlapping

    evaluation = evaluation_prompts() if evaluation is None else evaluation
    spans = set().union(*(_shingles(e, n) for e in evaluation)) if evaluation else set()
    contained = set(overlapping(training, evaluation))
    return [t for t in training if t in contained or not _shingles(t, n).isdisjoint(spans)]


def _module(name: str):
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - an optional package that is missing or fails to import is skipped
        return None


def _docstrings(name: str, lo: int = 40, hi: int = 220) -> list[tuple[str, str]]:
    """(qualified name, docstring cut to `hi` words) for public callables documented in `lo`+ words."""
    mod = _module(name)
    if mod is None:
        return []
    out = []
    for attr, obj in sorted(vars(mod).items()):
        if attr.startswith("_") or not callable(obj):
            continue
        doc = inspect.getdoc(obj) or ""
        # sections that vary with what else is imported (scipy decorates numpy docs lazily) are cut
        for cut in ("\nExamples\n", "\nSee Also\n", "\nReferences\n", "**Array API Standard Support**"):
            doc = doc.split(cut)[0]
        doc = _SET.sub(lambda m: "{" + ", ".join(sorted(m.group(1).split(", "))) + "}", doc)  # str hash order
        words = doc.split()
        if len(words) >= lo:
            out.append((f"{name}.{attr}", textwrap.shorten(" ".join(words), 8 * hi, placeholder=" ...")))
    return out


def _summary_line(doc: str) -> str | None:
    first = doc.split(". ")[0].strip().rstrip(".")
    return first + "." if 4 <= len(first.split()) <= 30 else None


def _sources(name: str) -> list[tuple[str, str]]:
    mod = _module(name)
    if mod is None:
        return []
    out = []
    for attr, obj in sorted(vars(mod).items()):
        if attr.startswith("_") or not inspect.isfunction(obj) or getattr(obj, "__module__", None) != mod.__name__:
            continue
        try:
            src = textwrap.dedent(inspect.getsource(obj))
        except (OSError, TypeError):
            continue
        if 5 <= src.count("\n") <= 30 and len(src) < 1600:
            out.append((attr, src.rstrip()))
    return out


def _passages(lo: int = 150, hi: int = 450) -> list[str]:
    """The Python reference's topic texts, cut at paragraph breaks into lo..hi-word passages."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return []
    out = []
    for key in sorted(topics):
        cur: list[str] = []
        for para in topics[key].split("\n\n"):
            para = " ".join(para.split())
            if not para:
                continue
            cur.append(para)
            if sum(len(p.split()) for p in cur) >= lo:
                text = "\n\n".join(cur)
                if len(text.split()) <= hi:
                    out.append(text)
                cur = []
    return out


def wide_instructions(seed: int = 0) -> list[dict]:
    """`instructions(seed)` first (same order), then the wide sources, seeded-shuffled, deduplicated,
    with anything that shares material with an evaluation prompt dropped. Rows: category, prompt, source."""
    rng = random.Random(seed + 1)
    rows = [dict(r, source=r.get("source", "v1")) for r in base.instructions(seed)]
    extra: list[dict] = []
    docs = [d for name in _DOC_PACKAGES for d in _docstrings(name)]
    rng.shuffle(docs)
    for k, (name, doc) in enumerate(docs[:1400]):
        task = _DOC_TASKS[k % len(_DOC_TASKS)]
        cat = "rag" if task.startswith("Context") else "summarization" if "Summarize" in task else "qa"
        extra.append({"category": cat, "prompt": task.format(d=doc, n=name.split(".")[-1]), "source": "package-docs"})
    for k, (name, doc) in enumerate(docs[1400:2400]):
        line = _summary_line(doc)
        if line:
            extra.append({"category": "code", "source": "package-specs",
                          "prompt": _SPEC_TASKS[k % len(_SPEC_TASKS)].format(n=name.split(".")[-1], s=line)})
    srcs = [s for name in _CODE_PACKAGES for s in _sources(name)[:12]]
    for k, (_, src) in enumerate(srcs):
        extra.append({"category": "code", "prompt": f"{_CODE_TASKS[k % len(_CODE_TASKS)]}\n\n{src}",
                      "source": "package-code"})
    for k, text in enumerate(_passages()):
        task = _LONG_TASKS[k % len(_LONG_TASKS)]
        extra.append({"category": "rag" if task.startswith("Context") else "summarization",
                      "prompt": task.format(d=text), "source": "python-reference"})
    topics = base._TOPICS + _TOPICS
    for i, topic in enumerate(topics):
        for j in range(3):
            extra.append({"category": "qa", "source": "topics",
                          "prompt": _QA_TEMPLATES[(5 * i + j) % len(_QA_TEMPLATES)].format(t=topic)})
            extra.append({"category": "writing", "source": "topics",
                          "prompt": _WRITING_TEMPLATES[(5 * i + j) % len(_WRITING_TEMPLATES)].format(t=topic)})
    mrng = random.Random(seed + 2)
    for i in range(600):
        extra.append({"category": "math", "prompt": base._math(mrng, i), "source": "math-templates"})
    langs = base._LANGUAGES + ["Dutch", "Swedish", "Polish", "Turkish"]
    for i, sentence in enumerate(base._SENTENCES):
        for j, lang in enumerate(langs):
            extra.append({"category": "translation", "source": "sentences",
                          "prompt": base._TRANSLATE_TEMPLATES[(i + j) % len(base._TRANSLATE_TEMPLATES)].format(lang=lang, s=sentence)})
    rng.shuffle(extra)
    out, seen = [], set()
    for row in rows + extra:
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            out.append(row)
    clash = set(shares_material([r["prompt"] for r in out]))
    return [r for r in out if r["prompt"] not in clash]
