"""KV slots: every sequence's keys and values live in buffers allocated once per model.

Each cache array (layer x key/value) is one [slots, kv_heads, max_len, head_dim] buffer. A
sequence takes a slot, is prefilled into it, decodes in place and gives it back; joining and
leaving the batch is bookkeeping here, never a copy of another sequence's entries. A freed
slot keeps its prompt's entries until it is reused: a request whose prompt starts the same
way (a shared system prompt, the previous turn) takes that slot and prefills only the rest,
copying nothing. The bound (slots x max_len tokens) is known up front; memory is only
resident for the entries written (see _lazy_zeros).
"""

from __future__ import annotations

import heapq
import mmap

import numpy as np

# Fewest held tokens worth taking a slot out of order for. Every chat shares its template's
# ~30 opening tokens, most of a short prompt (SmolLM2 prefills ~1 ms a token on 2 cores): 8
# short chats at once prefilled 160 tokens instead of 360. A slot that holds tokens has its
# pages resident already, so taking it spreads no memory.
MIN_REUSE = 16


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
        self.kv_heads = kv_heads
        self.head_dim = head_dim
        self.dtype = np.dtype(dtype)
        self.num_arrays = num_arrays
        self._allocate()
        self.bytes_per_token = num_arrays * kv_heads * head_dim * self.dtype.itemsize
        # Entries held per slot: where the slot's next token goes. A free slot holds none.
        self.lengths = np.zeros(slots, np.int64)
        # Lowest free slot first, so that the slots in use stay packed at the start (a decode
        # run spans them all).
        self._free = list(range(slots))
        # (first slot, count, one token per row) -> the model's IO binding of those rows, kept
        # with the buffers they point into; decode runs write their logits into
        # `step_logits` (made by the model, which knows its vocabulary).
        self.bindings: dict[tuple[int, int, bool], object] = {}
        self.step_logits: np.ndarray | None = None
        # Free slot -> the prompt whose entries it still holds, for a prompt that starts alike.
        self._held: dict[int, np.ndarray] = {}

    # Storage: host memory here; DeviceKvSlots overrides these methods. Entries come and go
    # as host arrays [kv_heads, tokens, head_dim] per cache array.

    device_type = "cpu"

    def _allocate(self) -> None:
        shape = (self.slots, self.kv_heads, self.max_len, self.head_dim)
        self.arrays = [_lazy_zeros(shape, self.dtype) for _ in range(self.num_arrays)]

    def close(self) -> None:
        """Host buffers are freed with the object."""

    def address(self, array: int, slot: int) -> int:
        """Where the slot's row of a cache array starts, for IO binding."""
        return self.arrays[array][slot].ctypes.data

    def entries(self, slot: int, start: int, end: int) -> list[np.ndarray]:
        """A copy of the slot's entries at positions [start, end) per array, [kv_heads,
        end - start, head_dim]."""
        return [a[slot, :, start:end].copy() for a in self.arrays]

    def write(self, slot: int, start: int, entries: list[np.ndarray]) -> None:
        """Writes entries (per array [kv_heads, tokens, head_dim]) at the slot's positions
        from `start`; the slot's length is the caller's to set."""
        end = start + entries[0].shape[1]
        for array, part in zip(self.arrays, entries, strict=True):
            array[slot, :, start:end] = part

    def load(self, slot: int, blocks: list[list[np.ndarray]]) -> None:
        """Writes blocks of entries (a cached prefix; per block, per array [kv_heads, tokens,
        head_dim]) one after another from the slot's start."""
        start = 0
        for block in blocks:
            self.write(slot, start, block)
            start += block[0].shape[1]
        self.lengths[slot] = start

    def first_entries(self, slots: list[int]) -> list[np.ndarray]:
        """A copy of the slots' first entry per array, [slots, kv_heads, head_dim] (see
        restore_first_entries)."""
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

    # Bookkeeping

    @property
    def capacity_bytes(self) -> int:
        return self.bytes_per_token * self.slots * self.max_len

    @property
    def free(self) -> int:
        return len(self._free)

    def acquire(self, prompt_ids: list[int] | None = None, most: int = 0) -> int:
        """A free slot: the one already holding the longest start of `prompt_ids` (up to
        `most` tokens, at least MIN_REUSE; the lowest of equals), else the lowest. Its length
        says what it holds."""
        slot, reused = self._holder_of(prompt_ids, most) if prompt_ids else (None, 0)
        if slot is None:
            slot = heapq.heappop(self._free)
        else:
            self._free.remove(slot)
            heapq.heapify(self._free)
        self._held.pop(slot, None)
        self.lengths[slot] = reused
        return slot

    def _holder_of(self, prompt_ids: list[int], most: int) -> tuple[int | None, int]:
        prompt = np.asarray(prompt_ids[:most])
        best, longest = None, MIN_REUSE - 1
        for slot, held in sorted(self._held.items()):
            size = min(len(held), len(prompt))
            differ = np.flatnonzero(held[:size] != prompt[:size])
            common = int(differ[0]) if differ.size else size
            if common > longest:
                best, longest = slot, common
        return best, (longest if best is not None else 0)

    def release(self, slot: int, holding: list[int] | None = None) -> None:
        """Frees the slot; `holding`: the prompt whose entries it keeps until reused."""
        self.lengths[slot] = 0
        if holding:
            self._held[slot] = np.asarray(holding)
        heapq.heappush(self._free, slot)

    def release_all(self) -> None:
        self.lengths[:] = 0
        self._held.clear()
        self._free = list(range(self.slots))


def _lazy_zeros(shape: tuple[int, ...], dtype: type[np.floating]) -> np.ndarray:
    """Zeros whose memory is only resident once written, 4 KiB at a time.

    np.zeros asks for transparent huge pages on large arrays: the first entry written to a
    head's row then faults in 2 MiB, so a slot's first token made its whole max_len resident
    (about 377 MB for SmolLM2 at 8192 tokens) instead of the entries it holds.
    """
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buffer = mmap.mmap(-1, size)
    buffer.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buffer, dtype).reshape(shape)
