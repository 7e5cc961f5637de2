"""Tool calls below the edge: parsers per template family, the generic and native renderings
of tools and of calls in the history, and calls forced by constrained decoding on the real
model (over gRPC)."""

from __future__ import annotations

import json

import grpc
import jsonschema
import pytest

from llmserve.common.v1 import common_pb2
from llmserve.generation.v1 import generation_pb2, generation_pb2_grpc
from services.common.domain import ChatMessage, ToolCall
from services.generation.chat_template import ChatTemplate
from services.generation.tools import (
    GENERIC_JSON,
    HERMES,
    LLAMA3,
    MISTRAL,
    generic_messages,
    tool_format_for,
)
from services.registry.defaults import DEFAULT_CHAT_MODEL

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": WEATHER_PARAMETERS,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The local time in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 40}},
                "required": ["city"],
            },
        },
    },
]
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def _feed(parser, text: str, size: int = 3):
    content, calls = "", []
    for start in range(0, len(text), size):
        piece, found = parser.push(text[start : start + size])
        content, calls = content + piece, calls + found
    piece, found = parser.finish()
    return content + piece, calls + found


def test_hermes_calls_are_parsed_whole_from_any_split():
    text = (
        "Let me check.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n'
        "</tool_call>\n<tool_call>\n"
        '{"name": "get_time", "arguments": {"city": "Seoul"}}\n</tool_call>\n'
    )
    for size in (1, 2, 5, 1000):
        content, calls = _feed(HERMES.parser(["get_weather", "get_time"], True), text, size)
        assert content == "Let me check.\n"
        assert [c.name for c in calls] == ["get_weather", "get_time"]
        assert json.loads(calls[0].arguments) == {"city": "Paris", "unit": "celsius"}
        assert calls[0].id.startswith("call_") and calls[0].id != calls[1].id
    _, calls = _feed(HERMES.parser(["get_weather", "get_time"], False), text)
    assert [c.name for c in calls] == ["get_weather"]


def test_what_is_not_a_valid_call_stays_content():
    parser = HERMES.parser(["get_weather"], True)
    text = '<tool_call>{"name": "launch_rockets", "arguments": {}}</tool_call> and <tool'
    content, calls = _feed(parser, text)
    assert calls == [] and content == text
    content, calls = _feed(HERMES.parser(["get_weather"], True), "<tool_call>{not json")
    assert calls == [] and content == "<tool_call>{not json"
    # A call the model did not close before the end still counts.
    content, calls = _feed(
        HERMES.parser(["get_weather"], True),
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}',
    )
    assert content == "" and calls[0].name == "get_weather"


def test_whole_output_families():
    mistral = '[TOOL_CALLS][{"name": "get_time", "arguments": {"city": "Lima"}}]'
    assert _feed(MISTRAL.parser(["get_time"], True), mistral)[1][0].name == "get_time"
    llama = '{"name": "get_time", "parameters": {"city": "Lima"}}'
    [call] = _feed(LLAMA3.parser(["get_time"], True), llama)[1]
    assert json.loads(call.arguments) == {"city": "Lima"}
    generic = '[{"name": "get_time", "arguments": {"city": "Lima"}}]'
    assert len(_feed(GENERIC_JSON.parser(["get_time"], True), generic)[1]) == 1
    # Prose passes through as it streams.
    parser = GENERIC_JSON.parser(["get_time"], True)
    assert parser.push("It is noon")[0] == "It is noon"
    assert tool_format_for("{% for t in tools %}<tool_call>{% endfor %}") is HERMES
    assert tool_format_for("[TOOL_CALLS]") is MISTRAL
    assert tool_format_for("<|python_tag|>") is LLAMA3
    assert tool_format_for("{{ tools | tojson }}") is GENERIC_JSON


def test_a_template_without_tools_gets_the_generic_format_and_history():
    call = ToolCall("call_1", "get_weather", '{"city": "Paris", "unit": "celsius"}')
    history = [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Weather in Paris?"),
        ChatMessage("assistant", "", tool_calls=(call,)),
        ChatMessage("tool", '{"temperature": 21}', tool_call_id="call_1"),
    ]
    converted = generic_messages(history, TOOLS, HERMES)
    assert converted[0].content.startswith("Be brief.\n\nYou can call functions")
    assert '"name": "get_weather"' in converted[0].content
    assert converted[2].content == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": '
        '"celsius"}}\n</tool_call>'
    )
    assert converted[3] == ChatMessage(
        "user", '<tool_response>\n{"temperature": 21}\n</tool_response>'
    )


def test_a_template_with_tools_renders_them_and_the_calls_natively():
    source = (
        "{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}\n{% endif %}"
        "{% for m in messages %}{{ m.role }}:{{ m.content }}"
        "{% for c in m.tool_calls or [] %}[{{ c.function.name }}({{ c.function.arguments.city }})]"
        "{% endfor %}\n{% endfor %}"
    )
    call = ToolCall("call_1", "get_weather", '{"city": "Paris", "unit": "celsius"}')
    rendered = ChatTemplate(source, {}).render(
        [ChatMessage("user", "hi"), ChatMessage("assistant", "", tool_calls=(call,))],
        add_generation_prompt=False,
        tools=TOOLS,
    )
    # trim_blocks, as transformers renders: the newline after a block tag goes.
    assert rendered == "TOOLS:get_weather;get_time;user:hiassistant:[get_weather(Paris)]"


@pytest.fixture
async def stub(generation_server):
    async with grpc.aio.insecure_channel(generation_server[0]) as channel:
        yield generation_pb2_grpc.GenerationServiceStub(channel)


async def _generate(stub, text: str, choice: generation_pb2.ToolChoice, n: int = 1, **sampling):
    request = generation_pb2.GenerateRequest(
        model=DEFAULT_CHAT_MODEL,
        messages=[common_pb2.ChatMessage(role="user", content=text)],
        sampling=common_pb2.SamplingParams(max_tokens=120, **sampling),
        tools_json=json.dumps(TOOLS),
        tool_choice=choice,
        n=n,
    )
    calls = {i: [] for i in range(n)}
    texts = {i: "" for i in range(n)}
    finish = {}
    async for response in stub.Generate(request):
        calls[response.index].extend(response.tool_calls)
        texts[response.index] += response.text
        if response.finish_reason:
            finish[response.index] = response.finish_reason
    return texts, calls, finish


async def test_required_and_named_calls_are_forced_and_validate(stub):
    required = generation_pb2.ToolChoice(mode=generation_pb2.TOOL_CHOICE_MODE_REQUIRED)
    texts, calls, finish = await _generate(
        stub, "What's the weather in Paris?", required, n=3, temperature=1.0, seed=5
    )
    for i in range(3):
        assert finish[i] == generation_pb2.FINISH_REASON_TOOL_CALLS, texts[i]
        assert texts[i] == ""
        for call in calls[i]:
            jsonschema.validate(json.loads(call.arguments), PARAMETERS[call.name])
    named = generation_pb2.ToolChoice(
        mode=generation_pb2.TOOL_CHOICE_MODE_FUNCTION,
        function_name="get_time",
        parallel_tool_calls=False,
    )
    texts, calls, finish = await _generate(stub, "Hello!", named, temperature=0.0)
    [call] = calls[0]
    assert call.name == "get_time" and finish[0] == generation_pb2.FINISH_REASON_TOOL_CALLS
    jsonschema.validate(json.loads(call.arguments), PARAMETERS["get_time"])
