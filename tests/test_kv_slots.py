"""KV slot bookkeeping, without a model."""

from __future__ import annotations

import mmap

import numpy as np

from services.generation.kv_slots import MIN_REUSE, KvSlots


def slots(count: int = 4) -> KvSlots:
    return KvSlots(num_arrays=2, kv_heads=1, head_dim=2, slots=count, max_len=256, dtype=np.float32)


def test_free_slots_are_taken_lowest_first_and_bounded_up_front():
    kv = slots()
    assert [kv.acquire() for _ in range(3)] == [0, 1, 2]
    kv.release(1)
    assert kv.acquire() == 1 and kv.free == 1
    assert kv.capacity_bytes == 2 * 1 * 2 * 4 * 4 * 256


def test_a_freed_slot_is_reused_by_a_prompt_that_starts_alike():
    kv = slots()
    system = list(range(100, 100 + MIN_REUSE + 20))
    first, other = kv.acquire(), kv.acquire()
    kv.release(first, holding=system + [1, 2, 3])
    kv.release(other, holding=[7] * 80)
    # Starts with the first prompt's system part: that slot, holding its common tokens.
    slot = kv.acquire(system + [9, 9, 9], most=len(system) + 1)
    assert slot == first and kv.lengths[slot] == len(system)
    # `most` caps what is reused (the engine leaves the prompt's last tokens to run).
    kv.release(slot, holding=system)
    slot = kv.acquire(system + [9], most=len(system) - 5)
    assert kv.lengths[slot] == len(system) - 5


def test_too_short_a_common_start_takes_the_lowest_free_slot_empty():
    kv = slots()
    taken = [kv.acquire() for _ in range(3)]
    kv.release(taken[2], holding=list(range(200)))
    kv.release(taken[0])
    prompt = list(range(MIN_REUSE - 1)) + [999] * 50
    assert kv.acquire(prompt, most=len(prompt)) == 0 and kv.lengths[0] == 0
    # A slot taken for a new prompt holds nothing reusable any more.
    kv.release(0)
    assert kv.acquire(list(range(200)), most=150) == 2
    kv.release(2)
    assert kv.acquire(list(range(200)), most=150) == 0


def resident_bytes() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * mmap.PAGESIZE


def test_memory_is_resident_only_for_entries_written():
    # SmolLM2-135M's shape at 8192 tokens: 377 MB a slot if a slot's first token made its
    # whole length resident (as 2 MiB huge pages per head row did).
    kv = KvSlots(num_arrays=60, kv_heads=3, head_dim=64, slots=4, max_len=8192, dtype=np.float32)
    before = resident_bytes()
    for array in kv.arrays:
        array[0, :, :16] = 1.0  # one 4 KiB page per head row
    grown = resident_bytes() - before
    assert grown < 8 * 2**20, f"{grown / 2**20:.0f} MiB resident for 16 tokens"
    assert all(array.flags.writeable for array in kv.arrays)
