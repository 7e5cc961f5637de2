"""Prefix caching: the cache's own bookkeeping (no model), then the engine on the real model,
where a hit must give exactly the tokens a cold prefill gives."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.domain import ChatMessage, SamplingParams
from services.generation.engine import GenerationEngine
from services.generation.prefix_cache import PrefixCache, block_keys
from services.generation.sampler import ResolvedSampling

BLOCK = 4


class FakeSlot:
    """Two fake cache arrays [kv_heads=2, tokens, head_dim=3] whose values name positions;
    records the positions the cache reads."""

    def __init__(self, tokens: int, fill: float = 1.0):
        positions = np.arange(tokens, dtype=np.float32)[None, :, None]
        self.arrays = [np.broadcast_to(positions * fill, (2, tokens, 3)).copy() for _ in range(2)]
        self.reads: list[tuple[int, int]] = []

    def read(self, start: int, end: int) -> list[np.ndarray]:
        self.reads.append((start, end))
        return [a[:, start:end].copy() for a in self.arrays]


def kv(tokens: int, fill: float = 1.0):
    """What PrefixCache.insert reads a slot's entries through."""
    return FakeSlot(tokens, fill).read


def first_array(hit) -> np.ndarray:
    """The hit's entries of the first cache array, [kv_heads, tokens, head_dim]."""
    return np.concatenate([block[0] for block in hit.blocks], axis=1)


def test_keys_chain_so_equal_blocks_after_different_ones_differ():
    a = block_keys([1, 2, 3, 4, 9, 9, 9, 9], BLOCK)
    b = block_keys([5, 6, 7, 8, 9, 9, 9, 9], BLOCK)
    assert a[1] != b[1]
    assert block_keys([1, 2, 3, 4, 5], BLOCK) == a[:1]


def test_lookup_returns_the_longest_whole_block_prefix_and_leaves_two_tokens_to_run():
    cache = PrefixCache(capacity_bytes=10**6, block_tokens=BLOCK)
    prompt = list(range(10))  # two full blocks
    cache.insert(prompt, kv(10))
    hit = cache.lookup(list(range(8)) + [99, 98])
    assert hit.tokens == 8 and [block[0].shape for block in hit.blocks] == [(2, 4, 3)] * 2
    assert np.array_equal(first_array(hit)[0, :, 0], np.arange(8))
    # The cached 8 tokens and one more: the last block is left to run, for the first logits
    # (a one-token chunk after a past would round differently from a cold prefill).
    assert cache.lookup(list(range(9))).tokens == 4
    assert cache.lookup([7] + list(range(1, 10))) is None
    # No longer than what the caller already has: no hit, and none counted.
    hits = cache.hits
    assert cache.lookup(list(range(10)), beyond=8) is None and cache.hits == hits
    assert cache.lookup(list(range(10)), beyond=7).tokens == 8


def test_insert_keeps_the_whole_blocks_of_the_prompt_only():
    cache = PrefixCache(capacity_bytes=10**6, block_tokens=BLOCK)
    slot = FakeSlot(10)  # longer than the prompt
    cache.insert([1, 2, 3, 4, 5, 6], slot.read)
    assert slot.reads == [(0, 4)]
    assert cache.nbytes == sum(a[:, :4].nbytes for a in slot.arrays)
    hit = cache.lookup([1, 2, 3, 4, 5, 6])
    assert np.array_equal(first_array(hit)[0, :, 0], [0, 1, 2, 3])


def test_a_block_shared_by_prompts_is_stored_once():
    cache = PrefixCache(capacity_bytes=10**6, block_tokens=BLOCK)
    block_bytes = sum(a.nbytes for a in FakeSlot(BLOCK).arrays)
    cache.insert([1, 2, 3, 4, 5, 6, 7, 8], kv(8))
    second = FakeSlot(8, fill=2.0)
    cache.insert([1, 2, 3, 4, 9, 9, 9, 9], second.read)
    assert second.reads == [(4, 8)]  # only the block not cached yet is read
    assert cache.nbytes == 3 * block_bytes
    # The second prompt's first block is the first prompt's (its entries, not the new ones).
    hit = cache.lookup([1, 2, 3, 4, 9, 9, 9, 9, 0, 0])
    assert hit.tokens == 8
    assert np.array_equal(first_array(hit)[0, :, 0], [0, 1, 2, 3, 8, 10, 12, 14])


def test_capacity_evicts_the_least_recently_used():
    one_prompt = sum(a.nbytes for a in FakeSlot(4).arrays)
    cache = PrefixCache(capacity_bytes=2 * one_prompt, block_tokens=BLOCK)
    first, second, third = ([n] * 4 for n in (1, 2, 3))
    cache.insert(first, kv(4))
    cache.insert(second, kv(4))
    assert cache.lookup(first + [0, 0])  # first is now the most recently used
    cache.insert(third, kv(4))
    assert cache.lookup(second + [0, 0]) is None
    assert cache.lookup(first + [0, 0]) and cache.lookup(third + [0, 0])
    assert cache.nbytes == 2 * one_prompt


SYSTEM = (
    "You are the guide of Velmora, a coastal city on the estuary of the river Sarn. Its old "
    "town sits on a hill above the harbour, and its streets are paved with pale green stone. "
    "The Amberline Bridge links the old town to the harbour district; it was designed by the "
    "engineer Tessa Quorin and opened in 1872. Answer briefly and only from these facts."
)


@pytest.fixture(scope="module", params=["float", "int8"])
def engines(request):
    """Engines over the same ONNX session (a float KV cache, then an int8 one): one with a
    prefix cache, one without."""
    suffix = "_int8" if request.param == "int8" else ""
    loaded = request.getfixturevalue(f"loaded_chat_model{suffix}")
    model, tokenizer = loaded.engine.model, loaded.tokenizer
    context = loaded.context_length
    cached = GenerationEngine(model, tokenizer, context, prefix_cache=PrefixCache(2**28, 16))
    cold = GenerationEngine(model, tokenizer, context)
    yield cached, cold
    cached.close()
    cold.close()


async def greedy(engine: GenerationEngine, prompt_ids: list[int], n: int = 1) -> list[list[int]]:
    params = ResolvedSampling.resolve(SamplingParams(temperature=0.0, max_tokens=24), 4096)
    tokens: list[list[int]] = [[] for _ in range(n)]
    async for event in engine.generate(prompt_ids, [params] * n):
        tokens[event.index].extend(event.token_ids)
    return tokens


async def another_conversation_takes_the_free_slot(loaded, engine: GenerationEngine) -> None:
    """The slot that held the last prompt now holds another (a different system prompt):
    only the prefix cache still has the last prompt's start."""
    other = [ChatMessage("system", "Be terse."), ChatMessage("user", "Hello.")]
    await greedy(engine, loaded.render_prompt(other)[1])


async def test_a_hit_gives_the_tokens_of_a_cold_prefill(loaded_chat_model, engines):
    cached, cold = engines

    def ask(question: str) -> list[int]:
        messages = [ChatMessage("system", SYSTEM), ChatMessage("user", question)]
        return loaded_chat_model.render_prompt(messages)[1]

    first, second = ask("Who designed the bridge?"), ask("When did the bridge open?")
    assert await greedy(cached, first) == await greedy(cold, first)
    assert cached.prefix_cache.nbytes > 0
    await another_conversation_takes_the_free_slot(loaded_chat_model, cached)
    # Second question: its system prompt comes from the cache; n=2 shares the hit.
    saved = cached.prefix_cache.saved_tokens
    assert await greedy(cached, second, n=2) == await greedy(cold, second, n=2)
    assert cached.prefix_cache.saved_tokens - saved >= 64  # the system prompt's blocks
    # The conversation's next turn reuses the whole earlier prompt.
    answer = loaded_chat_model.tokenizer.decode((await greedy(cold, second))[0])
    follow_up = loaded_chat_model.render_prompt(
        [
            ChatMessage("system", SYSTEM),
            ChatMessage("user", "When did the bridge open?"),
            ChatMessage("assistant", answer),
            ChatMessage("user", "And who designed it?"),
        ]
    )[1]
    assert cached.prefix_cache.lookup(follow_up).tokens >= len(second) - 16
    assert await greedy(cached, follow_up) == await greedy(cold, follow_up)


async def test_a_prompt_longer_than_one_prefill_chunk_also_reuses_its_prefix(
    loaded_chat_model, engines
):
    _, cold = engines
    # Every prompt here is longer than a chunk, so each takes the chunked path.
    chunked = GenerationEngine(
        cold.model,
        cold.tokenizer,
        cold.context_length,
        max_prefill_tokens=48,
        prefix_cache=PrefixCache(2**28, 16),
    )
    try:
        questions = ("Who designed the bridge?", "What are the streets paved with?")
        prompts = [
            loaded_chat_model.render_prompt(
                [ChatMessage("system", SYSTEM), ChatMessage("user", q)]
            )[1]
            for q in questions
        ]
        assert all(len(p) > 48 for p in prompts)
        assert await greedy(chunked, prompts[0]) == await greedy(cold, prompts[0])
        await another_conversation_takes_the_free_slot(loaded_chat_model, chunked)
        assert await greedy(chunked, prompts[1]) == await greedy(cold, prompts[1])
        assert chunked.prefix_cache.saved_tokens >= 64
    finally:
        chunked.close()


async def test_a_conversation_continues_in_the_slot_that_holds_its_last_prompt(
    loaded_chat_model, engines
):
    cached, cold = engines
    history = [ChatMessage("system", SYSTEM * 3), ChatMessage("user", "Who designed it?")]
    first = loaded_chat_model.render_prompt(history)[1]
    assert len(first) > 2 * 128
    answer = await greedy(cached, first)
    assert answer == await greedy(cold, first)
    history += [
        ChatMessage("assistant", loaded_chat_model.tokenizer.decode(answer[0])),
        ChatMessage("user", "And when did it open?"),
    ]
    follow_up = loaded_chat_model.render_prompt(history)[1]
    reused = cached.slot_reused_tokens
    # The earlier prompt is taken in place from its slot (no copy), the rest prefilled.
    assert await greedy(cached, follow_up) == await greedy(cold, follow_up)
    assert cached.slot_reused_tokens - reused == len(first)
