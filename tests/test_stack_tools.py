"""Tool calls on the whole stack, driven by the `openai` SDK and LangChain: forced calls that
validate against their parameters, calls streamed as OpenAI streams them, the history's calls
and results rendered back into the prompt."""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import openai
import pytest
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from services.registry.defaults import DEFAULT_CHAT_MODEL

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": WEATHER,
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "description": "The local time.", "parameters": TIME},
    },
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What is the weather like in Paris?"}]


@pytest.fixture(scope="module")
def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.api_key, max_retries=0)


def test_required_calls_come_back_as_tool_calls_that_validate(client):
    completion = client.chat.completions.create(
        model=DEFAULT_CHAT_MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        temperature=0,
        max_tokens=200,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_a_named_call_streams_as_openai_streams_it(client):
    chunks = list(
        client.chat.completions.create(
            model=DEFAULT_CHAT_MODEL,
            messages=ASK,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            parallel_tool_calls=False,
            temperature=0,
            max_tokens=200,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [
        c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls
    ]
    first = deltas[0][0]
    assert first.index == 0 and first.id.startswith("call_") and first.type == "function"
    assert first.function.name == "get_weather" and first.function.arguments == ""
    # Fragments after the first carry only the index and arguments; joined, they are the JSON.
    assert all(d[0].index == 0 and d[0].id is None for d in deltas[1:])
    arguments = "".join(d[0].function.arguments or "" for d in deltas)
    jsonschema.validate(json.loads(arguments), WEATHER)
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish[0].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].usage.completion_tokens > 0


def test_calls_and_results_in_the_history_round_trip_into_the_prompt(stack, client):
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"city": "Paris", "unit": "celsius"}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": '{"temperature_c": 21}'},
    ]
    tokenized = stack.http.post(
        f"{stack.base_url}/tokenize",
        json={"model": DEFAULT_CHAT_MODEL, "messages": history, "tools": TOOLS},
    ).json()
    prompt = stack.http.post(
        f"{stack.base_url}/detokenize",
        json={"model": DEFAULT_CHAT_MODEL, "tokens": tokenized["tokens"]},
    ).json()["prompt"]
    # SmolLM2's template has no tools: the generic format, in a system message.
    assert prompt.startswith("<|im_start|>system\n") and "You can call functions" in prompt
    assert '"name": "get_weather"' in prompt
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
        "\n</tool_call>" in prompt
    )
    assert '<tool_response>\n{"temperature_c": 21}\n</tool_response>' in prompt
    answer = client.chat.completions.create(
        model=DEFAULT_CHAT_MODEL, messages=history, tools=TOOLS, temperature=0, max_tokens=40
    )
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_tool_choice_none_shows_no_tools(stack, client):
    tokenized = stack.http.post(
        f"{stack.base_url}/tokenize", json={"model": DEFAULT_CHAT_MODEL, "messages": ASK}
    ).json()
    answer = client.chat.completions.create(
        model=DEFAULT_CHAT_MODEL, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=5
    )
    assert answer.usage.prompt_tokens == tokenized["count"]
    assert answer.choices[0].message.tool_calls is None


class WeatherArgs(BaseModel):
    # Bounded, so that even a 135M model's string ends within max_tokens.
    city: str = Field(max_length=40)
    unit: Literal["celsius", "fahrenheit"]


@tool(args_schema=WeatherArgs)
def get_weather(city: str, unit: str) -> str:
    """The current weather in a city."""
    return "21"


class Answer(BaseModel):
    city: str = Field(max_length=40)
    country: str = Field(max_length=40)


def test_langchain_bind_tools_and_structured_output(stack):
    llm = ChatOpenAI(
        base_url=f"{stack.base_url}/v1",
        api_key=stack.api_key,
        model=DEFAULT_CHAT_MODEL,
        temperature=0,
        max_retries=0,
        max_tokens=200,
    )
    message = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(
        "What is the weather in Paris?"
    )
    assert isinstance(message, AIMessage)
    [call] = message.tool_calls
    assert call["name"] == "get_weather" and set(call["args"]) == {"city", "unit"}
    required = llm.bind_tools([get_weather], tool_choice="any").invoke("Weather in Oslo?")
    assert required.tool_calls and required.tool_calls[0]["name"] == "get_weather"
    answer = llm.with_structured_output(Answer).invoke("Which city is the capital of France?")
    assert isinstance(answer, Answer)
