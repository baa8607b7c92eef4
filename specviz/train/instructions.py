"""Training instructions for distillation data: the corpus prompts plus more built the same way.

Sources the project has offline: Python standard-library functions (their source) and module and
function docstrings, hand-written topic, task and sentence lists, and seeded arithmetic templates.
None of them is an evaluation prompt (assets/prompts.jsonl) or contains one; `instructions()`
drops any that would (the math templates can produce any small equation), and
tests/test_feature_drafter.py checks the whole list against the evaluation set.
"""
from __future__ import annotations

import importlib
import inspect
import random
import textwrap

from .. import corpus

# --- code: stdlib functions (their source) with editing tasks, and small tasks written from scratch
_CODE_MODULES = [
    "textwrap", "shlex", "fnmatch", "statistics", "bisect", "heapq", "posixpath", "colorsys", "base64", "calendar",
    "html", "string", "operator", "copy", "glob", "difflib", "functools", "keyword", "linecache", "ntpath",
    "quopri", "uu", "graphlib", "numbers", "fractions", "ipaddress", "urllib.parse", "email.utils", "json.encoder",
    "csv", "pprint", "reprlib", "tokenize", "dis", "inspect", "getopt", "gettext", "locale", "mimetypes",
    "netrc", "plistlib", "sched", "secrets", "shutil", "stat", "tempfile", "uuid", "zipfile", "random", "abc",
]
_CODE_TASKS = corpus._CODE_TASKS + [
    "Write a clear docstring for this Python function (Google style) and show the function with it:",
    "Point out one possible bug or edge case in this Python function and explain how to handle it:",
    "Write an example that calls this function and shows what it returns:",
    "What is the time complexity of this function? Explain briefly.",
    "Translate this Python function into JavaScript:",
    "Add comments to this Python code explaining each step:",
]
_SCRATCH_TASKS = [
    "checks whether a string is a palindrome", "counts the vowels in a string", "returns the n-th Fibonacci number",
    "flattens a list of lists", "merges two sorted lists into one sorted list", "checks whether a number is prime",
    "returns the factorial of n", "reverses the words in a sentence", "finds the largest number in a list",
    "converts Celsius to Fahrenheit", "counts how often each word appears in a text", "checks if two strings are anagrams",
    "computes the greatest common divisor of two numbers", "returns the second largest element of a list",
    "splits a list into chunks of size n", "capitalizes the first letter of every word", "reads a CSV file into a list of dictionaries",
    "validates an email address with a regular expression", "sums the digits of an integer",
    "transposes a matrix given as a list of lists", "converts a Roman numeral to an integer",
    "implements binary search on a sorted list", "computes the mean and standard deviation of a list",
    "returns all permutations of a string", "checks whether parentheses in a string are balanced",
    "implements a simple stack class with push, pop and peek", "implements a queue using two stacks",
    "counts the lines, words and characters in a file", "rotates a list by k positions",
    "finds the longest common prefix of a list of strings", "converts a decimal number to binary",
    "merges two dictionaries, summing values of shared keys", "generates the first n prime numbers",
    "computes the dot product of two vectors", "sorts a list of tuples by their second element",
    "returns the intersection of two lists", "checks whether a year is a leap year", "compresses a string like aaabb -> a3b2",
    "finds the missing number in a list of 1 to n", "implements bubble sort", "implements insertion sort",
    "implements merge sort", "implements a linked list with append and print", "parses a query string into a dictionary",
    "computes the area of a circle from its radius", "returns the most common element of a list",
    "groups words by their first letter", "checks whether a list is sorted", "converts a snake_case name to camelCase",
    "retries a function call up to three times on exceptions", "times how long a function takes with a decorator",
    "caches the results of a slow function", "walks a directory and lists every .txt file",
    "downloads a web page with urllib and counts its links", "formats a number of bytes as KB, MB or GB",
    "finds all pairs in a list that sum to a target", "computes the running maximum of a list",
    "returns the n largest values of a dictionary", "counts the set bits of an integer",
]
_SCRATCH_TEMPLATES = [
    "Write a Python function that {t}.", "Write a Python function that {t}. Include a docstring and an example.",
    "Show me how to write a function in Python that {t}, and explain the code.",
    "Write a short Python program that {t}, with comments.",
]
_PASSAGE_MODULES = corpus._PASSAGE_MODULES + [
    "array", "struct", "weakref", "types", "math", "cmath", "statistics", "numbers", "io", "os", "os.path",
    "stat", "fileinput", "linecache", "zlib", "bz2", "lzma", "configparser", "tomllib", "netrc", "plistlib",
    "subprocess", "signal", "mmap", "asyncio", "contextvars", "concurrent.futures", "multiprocessing",
    "base64", "binascii", "quopri", "mimetypes", "webbrowser", "wsgiref", "http.server", "http.cookies",
    "xmlrpc.client", "ftplib", "smtplib", "imaplib", "poplib", "turtle", "cmd", "shlex", "tkinter", "pydoc",
    "venv", "zipapp", "sys", "sysconfig", "builtins", "warnings", "dataclasses", "atexit", "traceback",
    "gc", "inspect", "site", "code", "codeop", "zipimport", "pkgutil", "modulefinder", "runpy", "importlib",
    "ast", "symtable", "token", "keyword", "tokenize", "tabnanny", "pyclbr", "py_compile", "compileall", "dis",
    "pickletools", "platform", "errno", "ctypes", "graphlib", "heapq", "colorsys", "wave", "getpass", "curses",
]
_SUMMARY_TASKS = corpus._SUMMARY_TASKS + [
    "Summarize this text in one sentence.", "What are the key points of this text? Answer in a short list.",
    "Rewrite this documentation in plain English for someone new to programming.",
    "Give this text a short title and a two-sentence summary.",
]
_RAG_QUESTIONS = corpus._RAG_QUESTIONS + [
    "Answer using only the context below.\n\nQuestion: Name one function or class the text mentions and say what it does.",
    "Read the text and answer: is this module useful for working with files? Explain briefly.",
    "From the text below only, write two questions a student could answer after reading it, with answers.",
    "Using only the context, explain the main idea in your own words.",
]
_TOPICS = corpus._TOPICS + [
    "a linked list", "the stock market", "earthquakes", "the human heart", "solar panels", "machine learning",
    "the Great Wall of China", "coral reefs", "a cloud server", "antibiotics", "the Olympic Games", "tides",
    "a hurricane", "the speed of light", "an operating system", "bread baking", "rainforests", "a violin",
    "quantum computers", "the Renaissance", "a steam engine", "honey", "the ozone layer", "tea", "chess",
    "a lighthouse", "glaciers", "a library", "a bicycle", "the metric system", "penguins", "wind turbines",
    "the human brain", "recycling", "a museum", "electricity", "a submarine", "the Silk Road", "mushrooms",
    "a garden", "an old map", "friendship", "a rainy day", "the ocean", "a mountain village", "a lost cat",
    "a dragon", "a time machine", "a space station", "a detective", "a city at night", "autumn leaves",
]
_QA_TEMPLATES = corpus._QA_TEMPLATES + [
    "Give three interesting facts about {t}.", "Why is {t} important?", "Describe {t} in a few sentences.",
    "What should a beginner know about {t}?", "What is the history of {t}, briefly?",
]
_WRITING_TEMPLATES = corpus._WRITING_TEMPLATES + [
    "Write a haiku about {t}.", "Write the opening paragraph of a novel about {t}.",
    "Write a short dialogue between two friends about {t}.", "Write a product description for a toy about {t}.",
    "Write a limerick about {t}.", "Write a diary entry from someone who just discovered {t}.",
    "Write a tweet announcing a documentary about {t}.",
]
_SENTENCES = corpus._SENTENCES + [
    "I would like a cup of coffee with milk, please.", "The library opens at nine and closes at six.",
    "My brother works as a nurse in a large hospital.", "We are planning a trip to the mountains next summer.",
    "This book was more interesting than I expected.", "Can you help me carry these boxes upstairs?",
    "The cat is sleeping on the sofa again.", "Dinner will be ready in twenty minutes.",
    "I forgot my umbrella at the office yesterday.", "The concert starts at half past seven.",
    "Our neighbours have a big dog and two cats.", "She wants to study medicine at university.",
    "The shop on the corner sells fresh fruit.", "Turn left at the bank and walk straight on.",
    "We need to buy eggs, flour and sugar for the cake.", "He has been learning Japanese for two years.",
]
_LANGUAGES = corpus._LANGUAGES + ["Italian", "Portuguese"]
_TRANSLATE_TEMPLATES = ["Translate into {lang}: {s}", "How do you say this in {lang}? \"{s}\"",
                        "Translate this sentence to {lang} and explain one word choice: {s}"]
_ITEMS = ["apples", "books", "marbles", "stickers", "oranges", "cookies", "pens", "cards", "eggs", "toy cars"]
_NAMES = ["Anna", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hugo", "Ivy", "Jonas"]


def _math(rng: random.Random, i: int) -> str:
    a, b, c = rng.randint(2, 40), rng.randint(2, 12), rng.randint(1, 90)
    item, name = rng.choice(_ITEMS), rng.choice(_NAMES)
    return [
        f"A box holds {a} {item}. How many {item} are in {b} boxes? Explain step by step.",
        f"Solve for x: {b}x + {c} = {b * a + c}. Show your steps.",
        f"{name} has {a + c} {item} and gives away {c}. How many are left? Explain your reasoning.",
        f"What is {a} times {b} plus {c}? Show the calculation.",
        f"A train travels {a * 5} km in {b} hours. What is its average speed? Explain.",
        f"{name} buys {b} notebooks at ${a} each and pays with ${a * b + c}. How much change is left?",
        f"What is {b * 10}% of {a * 10}? Explain step by step.",
        f"A rectangle is {a} cm long and {b} cm wide. What are its area and perimeter?",
        f"If {b} workers finish a job in {a} days, how long would {b * 2} workers take? Explain.",
        f"Simplify the fraction {a * b}/{b * c}. Show your steps.",
        f"{name} reads {b} pages a day. How many days to finish a {a * b + c}-page book? Explain.",
        f"Is {a * b + c} a prime number? Explain how you check.",
    ][i % 12]


def _functions(module: str) -> list[str]:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return []
    out = []
    for name, obj in sorted(vars(mod).items()):
        if name.startswith("_") or not inspect.isfunction(obj) or getattr(obj, "__module__", None) != mod.__name__:
            continue
        try:
            src = textwrap.dedent(inspect.getsource(obj))
        except (OSError, TypeError):
            continue
        if 4 <= src.count("\n") <= 25:
            out.append(src.rstrip())
    return out


def _docs(module: str) -> list[str]:
    """The module's docstring and its public functions' docstrings, as passages of 40-150 words."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return []
    texts = [inspect.getdoc(mod) or ""]
    for name, obj in sorted(vars(mod).items()):
        if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj)):
            if getattr(obj, "__module__", None) == mod.__name__:
                texts.append(inspect.getdoc(obj) or "")
    out = []
    for doc in texts:
        words = " ".join(doc.split()).split(" ")
        if len(words) >= 40:
            out.append(" ".join(words[:150]))
    return out


def instructions(seed: int = 0) -> list[dict]:
    """Training instructions ({'category', 'prompt'}), deterministic for a given Python version:
    the corpus prompts first, then the extra ones in a seeded shuffle."""
    from ..prompts import overlapping

    rng = random.Random(seed)
    base = corpus.training_prompts(seed)
    extra: list[dict] = []
    k = 0
    for module in _CODE_MODULES:
        for src in _functions(module)[:4]:
            extra.append({"category": "code", "prompt": f"{_CODE_TASKS[k % len(_CODE_TASKS)]}\n\n{src}"})
            k += 1
    for i, task in enumerate(_SCRATCH_TASKS):
        for j in range(2):
            extra.append({"category": "code", "prompt": _SCRATCH_TEMPLATES[(i + j) % len(_SCRATCH_TEMPLATES)].format(t=task)})
    k = 0
    for module in _PASSAGE_MODULES:
        for text in _docs(module)[:3]:
            if k % 2:
                extra.append({"category": "summarization",
                              "prompt": f"{_SUMMARY_TASKS[k % len(_SUMMARY_TASKS)]}\n\n{text}"})
            else:
                extra.append({"category": "rag",
                              "prompt": f"{_RAG_QUESTIONS[k % len(_RAG_QUESTIONS)]}\n\nContext: {text}"})
            k += 1
    for i, topic in enumerate(_TOPICS):
        for j in range(2):
            extra.append({"category": "qa", "prompt": _QA_TEMPLATES[(3 * i + j) % len(_QA_TEMPLATES)].format(t=topic)})
            extra.append({"category": "writing",
                          "prompt": _WRITING_TEMPLATES[(3 * i + j) % len(_WRITING_TEMPLATES)].format(t=topic)})
    for i in range(120):
        extra.append({"category": "math", "prompt": _math(rng, i)})
    for i, sentence in enumerate(_SENTENCES):
        for j in range(2):
            lang = _LANGUAGES[(i + 2 * j) % len(_LANGUAGES)]
            extra.append({"category": "translation",
                          "prompt": _TRANSLATE_TEMPLATES[(i + j) % len(_TRANSLATE_TEMPLATES)].format(lang=lang, s=sentence)})
    rng.shuffle(extra)
    out, seen = [], set()
    for row in base + extra:
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            out.append(row)
    clash = set(overlapping([row["prompt"] for row in out]))
    return [row for row in out if row["prompt"] not in clash]
