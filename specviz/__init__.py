"""specviz: an interactive speculative-decoding lab. The engine lives here; views consume its events."""
import os

# torch's oneDNN keeps two caches keyed by input shape (ideep's computation cache, LRU_CACHE_CAPACITY,
# and oneDNN's primitive cache, ONEDNN_PRIMITIVE_CACHE_CAPACITY; 1024 entries each by default), whose
# entries hold buffers sized by the rows they were made for: a server whose forwards keep meeting new
# row counts (prompt lengths, batched runs) grew ~1-2 MB per new count. These bounds keep the heap flat
# and cost no measured decode speed (specviz/memory.py). Read when torch first builds a primitive.
os.environ.setdefault("LRU_CACHE_CAPACITY", "16")
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")

__version__ = "0.1.0"
