"""Structured output on the whole stack: response_format json_object / json_schema (and vLLM's
extensions) enforced by constrained decoding, through the `openai` SDK and LangChain."""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import openai
import pytest
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from services.registry.defaults import DEFAULT_CHAT_MODEL


class City(BaseModel):
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    population_millions: float
    continent: Literal["Europe", "Asia", "Africa", "America", "Oceania"]


ASK = [{"role": "user", "content": "Give me facts about Paris as JSON."}]


@pytest.fixture(scope="module")
def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.api_key, max_retries=0)


def test_sdk_parse_with_a_pydantic_model(client):
    completion = client.chat.completions.parse(
        model=DEFAULT_CHAT_MODEL, messages=ASK, response_format=City, temperature=0
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, City)


def test_sampled_and_streamed_json_schema_output_validates(client):
    schema = City.model_json_schema()
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "city", "schema": schema, "strict": True},
    }
    sampled = client.chat.completions.create(
        model=DEFAULT_CHAT_MODEL,
        messages=ASK,
        response_format=response_format,
        temperature=1.0,
        n=3,
        seed=11,
        max_tokens=300,
    )
    for choice in sampled.choices:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), schema)
    chunks = list(
        client.chat.completions.create(
            model=DEFAULT_CHAT_MODEL,
            messages=ASK,
            response_format=response_format,
            temperature=0,
            stream=True,
            max_tokens=300,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(text), schema)


def test_json_object_gives_an_object(client):
    completion = client.chat.completions.create(
        model=DEFAULT_CHAT_MODEL,
        messages=[
            {
                "role": "user",
                "content": 'Answer in JSON like {"answer": "..."}. What is the capital of France?',
            }
        ],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=200,
    )
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(completion.choices[0].message.content), dict)


def test_vllm_extensions_on_chat_and_completions(stack, client):
    choice = client.chat.completions.create(
        model=DEFAULT_CHAT_MODEL,
        messages=[{"role": "user", "content": "Is Paris in France?"}],
        temperature=0,
        extra_body={"guided_choice": ["yes", "no"]},
    )
    assert choice.choices[0].message.content in ("yes", "no")
    number = client.completions.create(
        model=DEFAULT_CHAT_MODEL,
        prompt="The year the Eiffel Tower was finished:",
        temperature=0,
        max_tokens=10,
        extra_body={"structured_outputs": {"regex": " [0-9]{4}"}},
    )
    assert number.choices[0].finish_reason == "stop"
    text = number.choices[0].text
    assert len(text) == 5 and text[1:].isdigit()


def test_langchain_with_structured_output_json_schema(stack):
    llm = ChatOpenAI(
        base_url=f"{stack.base_url}/v1",
        api_key=stack.api_key,
        model=DEFAULT_CHAT_MODEL,
        temperature=0,
        max_retries=0,
    )
    city = llm.with_structured_output(City, method="json_schema").invoke(
        "Give me facts about Paris as JSON."
    )
    assert isinstance(city, City)


@pytest.mark.parametrize(
    ("schema", "names"),
    [
        ({"type": "object", "if": {"required": ["a"]}}, "if"),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "missing"),
    ],
)
def test_a_schema_feature_that_cannot_be_enforced_is_400_naming_it(stack, schema, names):
    body = {
        "model": DEFAULT_CHAT_MODEL,
        "messages": ASK,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    }
    for stream in (False, True):
        response = stack.http.post(
            f"{stack.base_url}/v1/chat/completions", json={**body, "stream": stream}, timeout=60
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "response_format"
        assert names in error["message"]
