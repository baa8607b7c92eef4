"""A corpus of the target's own greedy outputs, for drafters that learn from it (the n-gram drafter).

The training prompts cover the categories of assets/prompts.jsonl (code, summarization, RAG, QA,
math, translation, writing) but are built from other material: short functions and docstrings of
Python's standard library, and hand-written topic lists. None of them is an evaluation prompt
(checked in build()). The corpus file stores each prompt with the target's output token ids, so it
can be re-checked against the target at any time (tests/test_ngram.py regenerates a few).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import random
import textwrap
from pathlib import Path

from .paths import ASSETS

VERSION = 1

_CODE_SOURCES = [
    "textwrap.dedent", "textwrap.indent", "textwrap.shorten", "shlex.quote", "shlex.join", "glob.has_magic",
    "fnmatch.filter", "statistics.median", "statistics.mode", "statistics.median_low", "bisect.insort_left",
    "heapq.heappushpop", "heapq.nlargest", "posixpath.splitext", "posixpath.basename", "posixpath.commonprefix",
    "colorsys.rgb_to_hsv", "colorsys.hsv_to_rgb", "colorsys.rgb_to_hls", "base64.b64encode", "base64.urlsafe_b64encode",
    "calendar.isleap", "calendar.leapdays", "html.escape", "string.capwords",
    "operator.length_hint", "json.dumps", "random.Random.choice", "random.Random.shuffle", "copy.copy",
]
_CODE_TASKS = [
    "Add type hints and a docstring to this Python function, and return the whole function:",
    "Explain what this Python function does, line by line:",
    "Rename the variables in this code to clearer names and show the result:",
    "Write two pytest unit tests for this function:",
    "Rewrite this function to be shorter without changing what it does:",
]
_PASSAGE_MODULES = [
    "json", "csv", "heapq", "bisect", "textwrap", "shlex", "fnmatch", "glob", "statistics", "fractions",
    "decimal", "difflib", "gzip", "zipfile", "tarfile", "pickle", "shelve", "sqlite3", "logging", "argparse",
    "unittest", "doctest", "threading", "queue", "sched", "selectors", "socket", "ssl", "http.client",
    "urllib.parse", "email", "mailbox", "html.parser", "xml.dom", "calendar", "datetime", "zoneinfo", "random",
    "secrets", "hashlib", "hmac", "uuid", "ipaddress", "pathlib", "tempfile", "shutil", "filecmp", "contextlib",
    "functools", "itertools", "operator", "collections", "dataclasses", "enum", "typing", "abc", "copy",
    "pprint", "reprlib", "string", "re", "codecs", "unicodedata", "locale", "gettext", "pdb", "timeit", "trace",
]
_SUMMARY_TASKS = ["Summarize the following text in two sentences.", "Write a one-paragraph summary of this text.",
                  "Summarize this documentation for a beginner in three bullet points."]
_RAG_QUESTIONS = ["Answer the question using only the context.\n\nQuestion: What is this module used for?",
                  "Using the description below, list three things the module can do.",
                  "Based only on the text below, what should a programmer be careful about?"]
_TOPICS = [
    "a hash table", "photosynthesis", "the water cycle", "inflation", "a black hole", "vaccines", "recursion",
    "the French Revolution", "plate tectonics", "a neural network", "compound interest", "the immune system",
    "public-key cryptography", "the greenhouse effect", "a binary search", "democracy", "the Roman Empire",
    "electric cars", "the Internet", "DNA", "gravity", "a database index", "supply and demand", "volcanoes",
    "the moon's phases", "a compiler", "sleep", "bees", "climate change", "the printing press",
]
_QA_TEMPLATES = ["What is {t}? Explain it simply.", "Explain {t} to a ten-year-old.",
                 "What are the main advantages and disadvantages of {t}?", "How does {t} work?"]
_WRITING_TEMPLATES = ["Write a short story about {t}.", "Write a short poem about {t}.",
                      "Write a friendly email inviting a colleague to a talk about {t}."]
_SENTENCES = [
    "The train to the city leaves at eight o'clock every morning.", "My sister is learning to play the piano.",
    "We bought fresh bread and cheese at the market.", "Please close the window before you leave the room.",
    "The museum is closed on Mondays.", "He reads a book every night before going to sleep.",
    "The children played football in the garden all afternoon.", "Could you tell me where the station is?",
    "It rained all week, but the weekend was sunny.", "Our meeting has been moved to Thursday afternoon.",
    "The soup needs a little more salt.", "She has lived in this town for ten years.",
]
_LANGUAGES = ["French", "Spanish", "German"]


def _snippet(dotted: str) -> str | None:
    module, _, attr = dotted.partition(".")
    obj = __import__(module)
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    try:
        src = textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError):
        return None
    return src if src.count("\n") <= 30 else None


def _passage(module: str) -> str | None:
    import importlib

    try:
        doc = inspect.getdoc(importlib.import_module(module)) or ""
    except ImportError:
        return None
    words = " ".join(doc.split()).split(" ")
    return " ".join(words[:120]) if len(words) >= 40 else None


def training_prompts(seed: int = 0) -> list[dict]:
    """Prompts (with categories) for the corpus; deterministic for a given Python version."""
    rng = random.Random(seed)
    out = []
    for i, dotted in enumerate(_CODE_SOURCES):
        if src := _snippet(dotted):
            out.append({"category": "code", "prompt": f"{_CODE_TASKS[i % len(_CODE_TASKS)]}\n\n{src.rstrip()}"})
    for i, module in enumerate(_PASSAGE_MODULES):
        if text := _passage(module):
            if i % 2:
                out.append({"category": "summarization", "prompt": f"{_SUMMARY_TASKS[i % 3]}\n\n{text}"})
            else:
                out.append({"category": "rag", "prompt": f"{_RAG_QUESTIONS[i % 3]}\n\nContext: {text}"})
    for i, topic in enumerate(_TOPICS):
        out.append({"category": "qa", "prompt": _QA_TEMPLATES[i % len(_QA_TEMPLATES)].format(t=topic)})
        out.append({"category": "writing", "prompt": _WRITING_TEMPLATES[i % len(_WRITING_TEMPLATES)].format(t=topic)})
    for i in range(30):
        a, b, c = rng.randint(2, 40), rng.randint(2, 12), rng.randint(1, 90)
        out.append({"category": "math", "prompt": [
            f"A box holds {a} apples. How many apples are in {b} boxes? Explain step by step.",
            f"Solve for x: {b}x + {c} = {b * a + c}. Show your steps.",
            f"Tom has {a + c} marbles and gives away {c}. How many are left? Explain your reasoning.",
        ][i % 3]})
    for i, sentence in enumerate(_SENTENCES):
        out.append({"category": "translation", "prompt": f"Translate into {_LANGUAGES[i % 3]}: {sentence}"})
    return out


def digest(ids: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]


def path_for(target: str) -> Path:
    return ASSETS / f"corpus-{Path(target).name}.json"


def load(target: str) -> dict | None:
    """The stored corpus for `target` (a preset name or model directory), or None."""
    path = path_for(target)
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if data.get("version") != VERSION or not isinstance(data.get("outputs"), list):
        raise ValueError(f"{path}: not a specviz corpus (version {VERSION})")
    return data
