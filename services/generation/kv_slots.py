"""KV slots: every sequence's keys and values live in buffers allocated once per model.

Each cache array (layer x key/value) is one [slots, kv_heads, max_len, head_dim] buffer. A
sequence takes a slot, is prefilled into it, decodes in place and gives it back; joining and
leaving the batch is bookkeeping here, never a copy of another sequence's entries. The bound
(slots x max_len tokens) is known up front; the pages of a slot are only touched, and so only
resident, once a sequence has used them.
"""

from __future__ import annotations

import heapq

import numpy as np


class KvSlots:
    def __init__(
        self,
        num_arrays: int,
        kv_heads: int,
        head_dim: int,
        slots: int,
        max_len: int,
        dtype: type[np.floating],
    ):
        self.slots = slots
        self.max_len = max_len
        shape = (slots, kv_heads, max_len, head_dim)
        # np.zeros maps fresh pages lazily, so memory grows with use up to the bound.
        self.arrays = [np.zeros(shape, dtype) for _ in range(num_arrays)]
        self.bytes_per_token = num_arrays * kv_heads * head_dim * np.dtype(dtype).itemsize
        # Entries held per slot: where the slot's next token goes. A free slot holds none.
        self.lengths = np.zeros(slots, np.int64)
        # Lowest free slot first, so that the slots in use stay packed at the start.
        self._free = list(range(slots))

    @property
    def capacity_bytes(self) -> int:
        return self.bytes_per_token * self.slots * self.max_len

    @property
    def free(self) -> int:
        return len(self._free)

    def acquire(self) -> int:
        return heapq.heappop(self._free)

    def release(self, slot: int) -> None:
        self.lengths[slot] = 0
        heapq.heappush(self._free, slot)

    def release_all(self) -> None:
        self.lengths[:] = 0
        self._free = list(range(self.slots))

    def view(self, slot: int, tokens: int) -> list[np.ndarray]:
        """The slot's first `tokens` entries per array, as [1, kv_heads, tokens, head_dim] views."""
        return [a[slot : slot + 1, :, :tokens] for a in self.arrays]

    def load(self, slot: int, cache: list[np.ndarray]) -> None:
        """Writes [1, kv_heads, tokens, head_dim] entries (a cached prefix) at the slot's start."""
        for array, entries in zip(self.arrays, cache, strict=True):
            array[slot, :, : entries.shape[2]] = entries[0]
        self.lengths[slot] = cache[0].shape[2]

    def first_entries(self, slots: list[int]) -> list[np.ndarray]:
        """A copy of the slots' first entry per array (see restore_first_entries)."""
        return [a[slots, :, 0].copy() for a in self.arrays] if slots else []

    def restore_first_entries(self, slots: list[int], kept: list[np.ndarray]) -> None:
        if not slots:
            return
        for array, entries in zip(self.arrays, kept, strict=True):
            array[slots, :, 0] = entries

    def copy(self, source: int, target: int, tokens: int) -> None:
        """Gives `target` the first `tokens` entries of `source` (n completions of one prompt)."""
        for array in self.arrays:
            array[target, :, :tokens] = array[source, :, :tokens]
        self.lengths[target] = tokens
