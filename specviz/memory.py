"""What the C heap holds, and giving freed memory back (glibc; elsewhere every call is a no-op).

A server's RSS can grow two ways: objects kept alive (in use on the heap), or memory freed but kept by
the allocator (free on the heap, still resident). glibc's malloc_info tells the two apart (every arena): `in_use` is
what live objects hold, `free_held` what was freed and not returned. torch's CPU tensors come from the
same heap, so both views count them.

What grew in specviz's load test was neither Python objects (tracemalloc: +21 MB) nor engines (none
alive after the runs) but oneDNN's caches: one entry per input shape, 1024 by default, ~1-2 MB each;
specviz/__init__.py caps them (LRU_CACHE_CAPACITY=16, ONEDNN_PRIMITIVE_CACHE_CAPACITY=64).

glibc gives each thread that allocates its own arena (up to 8 per core), and memory freed in one
arena is reused only by the threads allocating there; a server whose request threads each touch
large buffers keeps a high-water mark per arena. `limit_arenas` caps them (the Space runs `python
app.py`, not a shell, so the limit is set in the process itself, before threads start) and `trim`
returns free pages to the system.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache

M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # mallopt parameter numbers (malloc.h)
SERVER_ARENAS = 2
SERVER_MMAP_BYTES = 1 << 20  # blocks this large or larger come from mmap and go back whole when freed
TRIM_ABOVE_BYTES = 64 << 20  # trim when this much freed memory is held


@lru_cache(maxsize=1)
def _libc():
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        lib.malloc_trim.argtypes = [ctypes.c_size_t]
        lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.fopen.restype = ctypes.c_void_p
        lib.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        lib.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
        lib.fclose.argtypes = [ctypes.c_void_p]
        return lib
    except (OSError, AttributeError):  # not glibc
        return None


def heap() -> dict | None:
    """{'in_use', 'free_held', 'mmapped'} in bytes over every malloc arena (glibc's malloc_info; mallinfo2
    would count the main arena only), None off glibc."""
    import tempfile
    import xml.etree.ElementTree as ET

    lib = _libc()
    if lib is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".xml") as f:
        fp = lib.fopen(f.name.encode(), b"w")
        if not fp:
            return None
        lib.malloc_info(0, fp)
        lib.fclose(fp)
        root = ET.parse(f.name).getroot()
    totals = {t.get("type"): int(t.get("size", 0)) for t in root.findall("total")}
    system = {t.get("type"): int(t.get("size", 0)) for t in root.findall("system")}
    free = totals.get("fast", 0) + totals.get("rest", 0)
    return dict(in_use=system.get("current", 0) - free, free_held=free, mmapped=totals.get("mmap", 0))


def trim() -> bool:
    """Return free heap pages to the system (malloc_trim(0)); True when some were."""
    lib = _libc()
    return bool(lib.malloc_trim(0)) if lib is not None else False


def limit_arenas(n: int) -> bool:
    """At most `n` malloc arenas from now on (set it before threads start); True where it took effect."""
    lib = _libc()
    return bool(lib.mallopt(M_ARENA_MAX, n)) if lib is not None else False


def configure_for_server() -> dict:
    """A long-running server's allocator: at most SERVER_ARENAS arenas, and a fixed mmap threshold (glibc
    otherwise raises it after every large free, up to 32 MB, so freed logits and activation buffers
    end up in arenas that keep them). Call it before threads start. {setting: whether it took effect}."""
    lib = _libc()
    if lib is None:
        return {}
    return dict(arenas=bool(lib.mallopt(M_ARENA_MAX, SERVER_ARENAS)),
                mmap_threshold=bool(lib.mallopt(M_MMAP_THRESHOLD, SERVER_MMAP_BYTES)))


def trim_if_held(above: int = TRIM_ABOVE_BYTES) -> bool:
    """trim() when more than `above` bytes are freed but held (a server's housekeeping calls this)."""
    h = heap()
    return h is not None and h["free_held"] > above and trim()


def python_objects(top: int = 3) -> str:
    """With tracemalloc on (SPECVIZ_TRACEMALLOC=1 at start-up): the Python objects' total and the `top`
    allocation sites holding most, for finding what grows ('' when it is off)."""
    import tracemalloc

    if not tracemalloc.is_tracing():
        return ""
    snap = tracemalloc.take_snapshot()
    stats = snap.statistics("lineno")
    total = sum(s.size for s in stats)
    sites = "; ".join(f"{s.traceback[0].filename.rsplit('/', 2)[-1]}:{s.traceback[0].lineno} "
                      f"{s.size / 2**20:.1f} MB" for s in stats[:top])
    return f"python objects {total / 2**20:.0f} MB (most: {sites})"


def describe() -> str:
    """'heap in use X MB, freed but held Y MB' for a status line ('' off glibc), and the Python objects
    when tracemalloc runs."""
    h = heap()
    parts = [] if h is None else [f"heap in use {(h['in_use'] + h['mmapped']) / 2**20:.0f} MB, "
                                  f"freed but held {h['free_held'] / 2**20:.0f} MB"]
    python = python_objects()
    return ", ".join(parts + ([python] if python else []))
