"""Constrained decoding on the real model: grammars compiled and cached per constraint, masks
before sampling, and output that parses and validates whenever it ends with STOP."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import replace

import jsonschema
import numpy as np
import pytest

from services.common.domain import ChatMessage, OutputConstraint, SamplingParams
from services.common.errors import InvalidArgument
from services.generation.engine import FinishReason
from services.generation.sampler import ResolvedSampling

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "city": {"enum": ["Paris", "Berlin", "Seoul"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["name", "age", "city", "tags"],
    "additionalProperties": False,
}


def _schema(schema: dict) -> OutputConstraint:
    return OutputConstraint("json_schema", json.dumps(schema))


async def _complete(loaded, text: str, params: list[ResolvedSampling]):
    ids = loaded.render_prompt([ChatMessage("user", text)])[1]
    texts = ["" for _ in params]
    finish: list[FinishReason | None] = [None for _ in params]
    async for event in loaded.engine.generate(ids, params):
        texts[event.index] += event.text
        finish[event.index] = event.finish_reason or finish[event.index]
    return texts, finish


def _params(loaded, constraint: OutputConstraint | None, n: int = 1, **sampling):
    values = {"temperature": 0.0, "max_tokens": 200, "seed": 7, **sampling}
    base = ResolvedSampling.resolve(SamplingParams(**values), 4000)
    if constraint is not None:
        base = replace(base, grammar=loaded.grammars.compile(constraint))
    return [replace(base, seed=base.seed + i) for i in range(n)]


def test_grammars_are_cached_per_constraint(loaded_chat_model):
    grammars = loaded_chat_model.grammars
    first = grammars.compile(_schema(PERSON))
    assert grammars.compile(_schema(PERSON)) is first
    assert grammars.compile(_schema({**PERSON, "required": ["name"]})) is not first


@pytest.mark.parametrize(
    ("constraint", "names"),
    [
        (_schema({"type": "object", "if": {"type": "object"}}), "if"),
        (_schema({"type": "strnig"}), "strnig"),
        (_schema({"$ref": "#/definitions/missing"}), "/definitions/missing"),
        (OutputConstraint("regex", "(unclosed"), "regular expression"),
    ],
)
def test_what_cannot_be_enforced_is_refused_by_name(loaded_chat_model, constraint, names):
    with pytest.raises(InvalidArgument) as refused:
        loaded_chat_model.grammars.compile(constraint)
    assert names in refused.value.message
    assert refused.value.param == "response_format"


def test_greedy_and_sampled_output_validates_against_the_schema(loaded_chat_model):
    prompt = "Describe a person as JSON with name, age, city and tags."
    params = _params(loaded_chat_model, _schema(PERSON), n=4, temperature=1.0)
    params[0] = replace(params[0], temperature=0.0)
    texts, finish = asyncio.run(_complete(loaded_chat_model, prompt, params))
    assert finish == [FinishReason.STOP] * 4, texts
    for text in texts:
        jsonschema.validate(json.loads(text), PERSON)


def test_json_object_regex_and_choice(loaded_chat_model):
    cases = [
        (OutputConstraint("json_object"), lambda t: isinstance(json.loads(t), dict)),
        (
            OutputConstraint("regex", r"[0-9]{3}-[0-9]{4}"),
            re.compile(r"[0-9]{3}-[0-9]{4}").fullmatch,
        ),
        (OutputConstraint("choice", json.dumps(["yes", "no"])), lambda t: t in ("yes", "no")),
    ]
    for constraint, check in cases:
        params = _params(loaded_chat_model, constraint)
        [text], [finish] = asyncio.run(_complete(loaded_chat_model, "Is Paris in France?", params))
        assert finish is FinishReason.STOP and check(text), (constraint.kind, text)


def test_a_constrained_row_does_not_change_its_unconstrained_neighbours(loaded_chat_model):
    prompt = "What is the capital of France?"
    alone, _ = asyncio.run(_complete(loaded_chat_model, prompt, _params(loaded_chat_model, None)))

    async def side_by_side():
        free = _complete(loaded_chat_model, prompt, _params(loaded_chat_model, None))
        constrained = _complete(
            loaded_chat_model, prompt, _params(loaded_chat_model, _schema(PERSON))
        )
        return await asyncio.gather(free, constrained)

    (free_texts, _), (constrained_texts, _) = asyncio.run(side_by_side())
    assert free_texts == alone
    jsonschema.validate(json.loads(constrained_texts[0]), PERSON)


def _after(loaded, constraint: OutputConstraint, text: str):
    """A matcher of the constraint that has consumed `text`, and the ids of the ten digits."""
    matcher = loaded.grammars.compile(constraint).matcher()
    for token in loaded.tokenizer.encode(text):
        matcher.consume(token)
    assert not matcher.done, text
    digits = [loaded.tokenizer.encode(digit) for digit in "0123456789"]
    assert all(len(ids) == 1 for ids in digits)
    return matcher, [ids[0] for ids in digits]


def _digits_allowed(loaded, matcher, digits) -> bool:
    masked = matcher.mask(np.zeros(loaded.engine.model.vocab_size, dtype=np.float32))
    return bool(np.isfinite(masked[digits]).any())


def test_json_numbers_stop_at_sixteen_digits_in_a_row(loaded_chat_model):
    loaded = loaded_chat_model
    number = _schema({"type": "object", "properties": {"n": {"type": "number"}}})
    for run, allowed in [(15, True), (16, False)]:
        matcher, digits = _after(loaded, number, '{"n": ' + "1" * run)
        assert _digits_allowed(loaded, matcher, digits) is allowed, run
    # Each part of a number is its own run: the fraction may have 16 more.
    matcher, digits = _after(loaded, number, '{"n": ' + "1" * 16 + "." + "2" * 15)
    assert _digits_allowed(loaded, matcher, digits)
    # What the cap leaves allowed ends the number: the grammar still completes.
    matcher, _ = _after(loaded, number, '{"n": ' + "1" * 16)
    masked = matcher.mask(np.zeros(loaded.engine.model.vocab_size, dtype=np.float32))
    assert np.isfinite(masked[loaded.tokenizer.encode("}")]).all()


def test_the_digit_cap_spares_strings_bounds_that_need_digits_and_other_grammars(
    loaded_chat_model,
):
    loaded = loaded_chat_model
    text = _schema({"type": "object", "properties": {"id": {"type": "string"}}})
    matcher, digits = _after(loaded, text, '{"id": "' + "7" * 30)
    assert _digits_allowed(loaded, matcher, digits)
    # A quote escaped inside a string does not end it.
    matcher, digits = _after(loaded, text, '{"id": "a\\"' + "7" * 30)
    assert _digits_allowed(loaded, matcher, digits)
    # A minimum of 10^17 needs 18 digits: the schema's own bound wins over the cap.
    huge = _schema({"type": "integer", "minimum": 10**17})
    matcher, digits = _after(loaded, huge, "1" * 17)
    assert _digits_allowed(loaded, matcher, digits)
    matcher, digits = _after(loaded, OutputConstraint("regex", "[0-9]+"), "5" * 40)
    assert _digits_allowed(loaded, matcher, digits)
