"""KV slots in device memory (CUDA): the cache never crosses to the host per token.

The layout is KvSlots' ([slots, kv_heads, max_len, head_dim] per cache array, one device
allocation each), bound in place by address. What moves entries in or out of a slot (a prefix
cache hit, n completions of one prompt, a rider row's first entry) is a strided copy: one row
per kv head, `tokens * head_dim` elements wide, `max_len * head_dim` apart in the slot.
"""

from __future__ import annotations

import numpy as np

from services.generation.device_memory import DeviceMemory
from services.generation.kv_slots import KvSlots


class DeviceKvSlots(KvSlots):
    def __init__(self, memory: DeviceMemory, *args, **kwargs):
        self.memory = memory
        super().__init__(*args, **kwargs)

    @property
    def device_type(self) -> str:
        return self.memory.device_type

    def _allocate(self) -> None:
        self._entry_bytes = self.head_dim * self.dtype.itemsize
        self._row_bytes = self.max_len * self._entry_bytes
        self._slot_bytes = self.kv_heads * self._row_bytes
        self._bases = [
            self.memory.malloc_zeroed(self.slots * self._slot_bytes) for _ in range(self.num_arrays)
        ]

    def close(self) -> None:
        for base in self._bases:
            self.memory.free(base)
        self._bases = []

    def address(self, array: int, slot: int, position: int = 0) -> int:
        return self._bases[array] + slot * self._slot_bytes + position * self._entry_bytes

    def entries(self, slot: int, start: int, end: int) -> list[np.ndarray]:
        out = []
        for array in range(self.num_arrays):
            host = np.empty((self.kv_heads, end - start, self.head_dim), self.dtype)
            self._copy_rows(
                host.ctypes.data,
                (end - start) * self._entry_bytes,
                self.address(array, slot, start),
                self._row_bytes,
                end - start,
            )
            out.append(host)
        return out

    def write(self, slot: int, start: int, entries: list[np.ndarray]) -> None:
        tokens = entries[0].shape[1]
        for array, part in enumerate(entries):
            host = np.ascontiguousarray(part, self.dtype)
            self._copy_rows(
                self.address(array, slot, start),
                self._row_bytes,
                host.ctypes.data,
                tokens * self._entry_bytes,
                tokens,
            )

    def first_entries(self, slots: list[int]) -> list[np.ndarray]:
        if not slots:
            return []
        kept = []
        for array in range(self.num_arrays):
            host = np.empty((len(slots), self.kv_heads, self.head_dim), self.dtype)
            for row, slot in enumerate(slots):
                self._copy_rows(
                    host[row].ctypes.data,
                    self._entry_bytes,
                    self.address(array, slot),
                    self._row_bytes,
                    1,
                )
            kept.append(host)
        return kept

    def restore_first_entries(self, slots: list[int], kept: list[np.ndarray]) -> None:
        for array, host in enumerate(kept):
            for row, slot in enumerate(slots):
                self._copy_rows(
                    self.address(array, slot),
                    self._row_bytes,
                    host[row].ctypes.data,
                    self._entry_bytes,
                    1,
                )

    def copy(self, source: int, target: int, tokens: int) -> None:
        for array in range(self.num_arrays):
            self._copy_rows(
                self.address(array, target),
                self._row_bytes,
                self.address(array, source),
                self._row_bytes,
                tokens,
            )
        self.lengths[target] = tokens

    def _copy_rows(self, dst: int, dst_pitch: int, src: int, src_pitch: int, tokens: int) -> None:
        """`tokens` entries of every kv head."""
        self.memory.copy_2d(
            dst, dst_pitch, src, src_pitch, tokens * self._entry_bytes, self.kv_heads
        )
