"""A KV cache written in place: one preallocated tensor, a length, and an index copy for compaction.

transformers' DynamicCache concatenates every step (each forward copies the whole cache once per
layer), so a long prompt makes every later step slower. Here keys and values of all layers live in
one tensor [layers, 2, kv_heads, capacity, head_dim]; a forward writes its new rows into the slots
after `length`, a rollback only lowers `length`, and keeping an accepted tree path moves the few
rows it needs with one index copy for all layers. Capacity starts at `reserve(n)` (or a minimum)
and doubles when a forward needs more, so a run pays at most a few reallocations.
"""
from __future__ import annotations

import torch

MIN_CAPACITY = 256


class StaticKV:
    def __init__(self, layers: int, kv_heads: int, head_dim: int, device: torch.device, dtype: torch.dtype,
                 capacity: int = MIN_CAPACITY, limit: int = 1 << 30):
        self.shape = (layers, 2, kv_heads, head_dim)
        self.device, self.dtype = device, dtype
        self.limit = limit  # the model's context: never allocate beyond it
        self.length = 0
        self._set(self._alloc(min(max(capacity, MIN_CAPACITY), limit)))

    def _alloc(self, capacity: int) -> torch.Tensor:
        layers, two, heads, dim = self.shape
        return torch.empty(layers, two, heads, capacity, dim, device=self.device, dtype=self.dtype)

    def _set(self, data: torch.Tensor) -> None:
        self.data = data
        # per layer, made once per allocation: keys and values as attention reads them
        # [1, kv_heads, capacity, head_dim], and as a forward writes them [capacity, kv_heads, head_dim]
        self.read = [(data[i, 0][None], data[i, 1][None]) for i in range(data.shape[0])]
        self.write = [(data[i, 0].transpose(0, 1), data[i, 1].transpose(0, 1)) for i in range(data.shape[0])]

    @property
    def capacity(self) -> int:
        return self.data.shape[3]

    def reserve(self, total: int) -> None:
        """Make room for `total` positions (keeps the cached ones)."""
        if total <= self.capacity:
            return
        if total > self.limit:
            raise ValueError(f"{total} positions exceed the model's context of {self.limit}")
        capacity = min(max(total, 2 * self.capacity), self.limit)
        data = self._alloc(capacity)
        data[:, :, :, : self.length] = self.data[:, :, :, : self.length]
        self._set(data)

    def crop(self, length: int) -> None:
        self.length = min(self.length, length)

    def compact(self, slots: list[int]) -> None:
        """Keep exactly the cached rows `slots` (ascending), moved to the front in that order."""
        first = 0
        while first < len(slots) and slots[first] == first:
            first += 1
        if first < len(slots):
            src = torch.tensor(slots[first:], device=self.device)
            self.data[:, :, :, first: len(slots)] = self.data.index_select(3, src)
        self.length = len(slots)
