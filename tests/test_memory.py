"""specviz/memory.py: the heap's in-use and freed-but-held bytes, trimming, and the tracemalloc report."""
import threading
import tracemalloc

import pytest

from specviz import memory


@pytest.mark.skipif(memory.heap() is None, reason="not glibc")
def test_the_heap_counts_live_allocations_in_every_arena():
    def allocate(box):
        # ~200 MB in blocks below the mmap threshold: on a heap. Large next to what other threads of a long
        # test process (servers of earlier tests) allocate or free meanwhile: the count is process-wide
        box.extend(bytearray(64 * 1024) for _ in range(3200))

    for where in ("main thread", "another thread"):  # another thread allocates in an arena of its own
        before, blocks = memory.heap(), []
        if where == "main thread":
            allocate(blocks)
        else:
            worker = threading.Thread(target=allocate, args=(blocks,))
            worker.start()
            worker.join()
        during = memory.heap()
        assert during["in_use"] - before["in_use"] > 150 * 2**20, where
        del blocks[:]
        assert memory.heap()["in_use"] < during["in_use"] - 150 * 2**20, where
    assert isinstance(memory.trim(), bool) and "heap in use" in memory.describe()


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
