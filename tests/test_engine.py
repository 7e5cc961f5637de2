"""The decode engine on the real exported SmolLM2 model, without gRPC."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest

from services.common.domain import ChatMessage, SamplingParams
from services.common.errors import InvalidArgument, ResourceExhausted
from services.common.onnx_runtime import select_providers
from services.common.records import chat_model_file
from services.generation.engine import FinishReason, GenerationEngine
from services.generation.onnx_model import OnnxCausalLM
from services.generation.sampler import ResolvedSampling
from services.generation.tokenizer import IncrementalDetokenizer

CAPITAL = [ChatMessage("user", "What is the capital of France?")]


def prompt(loaded, text: str) -> list[int]:
    return loaded.render_prompt([ChatMessage("user", text)])[1]


async def run(loaded, prompt_ids, **sampling):
    return await run_on(loaded.engine, prompt_ids, **sampling)


async def run_on(engine, prompt_ids, temperature=0.0, **sampling):
    params = ResolvedSampling.resolve(
        SamplingParams(temperature=temperature, **sampling), max_new_tokens=4096
    )
    events = [event async for event in engine.generate(prompt_ids, [params])]
    text = "".join(e.text for e in events)
    tokens = [t for e in events for t in e.token_ids]
    return text, tokens, events


async def test_greedy_answers_paris(loaded_chat_model):
    text, _, events = await run(
        loaded_chat_model, loaded_chat_model.render_prompt(CAPITAL)[1], temperature=0.0
    )
    assert "Paris" in text
    assert events[-1].finish_reason is FinishReason.STOP


async def test_kv_cache_decode_matches_full_recompute(loaded_chat_model):
    model = loaded_chat_model.engine.model
    ids = prompt(loaded_chat_model, "Name three colours.")
    _, cached_tokens, _ = await run(loaded_chat_model, ids, temperature=0.0, max_tokens=12)

    # Reference: no cache at all, the whole sequence recomputed for every new token.
    sequence = list(ids)
    reference = []
    for _ in range(len(cached_tokens)):
        empty = model.allocate(1, len(sequence))
        logits = model.forward(empty, 0, np.array([sequence], np.int64), np.zeros(1, np.int64))
        token = int(np.argmax(logits[0]))
        reference.append(token)
        sequence.append(token)
    assert cached_tokens == reference


async def test_stop_string_ends_generation_and_is_not_returned(loaded_chat_model):
    ids = loaded_chat_model.render_prompt(CAPITAL)[1]
    full, full_tokens, _ = await run(loaded_chat_model, ids, temperature=0.0)
    text, tokens, events = await run(loaded_chat_model, ids, temperature=0.0, stop=("Paris",))
    assert "Paris" in full
    assert text == full[: full.index("Paris")]
    assert events[-1].finish_reason is FinishReason.STOP
    assert len(tokens) < len(full_tokens)


async def test_text_held_for_a_stop_string_is_sent_when_the_reply_ends_at_eos(loaded_chat_model):
    ids = loaded_chat_model.render_prompt(CAPITAL)[1]
    full, _, events = await run(loaded_chat_model, ids, temperature=0.0)
    assert events[-1].finish_reason is FinishReason.STOP
    # The reply's last character could begin this stop string, so it is held until EOS.
    text, _, _ = await run(loaded_chat_model, ids, temperature=0.0, stop=(full[-1] + "\x00",))
    assert text == full


async def test_max_tokens_finishes_with_length(loaded_chat_model):
    ids = prompt(loaded_chat_model, "Write a long story about the sea.")
    _, tokens, events = await run(loaded_chat_model, ids, temperature=0.0, max_tokens=5)
    assert len(tokens) == 5
    assert events[-1].finish_reason is FinishReason.LENGTH
    assert events[-1].completion_tokens == 5


async def test_same_seed_same_text_and_other_seed_differs(loaded_chat_model):
    ids = prompt(loaded_chat_model, "Tell me a short story about a dragon.")
    sampling = {"temperature": 1.0, "max_tokens": 24}
    first = await run(loaded_chat_model, ids, seed=1234, **sampling)
    second = await run(loaded_chat_model, ids, seed=1234, **sampling)
    other = await run(loaded_chat_model, ids, seed=99, **sampling)
    assert first[1] == second[1]
    assert other[1] != first[1]


def test_detokenizer_never_splits_korean_or_chinese_characters(loaded_chat_model):
    tokenizer = loaded_chat_model.tokenizer
    text = "안녕하세요, 세계! 你好，世界。서울은 한국의 수도입니다."
    ids = tokenizer.encode(text)
    detokenizer = IncrementalDetokenizer(tokenizer, [])
    deltas = [detokenizer.push(token) for token in ids]
    assert "".join(deltas) == text
    assert all("\ufffd" not in delta for delta in deltas)
    # The test means something only if some tokens end mid-character.
    assert "" in deltas


async def test_streamed_multibyte_output_is_whole_characters(loaded_chat_model):
    ids = prompt(loaded_chat_model, "Translate to Chinese and Korean: good morning, friend.")
    text, tokens, events = await run(loaded_chat_model, ids, temperature=0.0, max_tokens=40)
    assert all("\ufffd" not in e.text for e in events)
    # A character cut off by max_tokens is dropped rather than sent half-made.
    assert text == loaded_chat_model.tokenizer.decode(tokens).rstrip("\ufffd")


async def test_batched_greedy_equals_single_sequence(loaded_with_each_cache):
    prompts = [
        prompt(loaded_with_each_cache, "What is the capital of France?"),
        prompt(
            loaded_with_each_cache, "Write a haiku about autumn leaves falling in a quiet park."
        ),
        prompt(loaded_with_each_cache, "List the planets."),
    ]
    budgets = [10, 24, 16]
    singles = [
        (await run(loaded_with_each_cache, p, temperature=0.0, max_tokens=b))[1]
        for p, b in zip(prompts, budgets, strict=True)
    ]

    async def staggered(index):
        # Later sequences join a batch that is already decoding; shorter ones leave early.
        await asyncio.sleep(0.15 * index)
        return (
            await run(
                loaded_with_each_cache, prompts[index], temperature=0.0, max_tokens=budgets[index]
            )
        )[1]

    batched = await asyncio.gather(*(staggered(i) for i in range(3)))
    assert batched == singles
    # The worker drops a finished sequence just after delivering its last event.
    for _ in range(100):
        if loaded_with_each_cache.engine.running == 0:
            break
        await asyncio.sleep(0.01)
    assert loaded_with_each_cache.engine.running == 0


async def test_abandoned_streams_leave_the_batch(loaded_chat_model):
    engine = loaded_chat_model.engine
    params = ResolvedSampling.resolve(SamplingParams(temperature=0.0, max_tokens=500), 4096)
    ids = prompt(loaded_chat_model, "Write a very long essay about the history of Rome.")
    streams = [engine.generate(ids, [params]) for _ in range(4)]
    await asyncio.gather(*(anext(stream) for stream in streams))
    # Prefilled sequences join the batch just after their first events are delivered.
    for _ in range(100):
        if engine.running == 4:
            break
        await asyncio.sleep(0.01)
    assert engine.running == 4
    for stream in streams:
        await stream.aclose()
    for _ in range(100):
        if engine.running == 0:
            break
        await asyncio.sleep(0.05)
    assert engine.running == 0 and engine.waiting == 0


async def test_kv_slots_are_all_free_after_100_aborted_streams_and_reused_exactly(
    loaded_with_each_cache,
):
    engine = loaded_with_each_cache.engine
    ids = prompt(
        loaded_with_each_cache, "Write a haiku about autumn leaves falling in a quiet park."
    )
    _, reference, _ = await run(loaded_with_each_cache, ids, temperature=0.0, max_tokens=20)
    params = ResolvedSampling.resolve(SamplingParams(temperature=0.0, max_tokens=300), 4096)

    async def abort_after_first_event(stream):
        await anext(stream)
        await stream.aclose()

    for _ in range(10):
        # More streams than slots: some are cancelled while waiting, some while decoding.
        streams = [engine.generate(ids, [params]) for _ in range(10)]
        await asyncio.gather(*(abort_after_first_event(s) for s in streams))
    for _ in range(200):
        if engine.kv.free == engine.kv.slots and engine.running == 0:
            break
        await asyncio.sleep(0.02)
    assert engine.kv.free == engine.kv.slots and engine.waiting == 0
    assert not engine.kv.lengths.any()
    # Slots that held aborted sequences give the same tokens as before.
    assert (await run(loaded_with_each_cache, ids, temperature=0.0, max_tokens=20))[1] == reference


async def test_more_completions_than_slots_is_invalid_argument(loaded_chat_model):
    engine = loaded_chat_model.engine
    params = ResolvedSampling.resolve(SamplingParams(max_tokens=4), 4096)
    with pytest.raises(InvalidArgument, match="more completions than this model runs at once"):
        too_many = [params] * (engine.kv.slots + 1)
        await anext(engine.generate(prompt(loaded_chat_model, "Hi"), too_many))


def resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_a_burst_of_long_prompts_waits_for_slots_or_is_refused_never_overruns_memory(
    loaded_chat_model,
):
    model, tokenizer = loaded_chat_model.engine.model, loaded_chat_model.tokenizer
    engine = GenerationEngine(model, tokenizer, 1024, kv_slots=2, max_waiting=4)
    try:
        ids = prompt(loaded_chat_model, "Summarize: " + "the tide comes in and goes out. " * 90)
        assert 700 < len(ids) < 1024
        params = [ResolvedSampling.resolve(SamplingParams(temperature=0.0, max_tokens=8), 4096)]
        before = resident_bytes()

        async def attempt():
            try:
                return [e async for e in engine.generate(ids, params)][-1].finish_reason
            except ResourceExhausted:
                return "refused"

        outcomes = await asyncio.gather(*(attempt() for _ in range(12)))
        # Four wait (and up to two more hold the slots if the worker took them in time); the
        # rest are refused at once with RESOURCE_EXHAUSTED (429); none fails otherwise.
        assert 4 <= outcomes.count(FinishReason.LENGTH) <= 6
        assert outcomes.count("refused") == 12 - outcomes.count(FinishReason.LENGTH)
        # Growth is bounded by the two slots and the prefill scratch, whatever the burst.
        grown = resident_bytes() - before
        assert grown < engine.kv.capacity_bytes + 400 * 2**20
    finally:
        engine.close()


async def test_a_prompt_prefilled_beside_running_streams_gives_its_own_tokens(loaded_chat_model):
    """A long prompt is prefilled chunk by chunk into a slot between two decoding sequences'
    slots, so decode runs pass over it mid-prefill; no one's tokens may change."""
    model, tokenizer = loaded_chat_model.engine.model, loaded_chat_model.tokenizer
    long = prompt(loaded_chat_model, "Summarize: " + "the tide comes in and goes out. " * 12)
    short = prompt(loaded_chat_model, "Write a haiku about autumn leaves falling in a quiet park.")
    engine = GenerationEngine(model, tokenizer, 1024, kv_slots=3, max_prefill_tokens=16)
    sampling = {"temperature": 0.0, "max_tokens": 60, "ignore_eos": True}
    params = [ResolvedSampling.resolve(SamplingParams(**sampling), 4096)]
    try:
        _, long_alone, _ = await run_on(engine, long, max_tokens=12)
        _, short_alone, _ = await run_on(engine, short, **sampling)
        # One at a time, so they take slots 0, 1 and 2.
        streams = [engine.generate(short, params) for _ in range(3)]
        firsts = [await anext(stream) for stream in streams]
        await streams[1].aclose()
        # Slot 1, once the worker frees it, is the only one: the long prompt takes it,
        # between the running sequences.
        _, long_between, _ = await run_on(engine, long, max_tokens=12)
        assert long_between == long_alone
        for index in (0, 2):
            rest = [t async for event in streams[index] for t in event.token_ids]
            assert firsts[index].token_ids + rest == short_alone
    finally:
        engine.close()


def test_spinning_threads_are_a_setting_of_the_session(chat_model):
    path = Path(chat_model.artifact_dir) / chat_model_file(chat_model.graph, "int4")
    for spin_us, allowed in ((0, "0"), (1000, "1")):
        model = OnnxCausalLM(path, select_providers("cpu"), spin_us=spin_us)
        options = model.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == allowed
        if spin_us:
            duration = options.get_session_config_entry("session.intra_op.spin_duration_us")
            assert duration == str(spin_us)
