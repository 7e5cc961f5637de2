"""The inputs that once broke the edge (500) or were silently accepted (200), sent over HTTP:
each is now a 400 in OpenAI's envelope, naming the field at fault."""

from __future__ import annotations

import json

import pytest
import requests

from services.registry.defaults import DEFAULT_CHAT_MODEL, DEFAULT_EMBEDDING_MODEL

USER = [{"role": "user", "content": "hi"}]
WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]

CHAT_CASES = [
    ({"seed": 2**64}, "seed"),
    ({"max_tokens": 2**32}, "max_tokens"),
    ({"top_k": 2**40}, "top_k"),
    ({"stop_token_ids": [2**40]}, "stop_token_ids.0"),
    ({"logit_bias": {str(2**40): 5}}, "logit_bias"),
    ({"stream": "yes"}, "stream"),
    ({"messages": [{"role": "user"}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": None}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages.0.content.0"),
    ({"messages": [{"role": "tool", "content": "42"}]}, "messages.0.tool_call_id"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"response_format": {"type": "json_object"}, "stop": "}"}, None),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 5}}}, None),
    ({"guided_regex": "a", "guided_choice": ["a"]}, None),
    ({"tools": [{"type": "function", "function": {}}]}, "tools.0.function.name"),
    ({"tools": WEATHER, "tool_choice": "required", "stop": "x"}, None),
    (
        {"tools": WEATHER, "tool_choice": "required", "response_format": {"type": "json_object"}},
        None,
    ),
    ({"messages": [{"role": "user", "tool_calls": []}]}, None),
    ({"tools": WEATHER, "tool_choice": {"type": "function", "function": {"name": "x"}}}, None),
    ({"stream_options": {"include_usage": True}}, None),
]


def _bad_request(response: requests.Response, param: str | None) -> dict:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


@pytest.mark.parametrize(("fields", "param"), CHAT_CASES, ids=lambda v: json.dumps(v)[:60])
def test_bad_chat_fields_are_400(stack, fields, param):
    body = {"model": DEFAULT_CHAT_MODEL, "messages": USER, "max_tokens": 2, **fields}
    response = stack.http.post(f"{stack.base_url}/v1/chat/completions", json=body, timeout=30)
    _bad_request(response, param)


def test_what_cannot_be_honoured_says_so(stack):
    body = {"model": DEFAULT_CHAT_MODEL, "messages": USER, "tools": WEATHER, "stop": "x"}
    body["tool_choice"] = "required"
    response = stack.http.post(f"{stack.base_url}/v1/chat/completions", json=body, timeout=30)
    assert "stop cannot be combined" in _bad_request(response, None)["message"]


def test_a_lone_surrogate_is_400(stack):
    # Written by hand: json.dumps would escape the surrogate into valid JSON text anyway.
    raw = '{"model": "MODEL", "messages": [{"role": "user", "content": "a\\ud800b"}]}'
    raw = raw.replace("MODEL", DEFAULT_CHAT_MODEL)
    response = stack.http.post(
        f"{stack.base_url}/v1/chat/completions",
        data=raw.encode(),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert "not valid Unicode" in _bad_request(response, None)["message"]


def test_a_token_id_beyond_32_bits_is_400_for_embeddings(stack):
    body = {"model": DEFAULT_EMBEDDING_MODEL, "input": [[1, 2, 2**40]]}
    response = stack.http.post(f"{stack.base_url}/v1/embeddings", json=body, timeout=30)
    _bad_request(response, "input")
    # Within 32 bits but outside the vocabulary: the embedding service says so.
    body = {"model": DEFAULT_EMBEDDING_MODEL, "input": [[1, 2, 2**31 - 1]]}
    response = stack.http.post(f"{stack.base_url}/v1/embeddings", json=body, timeout=30)
    assert "vocabulary" in _bad_request(response, None)["message"]


def test_a_negative_seed_is_accepted_and_reproducible(stack):
    body = {
        "model": DEFAULT_CHAT_MODEL,
        "messages": USER,
        "max_tokens": 8,
        "seed": -1,
        "temperature": 1.0,
    }
    url = f"{stack.base_url}/v1/chat/completions"
    first, second = (stack.http.post(url, json=body, timeout=60) for _ in range(2))
    assert first.status_code == second.status_code == 200, first.text
    content = [r.json()["choices"][0]["message"]["content"] for r in (first, second)]
    assert content[0] == content[1]


def test_a_chat_without_max_tokens_stops_at_n_predict(stack, admin):
    serving = admin.create_serving(name="short", default_sampling={"n_predict": 5})
    key = admin.issue_key(serving["id"])
    body = {"model": DEFAULT_CHAT_MODEL, "messages": USER, "ignore_eos": True}
    response = requests.post(
        f"{stack.base_url}/api/gateway/rep/serving/{serving['id']}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key['secret']}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["usage"]["completion_tokens"] == 5
    assert answer["choices"][0]["finish_reason"] == "length"
