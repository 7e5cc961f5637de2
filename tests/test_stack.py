"""The whole stack as `make run` starts it, driven by unchanged client code over HTTP."""

from __future__ import annotations

import json
import time

import grpc
import openai
import pytest
import requests
from langchain_openai import ChatOpenAI

from llmserve.generation.v1 import generation_pb2, generation_pb2_grpc
from services.registry.defaults import DEFAULT_CHAT_MODEL

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.api_key, max_retries=0)


def sse_payloads(response: requests.Response) -> list:
    """The seeds' loop: read `data:` lines until [DONE]."""
    payloads = []
    for line in response.iter_lines(decode_unicode=True):
        if not line or not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            payloads.append(data)
            break
        payloads.append(json.loads(data))
    return payloads


def test_models_lists_the_chat_model_with_a_usable_id(stack, client):
    ids = [model.id for model in client.models.list()]
    assert DEFAULT_CHAT_MODEL in ids
    # The node API's docs call it with POST.
    posted = requests.post(f"{stack.base_url}/v1/models", headers=stack.headers, timeout=10).json()
    assert [m["id"] for m in posted["data"]] == ids


def test_openai_sdk_non_stream_greedy_answers_paris(client):
    completion = client.chat.completions.create(
        model=DEFAULT_CHAT_MODEL, messages=CAPITAL, temperature=0
    )
    assert "Paris" in completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == DEFAULT_CHAT_MODEL
    assert completion.id.startswith("chatcmpl-")
    usage = completion.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0


def test_openai_sdk_stream_follows_the_chunk_contract(client):
    chunks = list(
        client.chat.completions.create(
            model=DEFAULT_CHAT_MODEL,
            messages=CAPITAL,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len({chunk.id for chunk in chunks}) == 1
    first, *middle, finish, usage_only = chunks
    assert first.choices[0].delta.role == "assistant" and not first.choices[0].delta.content
    assert all(c.choices[0].delta.content and c.choices[0].finish_reason is None for c in middle)
    assert "Paris" in "".join(c.choices[0].delta.content for c in middle)
    assert finish.choices[0].finish_reason == "stop"
    assert finish.usage.completion_tokens == usage_only.usage.completion_tokens > 0
    assert usage_only.choices == []


def test_stream_without_include_usage_has_no_usage_only_chunk(client):
    chunks = list(
        client.chat.completions.create(
            model=DEFAULT_CHAT_MODEL, messages=CAPITAL, temperature=0, stream=True, max_tokens=3
        )
    )
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 3


def test_requests_sse_loop(stack):
    with requests.post(
        f"{stack.base_url}/v1/chat/completions",
        json={"model": DEFAULT_CHAT_MODEL, "messages": CAPITAL, "stream": True, "temperature": 0},
        stream=True,
        headers=stack.headers,
        timeout=60,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        payloads = sse_payloads(response)
    assert payloads[-1] == "[DONE]"
    text = "".join(p["choices"][0]["delta"].get("content", "") for p in payloads[:-1])
    assert "Paris" in text


def test_langchain_chat_openai_invoke_and_stream(stack):
    for streaming in (False, True):
        llm = ChatOpenAI(
            base_url=f"{stack.base_url}/v1",
            api_key=stack.api_key,
            model=DEFAULT_CHAT_MODEL,
            temperature=0,
            streaming=streaming,
            max_retries=0,
        )
        answer = llm.invoke([("user", "What is the capital of France?")])
        assert "Paris" in answer.content


def test_korean_and_chinese_stream_in_whole_characters(client):
    stream = client.chat.completions.create(
        model=DEFAULT_CHAT_MODEL,
        messages=[
            {"role": "user", "content": "서울과 北京에 대해 한국어와 中文으로 설명해 주세요."}
        ],
        temperature=0,
        max_tokens=60,
        stream=True,
    )
    pieces = [
        c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content
    ]
    assert pieces
    assert all("\ufffd" not in piece for piece in pieces)


def test_unknown_fields_are_accepted(stack):
    response = requests.post(
        f"{stack.base_url}/v1/chat/completions",
        json={
            "model": DEFAULT_CHAT_MODEL,
            "messages": [{"role": "user", "content": "Hi", "weird": 1}],
            "max_tokens": 2,
            "some_future_option": {"x": 1},
        },
        headers=stack.headers,
        timeout=60,
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "body,status,param,code",
    [
        (b"{not json", 400, None, None),
        ({"model": DEFAULT_CHAT_MODEL}, 400, "messages", None),
        ({"model": DEFAULT_CHAT_MODEL, "messages": []}, 400, "messages", None),
        ({"model": DEFAULT_CHAT_MODEL, "messages": "hi"}, 400, "messages", None),
        (
            {"model": DEFAULT_CHAT_MODEL, "messages": CAPITAL, "temperature": "hot"},
            400,
            "temperature",
            None,
        ),
        (
            {"model": DEFAULT_CHAT_MODEL, "messages": CAPITAL, "max_tokens": -1},
            400,
            "max_tokens",
            None,
        ),
        (
            {"model": DEFAULT_CHAT_MODEL, "messages": [{"role": "wizard", "content": "x"}]},
            400,
            "messages.0.role",
            None,
        ),
        ({"model": "gpt-17", "messages": CAPITAL}, 404, "model", "model_not_found"),
        ({"model": "gpt-17", "messages": CAPITAL, "stream": True}, 404, "model", "model_not_found"),
        (
            {
                "model": DEFAULT_CHAT_MODEL,
                "messages": [{"role": "user", "content": "word " * 9000}],
            },
            400,
            "messages",
            "context_length_exceeded",
        ),
        (
            {"model": DEFAULT_CHAT_MODEL, "messages": CAPITAL, "max_tokens": 9000, "stream": True},
            400,
            "messages",
            "context_length_exceeded",
        ),
    ],
)
def test_bad_input_gets_status_and_openai_envelope(stack, body, status, param, code):
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    response = requests.post(
        f"{stack.base_url}/v1/chat/completions",
        headers={"content-type": "application/json", **stack.headers},
        timeout=60,
        **kwargs,
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code)


def test_unknown_route_is_404_envelope(stack):
    response = requests.get(f"{stack.base_url}/v1/nothing-here", headers=stack.headers, timeout=10)
    assert response.status_code == 404
    assert "nothing-here" in response.json()["error"]["message"]


def test_openai_sdk_raises_typed_errors(client):
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-17", messages=CAPITAL)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(
            model=DEFAULT_CHAT_MODEL, messages=[{"role": "user", "content": "word " * 9000}]
        )
    assert too_long.value.code == "context_length_exceeded"


def _running_sequences(stack) -> int:
    port = stack.env["GENERATION_PORT"]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = generation_pb2_grpc.GenerationServiceStub(channel).ListLoadedModels(
            generation_pb2.ListLoadedModelsRequest(), timeout=5
        )
    return sum(m.running_sequences + m.waiting_sequences for m in response.models)


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_cancels_generation(stack, stream):
    body = {
        "model": DEFAULT_CHAT_MODEL,
        "messages": [
            {"role": "user", "content": "Write a very long essay about the history of Rome."}
        ],
        "max_tokens": 2000,
        "temperature": 0,
        "stream": stream,
    }
    if stream:
        response = requests.post(
            f"{stack.base_url}/v1/chat/completions",
            json=body,
            stream=True,
            headers=stack.headers,
            timeout=60,
        )
        lines = response.iter_lines()
        for _ in range(6):
            next(lines)
        assert _running_sequences(stack) == 1
        response.close()
    else:
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.post(
                f"{stack.base_url}/v1/chat/completions", json=body, headers=stack.headers, timeout=2
            )
    deadline = time.monotonic() + 10
    while _running_sequences(stack) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _running_sequences(stack) == 0


def test_n_choices_are_distinct_under_sampling_and_reproducible_with_seed(client):
    def choices(seed):
        completion = client.chat.completions.create(
            model=DEFAULT_CHAT_MODEL,
            messages=[{"role": "user", "content": "Invent a name for a cat."}],
            temperature=1.0,
            max_tokens=12,
            n=3,
            seed=seed,
        )
        assert [c.index for c in completion.choices] == [0, 1, 2]
        assert 3 <= completion.usage.completion_tokens <= 36
        return [c.message.content for c in completion.choices]

    first = choices(7)
    assert len(set(first)) > 1
    assert choices(7) == first


def test_logprobs_in_openai_shape_stream_and_not(client):
    completion = client.chat.completions.create(
        model=DEFAULT_CHAT_MODEL,
        messages=CAPITAL,
        temperature=0,
        max_tokens=5,
        logprobs=True,
        top_logprobs=2,
    )
    content = completion.choices[0].logprobs.content
    assert len(content) == completion.usage.completion_tokens
    assert "".join(entry.token for entry in content).startswith("The capital")
    assert all(entry.logprob <= 0 and len(entry.top_logprobs) == 2 for entry in content)
    assert bytes(content[1].bytes).decode() == content[1].token

    chunks = list(
        client.chat.completions.create(
            model=DEFAULT_CHAT_MODEL,
            messages=CAPITAL,
            temperature=0,
            max_tokens=5,
            logprobs=True,
            stream=True,
        )
    )
    streamed = [
        e
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    assert [e.token for e in streamed] == [e.token for e in content]


def test_logit_bias_through_the_sdk(client):
    completion = client.chat.completions.create(
        model=DEFAULT_CHAT_MODEL,
        messages=CAPITAL,
        temperature=0,
        max_tokens=8,
        logit_bias={"7042": -100},
    )
    assert "Paris" not in completion.choices[0].message.content


def test_top_logprobs_without_logprobs_is_400(stack):
    response = requests.post(
        f"{stack.base_url}/v1/chat/completions",
        json={"model": DEFAULT_CHAT_MODEL, "messages": CAPITAL, "top_logprobs": 2},
        headers=stack.headers,
        timeout=10,
    )
    assert response.status_code == 400
    assert "top_logprobs" in response.json()["error"]["message"]


def test_generation_metrics_are_exported(stack, client):
    client.chat.completions.create(model=DEFAULT_CHAT_MODEL, messages=CAPITAL, max_tokens=2)
    metrics = requests.get(
        f"http://127.0.0.1:{stack.env['GENERATION_METRICS_PORT']}/metrics", timeout=10
    ).text
    for name in (
        "llmserve_generation_time_to_first_token_seconds_bucket",
        "llmserve_generation_inter_token_latency_seconds_bucket",
        "llmserve_generation_queue_time_seconds_bucket",
        "llmserve_generation_batch_size_bucket",
        "llmserve_generation_running_sequences",
        "llmserve_generation_waiting_sequences",
        "llmserve_generation_prompt_tokens_total",
        "llmserve_generation_generated_tokens_total",
    ):
        assert f"{name}{{" in metrics and f'model="{DEFAULT_CHAT_MODEL}"' in metrics, name
