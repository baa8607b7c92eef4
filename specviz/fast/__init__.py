"""The fast path: a lean forward for Llama/Qwen2 models over pre-packed weights and an in-place KV cache.

`CachedLM(model)` uses it automatically when `unsupported_reason(model)` is None (pass
`fast_path=False` for transformers' own forward). The model stays an ordinary transformers model;
`prepare(model)` builds the fast path's weight copies once per model per process.
"""
from .forward import Rows, forward, forward_many
from .kv import StaticKV
from .weights import FastModel, copy_bytes, forget, prepare, unsupported_reason

__all__ = ["FastModel", "Rows", "StaticKV", "copy_bytes", "forget", "forward", "forward_many", "prepare", "unsupported_reason"]
