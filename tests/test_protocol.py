"""The edge's request models: the one place where bounds and shapes are checked (no server)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from edge.protocol import ChatCompletionRequest, lone_surrogate_at
from services.common.domain import SamplingParams

USER = [{"role": "user", "content": "hi"}]


def parse(**fields) -> ChatCompletionRequest:
    # As FastAPI sees a body: JSON decoded to Python, then validated.
    return ChatCompletionRequest.model_validate(
        json.loads(json.dumps({"model": "m", "messages": USER, **fields}))
    )


def refused(**fields) -> str:
    with pytest.raises(ValidationError) as caught:
        parse(**fields)
    return str(caught.value)


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": 3.0},
        {"temperature": "0.5"},
        {"top_p": 0.0},
        {"presence_penalty": 5.0},
        {"max_tokens": 0},
        {"max_tokens": 2**32},
        {"max_tokens": "5"},
        {"max_tokens": 5.0},
        {"top_k": 2**40},
        {"top_k": -2},
        {"seed": 2**64},
        {"seed": -(2**63) - 1},
        {"stop_token_ids": [2**40]},
        {"stop": ["a", "b", "c", "d", "e"]},
        {"stop": [""]},
        {"logit_bias": {"abc": 1}},
        {"logit_bias": {str(2**40): 1}},
        {"logit_bias": {"5": 101}},
        {"n": 17},
        {"stream": "yes"},
        {"stream": 1},
        {"logprobs": "true"},
        {"top_logprobs": 2},
        {"stream_options": {"include_usage": True}},
        {"messages": []},
        {"messages": [{"role": "user"}]},
        {"messages": [{"role": "user", "content": None}]},
        {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        {"messages": [{"role": "tool", "content": "42"}]},
        {"messages": [{"role": "function", "content": "42"}]},
        {"messages": [{"role": "robot", "content": "hi"}]},
        {"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}]},
        {"response_format": {"type": "xml"}},
        {"response_format": {"type": "json_schema"}},
        {"tools": [{"type": "function"}]},
        {"tools": "get_weather"},
        {"tool_choice": "sometimes"},
        {"tool_choice": {"type": "function", "function": {"name": "undeclared"}}},
        {"tool_choice": "required"},
    ],
)
def test_out_of_range_or_malformed_fields_are_refused(fields):
    refused(**fields)


def test_structured_output_becomes_one_output_constraint():
    schema = {"name": "answer", "schema": {"type": "object", "required": ["a"]}}
    constraint = parse(response_format={"type": "json_schema", "json_schema": schema})
    assert constraint.output_constraint.kind == "json_schema"
    assert json.loads(constraint.output_constraint.spec) == schema["schema"]
    # Listed properties and nothing said of others: closed, as OpenAI's strict mode requires.
    listed = {"type": "object", "properties": {"a": {"type": "object", "properties": {}}}}
    closed = parse(
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": listed}}
    )
    assert json.loads(closed.output_constraint.spec) == {
        "type": "object",
        "properties": {"a": {"type": "object", "properties": {}, "additionalProperties": False}},
        "additionalProperties": False,
    }
    assert parse(response_format={"type": "json_object"}).output_constraint.kind == "json_object"
    assert parse(response_format={"type": "text"}).output_constraint is None
    assert parse(guided_choice=["a", "b"]).output_constraint.kind == "choice"
    assert parse(guided_json='{"type": "object"}').output_constraint.kind == "json_schema"
    assert parse(structured_outputs={"regex": "[0-9]+"}).output_constraint.kind == "regex"
    assert "only one output constraint" in refused(guided_regex="a", guided_choice=["a"])
    assert "stop cannot be combined" in refused(response_format={"type": "json_object"}, stop="}")
    assert "exactly one" in refused(structured_outputs={})


def test_what_cannot_be_honoured_yet_is_refused_with_the_reason():
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    assert "cannot be combined" in refused(
        tools=tools, tool_choice="required", response_format={"type": "json_object"}
    )
    assert "legacy function_call" in refused(
        messages=[{"role": "assistant", "content": "", "function_call": {"name": "f"}}]
    )
    # Declared but naming another function: the more precise complaint comes first.
    choice = {"type": "function", "function": {"name": "other"}}
    assert "tools does not declare" in refused(tools=tools, tool_choice=choice)


def test_what_openai_accepts_is_accepted():
    body = parse(
        temperature=0,
        max_tokens=2**31 - 1,
        seed=-1,
        top_k=-1,
        stop="\n",
        response_format={"type": "text"},
        tool_choice="none",
        tools=[],
        logit_bias={"42": -100},
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": "hello"},
            {"role": "tool", "content": "42", "tool_call_id": "call_1"},
            {"role": "user", "content": "and?", "some_future_field": 1},
        ],
        some_future_field={"x": 1},
    )
    sampling = body.to_sampling_params()
    # A negative seed is folded into the sampler's 64-bit range; -1 disables top_k as in vLLM.
    assert sampling.seed == 2**64 - 1
    assert sampling.top_k == 0
    assert body.ignored_fields == ["some_future_field"]


def test_lone_surrogates_are_found_wherever_they_are():
    assert lone_surrogate_at({"messages": [{"content": "ok"}, {"content": "\ud800"}]}) == (
        "messages.1.content"
    )
    assert lone_surrogate_at({"a": ["fine", "한국어", "你是谁?"]}) is None
    assert "not valid Unicode" in refused(messages=[{"role": "user", "content": "x\udfff"}])


def test_sampling_defaults_print_without_float32_noise():
    as_float32 = 0.30000001192092896
    assert SamplingParams(temperature=as_float32).to_dict() == {"temperature": 0.3}
