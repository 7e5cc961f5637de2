"""Stop strings, sampling parameters and settings merges: pure logic, no model needed (the
engine runs over a scripted stand-in model)."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.domain import DEFAULT_N_PREDICT, SamplingParams
from services.generation.engine import FinishReason, GenerationEngine
from services.generation.kv_slots import KvSlots
from services.generation.sampler import ResolvedSampling, Sampler
from services.generation.stop import StopStringMatcher


def feed(matcher: StopStringMatcher, pieces: list[str]) -> tuple[str, bool]:
    out = []
    for piece in pieces:
        text, stopped = matcher.push(piece)
        out.append(text)
        if stopped:
            return "".join(out), True
    out.append(matcher.flush())
    return "".join(out), False


def test_stop_string_split_across_deltas_is_never_emitted():
    matcher = StopStringMatcher(("END",))
    emitted = []
    for piece in ["Hello E", "N", "D tail"]:
        text, stopped = matcher.push(piece)
        emitted.append(text)
        if stopped:
            break
    assert emitted == ["Hello ", "", ""]
    assert stopped


def test_partial_stop_prefix_is_released_when_it_does_not_complete():
    assert feed(StopStringMatcher(("END",)), ["abc E", "Nx", "yz"]) == ("abc ENxyz", False)


def test_earliest_of_several_stop_strings_wins():
    assert feed(StopStringMatcher(("world", "lo w")), ["hello world"]) == ("hel", True)


def test_no_stop_strings_passes_text_through():
    matcher = StopStringMatcher(())
    assert matcher.push("abc") == ("abc", False)


def test_unicode_stop_string():
    assert feed(StopStringMatcher(("다",)), ["안녕하세요", "입니", "다 끝"]) == (
        "안녕하세요입니",
        True,
    )


# A vocabulary of whole strings; token 0 is EOS.
VOCAB = ["<eos>", "Hi", ".", "\n", "!"]
EOS, HI, DOT, NEWLINE, BANG = range(len(VOCAB))
PROMPT = [HI, DOT]


class ScriptedTokenizer:
    eos_token_ids = frozenset({EOS})
    pad_token_id = EOS

    def decode(self, token_ids: list[int]) -> str:
        return "".join(VOCAB[t] for t in token_ids if t != EOS)


class ScriptedModel:
    """Stands in for OnnxCausalLM: the token after PROMPT + reply[:i] is reply[i]."""

    def __init__(self, reply: list[int]):
        self.reply = reply

    def allocate(self, slots: int, max_len: int) -> KvSlots:
        return KvSlots(1, 1, 1, slots, max_len, np.float32)

    def forward(self, kv, first, input_ids, past_lengths):
        batch, new = input_ids.shape
        logits = np.zeros((batch, len(VOCAB)), np.float32)
        for row, past in enumerate(past_lengths):
            last_position = past + new - 1
            logits[row, self.reply[last_position + 1 - len(PROMPT)]] = 1.0
        return logits


async def scripted_reply(reply: list[int], **sampling) -> tuple[str, FinishReason]:
    engine = GenerationEngine(ScriptedModel(reply), ScriptedTokenizer(), context_length=64)
    try:
        params = ResolvedSampling.resolve(
            SamplingParams(temperature=0.0, **sampling), max_new_tokens=32
        )
        events = [event async for event in engine.generate(PROMPT, [params])]
    finally:
        engine.close()
    return "".join(e.text for e in events), events[-1].finish_reason


@pytest.mark.parametrize(
    "reply,sampling,finish",
    [
        pytest.param([HI, DOT, NEWLINE, EOS], {}, FinishReason.STOP, id="eos"),
        pytest.param(
            [HI, DOT, NEWLINE, BANG],
            {"stop_token_ids": (BANG,)},
            FinishReason.STOP,
            id="stop-token",
        ),
        pytest.param([HI, DOT, NEWLINE, HI], {"max_tokens": 3}, FinishReason.LENGTH, id="length"),
    ],
)
async def test_text_held_for_a_stop_string_is_sent_when_the_reply_ends_otherwise(
    reply, sampling, finish
):
    """The reply's last newline could begin the stop string (two newlines), so it is held
    back; the reply then ends another way, and the held newline is part of it."""
    assert await scripted_reply(reply, stop=("\n\n",), **sampling) == ("Hi.\n", finish)


async def test_text_held_for_a_stop_string_that_then_matches_is_never_sent():
    reply = [HI, DOT, NEWLINE, NEWLINE, HI, EOS]
    assert await scripted_reply(reply, stop=("\n\n",)) == ("Hi.", FinishReason.STOP)


def _resolve(**values) -> ResolvedSampling:
    return ResolvedSampling.resolve(SamplingParams(**values), max_new_tokens=100)


def test_request_values_override_defaults_and_unset_fields_fall_through():
    merged = SamplingParams(temperature=0.2).with_defaults(
        SamplingParams(temperature=0.9, top_p=0.5)
    )
    assert (merged.temperature, merged.top_p) == (0.2, 0.5)


def test_sampling_params_round_trip_through_proto_and_json():
    params = SamplingParams(temperature=0.0, max_tokens=7, stop=("a", "b"), seed=3)
    assert SamplingParams.from_pb(params.to_pb()) == params
    assert SamplingParams.from_dict(params.to_dict()) == params


def test_max_tokens_is_capped_by_the_room_left_in_the_context():
    assert _resolve().max_tokens == 100
    assert _resolve(max_tokens=10).max_tokens == 10


def test_without_max_tokens_n_predict_bounds_the_completion():
    room = 100_000
    assert ResolvedSampling.resolve(SamplingParams(), room).max_tokens == DEFAULT_N_PREDICT
    assert ResolvedSampling.resolve(SamplingParams(n_predict=7), room).max_tokens == 7
    # An explicit max_tokens wins over n_predict; n_predict never exceeds the room left.
    assert ResolvedSampling.resolve(SamplingParams(max_tokens=9, n_predict=7), room).max_tokens == 9
    assert ResolvedSampling.resolve(SamplingParams(n_predict=500), 50).max_tokens == 50


def test_greedy_picks_the_argmax():
    logits = np.array([0.1, 3.0, 2.9, -1.0], np.float32)
    assert Sampler(_resolve(temperature=0.0), [0]).next_token(logits) == 1


def test_top_k_one_equals_greedy_even_at_high_temperature():
    logits = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    sampler = Sampler(_resolve(temperature=2.0, top_k=1), [0])
    assert {sampler.next_token(logits) for _ in range(20)} == {int(np.argmax(logits))}


def test_same_seed_same_samples_and_top_p_restricts_to_the_nucleus():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    draws = [Sampler(_resolve(seed=7, top_p=0.75), [0]) for _ in range(2)]
    first = [draws[0].next_token(logits) for _ in range(50)]
    second = [draws[1].next_token(logits) for _ in range(50)]
    assert first == second
    assert set(first) == {0, 1}


def test_frequency_penalty_discourages_repeats():
    logits = np.array([1.0, 0.9], np.float32)
    sampler = Sampler(_resolve(temperature=0.0, frequency_penalty=2.0), [5])
    assert [sampler.next_token(logits) for _ in range(2)] == [0, 1]
