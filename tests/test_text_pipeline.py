"""Stop strings, sampling parameters and settings merges: pure logic, no model needed."""

from __future__ import annotations

import numpy as np

from services.common.domain import DEFAULT_N_PREDICT, SamplingParams
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
