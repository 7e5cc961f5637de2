"""The full sampling surface on the real model, inside one batch (no gRPC)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest

from services.common.domain import ChatMessage, SamplingParams
from services.common.errors import ResourceExhausted
from services.generation.engine import FinishReason, GenerationEngine
from services.generation.sampler import ResolvedSampling, nucleus


def prompt(loaded, text: str) -> list[int]:
    return loaded.render_prompt([ChatMessage("user", text)])[1]


def resolve(**values) -> ResolvedSampling:
    return ResolvedSampling.resolve(SamplingParams(**values), max_new_tokens=4096)


async def complete(engine, ids, params: list[ResolvedSampling]):
    """Per completion index: (text, token ids, events)."""
    results = {i: ("", [], []) for i in range(len(params))}
    async for event in engine.generate(ids, params):
        text, tokens, events = results[event.index]
        results[event.index] = (text + event.text, tokens + event.token_ids, events + [event])
    return [results[i] for i in range(len(params))]


CAPITAL = "What is the capital of France?"


async def test_top_k_one_equals_greedy_at_any_temperature(loaded_chat_model):
    engine = loaded_chat_model.engine
    ids = prompt(loaded_chat_model, "Describe a rainy day.")
    greedy, top1 = await complete(
        engine,
        ids,
        [resolve(temperature=0.0, max_tokens=16), resolve(temperature=1.5, top_k=1, max_tokens=16)],
    )
    assert top1[1] == greedy[1]


async def test_n_completions_share_a_prefill_and_differ_under_temperature(loaded_chat_model):
    engine = loaded_chat_model.engine
    ids = prompt(loaded_chat_model, "Invent a name for a dragon.")
    base = resolve(temperature=1.0, max_tokens=12, seed=5)
    params = [replace(base, seed=5 + i) for i in range(4)]
    first = await complete(engine, ids, params)
    again = await complete(engine, ids, params)
    assert [c[1] for c in first] == [c[1] for c in again]
    assert len({tuple(c[1]) for c in first}) > 1
    assert all(c[2][-1].finish_reason is not None for c in first)


async def test_logprobs_match_the_greedy_choice(loaded_chat_model):
    engine = loaded_chat_model.engine
    ids = prompt(loaded_chat_model, CAPITAL)
    [(_, tokens, events)] = await complete(
        engine, ids, [resolve(temperature=0.0, max_tokens=6, logprobs=True, top_logprobs=3)]
    )
    entries = [lp for e in events for lp in e.logprobs]
    assert [lp.token_id for lp in entries] == tokens
    for entry in entries:
        assert entry.logprob <= 0.0
        assert len(entry.top) == 3
        # Greedy picks the likeliest token, so it heads the alternatives.
        assert entry.top[0][0] == entry.token_id
        assert entry.top[0][1] == pytest.approx(entry.logprob)
        assert [v for _, v in entry.top] == sorted((v for _, v in entry.top), reverse=True)


async def test_logit_bias_forces_and_bans_tokens(loaded_chat_model):
    engine = loaded_chat_model.engine
    tokenizer = loaded_chat_model.tokenizer
    ids = prompt(loaded_chat_model, CAPITAL)
    [(text, tokens, _)] = await complete(engine, ids, [resolve(temperature=0.0, max_tokens=8)])
    assert "Paris" in text
    paris = tokenizer.encode(" Paris")[0]
    assert paris in tokens
    [(banned_text, banned_tokens, _)] = await complete(
        engine, ids, [resolve(temperature=0.0, max_tokens=8, logit_bias=((paris, -100.0),))]
    )
    assert paris not in banned_tokens
    forced_id = tokenizer.encode(" banana")[0]
    [(_, forced, _)] = await complete(
        engine, ids, [resolve(temperature=0.0, max_tokens=3, logit_bias=((forced_id, 100.0),))]
    )
    assert forced == [forced_id] * 3


async def test_stop_token_ids_end_the_completion(loaded_chat_model):
    engine = loaded_chat_model.engine
    ids = prompt(loaded_chat_model, CAPITAL)
    paris = loaded_chat_model.tokenizer.encode(" Paris")[0]
    [(text, tokens, events)] = await complete(
        engine, ids, [resolve(temperature=0.0, stop_token_ids=(paris,))]
    )
    assert tokens[-1] == paris and "Paris" not in text
    assert events[-1].finish_reason is FinishReason.STOP


async def test_penalties_reduce_repetition(loaded_chat_model):
    engine = loaded_chat_model.engine
    ids = prompt(loaded_chat_model, "List the numbers from 1 to 30.")
    plain, penalized, repetition = await complete(
        engine,
        ids,
        [
            resolve(temperature=0.0, max_tokens=30),
            resolve(temperature=0.0, max_tokens=30, frequency_penalty=2.0, presence_penalty=1.0),
            resolve(temperature=0.0, max_tokens=30, repetition_penalty=1.8),
        ],
    )
    count = lambda tokens: max(tokens.count(t) for t in set(tokens))  # noqa: E731
    assert count(penalized[1]) < count(plain[1])
    assert count(repetition[1]) < count(plain[1])


async def test_chunked_prefill_matches_one_shot_prefill(loaded_chat_model):
    loaded = loaded_chat_model
    chunked = GenerationEngine(
        loaded.engine.model, loaded.tokenizer, loaded.context_length, max_prefill_tokens=16
    )
    try:
        ids = prompt(loaded, "Summarize: the quick brown fox jumps over the lazy dog, twice.")
        assert len(ids) > 32
        params = [resolve(temperature=0.0, max_tokens=12)]
        [(_, reference, _)] = await complete(loaded.engine, ids, params)
        # A short request decodes while the long one is prefilled chunk by chunk.
        short = prompt(loaded, "Hi")
        both = await asyncio.gather(
            complete(chunked, ids, params), complete(chunked, short[:12], params)
        )
        assert both[0][0][1] == reference
    finally:
        chunked.close()


async def test_full_queue_is_resource_exhausted(loaded_chat_model):
    loaded = loaded_chat_model
    small = GenerationEngine(
        loaded.engine.model,
        loaded.tokenizer,
        loaded.context_length,
        kv_slots=1,
        max_waiting=1,
    )
    try:
        ids = prompt(loaded, "Write a long essay about mountains.")
        params = [resolve(temperature=0.0, max_tokens=200)]
        running = small.generate(ids, params)
        await anext(running)
        waiting = small.generate(ids, params)
        waiting_task = asyncio.ensure_future(anext(waiting))
        await asyncio.sleep(0.2)
        with pytest.raises(ResourceExhausted):
            await anext(small.generate(ids, params))
        await running.aclose()
        await waiting_task
        await waiting.aclose()
    finally:
        small.close()


async def test_ignore_eos_generates_exactly_max_tokens(loaded_chat_model):
    engine = loaded_chat_model.engine
    ids = prompt(loaded_chat_model, CAPITAL)
    [(_, stopped, _)] = await complete(engine, ids, [resolve(temperature=0.0, max_tokens=40)])
    assert len(stopped) < 40  # the answer ends with end-of-sequence...
    [(_, tokens, events)] = await complete(
        engine, ids, [resolve(temperature=0.0, max_tokens=40, ignore_eos=True)]
    )
    assert len(tokens) == 40  # ...unless told to keep going.
    assert events[-1].finish_reason is FinishReason.LENGTH


@pytest.mark.parametrize("temperature", [0.3, 1.0, 3.0])
def test_the_nucleus_is_the_smallest_likeliest_set_reaching_top_p(temperature):
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 4, 49152) / temperature
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(probs)[::-1]
    for top_p in (0.1, 0.5, 0.9, 0.99):
        kept = nucleus(probs, top_p)
        size = int(np.searchsorted(np.cumsum(probs[order]), top_p)) + 1
        assert np.array_equal(kept, np.sort(order[:size]))
        assert probs[kept].sum() >= top_p - 1e-9
