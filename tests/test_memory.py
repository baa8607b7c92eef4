"""specviz/memory.py: the heap's in-use and freed-but-held bytes, trimming, and the tracemalloc report."""
import tracemalloc

import pytest

from specviz import memory


@pytest.mark.skipif(memory.heap() is None, reason="not glibc")
def test_freed_memory_shows_as_held_until_trimmed():
    before = memory.heap()
    blocks = [bytearray(64 * 1024) for _ in range(800)]  # ~50 MB below the mmap threshold: on the heap
    during = memory.heap()
    assert during["in_use"] - before["in_use"] > 40 * 2**20
    del blocks[:-1]  # freed, but the last block pins the top of the heap
    after = memory.heap()
    assert after["free_held"] - before["free_held"] > 30 * 2**20
    memory.trim()
    assert memory.heap()["free_held"] < after["free_held"]
    assert "heap in use" in memory.describe()


def test_python_objects_are_reported_only_while_traced():
    assert memory.python_objects() == ""
    tracemalloc.start()
    try:
        kept = ["x" * 1000 for _ in range(2000)]
        report = memory.python_objects()
        assert report.startswith("python objects") and "test_memory.py" in report
        del kept
    finally:
        tracemalloc.stop()
