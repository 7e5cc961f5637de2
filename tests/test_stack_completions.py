"""Legacy completions, /tokenize and /detokenize on the whole stack, driven by the `openai`
SDK and `requests`; a base model (no chat template) served through it."""

from __future__ import annotations

import time

import grpc
import openai
import pytest
import requests

from llmserve.registry.v1 import registry_pb2, registry_pb2_grpc
from services.registry.defaults import DEFAULT_CHAT_MODEL
from tests.gateway import route

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.api_key, max_retries=0)


def test_sdk_completion_continues_the_prompt_without_a_chat_template(client):
    completion = client.completions.create(
        model=DEFAULT_CHAT_MODEL, prompt=PROMPT, max_tokens=6, temperature=0
    )
    assert completion.object == "text_completion"
    assert completion.id.startswith("cmpl-")
    [choice] = completion.choices
    assert choice.text.strip() and "<|im_start|>" not in choice.text
    assert choice.finish_reason == "length"
    assert completion.usage.completion_tokens == 6
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 6


def test_sdk_streamed_completion_matches_the_whole_one(client):
    whole = client.completions.create(
        model=DEFAULT_CHAT_MODEL, prompt=PROMPT, max_tokens=8, temperature=0
    )
    chunks = list(
        client.completions.create(
            model=DEFAULT_CHAT_MODEL,
            prompt=PROMPT,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len({c.id for c in chunks}) == 1
    *texts, finish, usage_only = chunks
    assert "".join(c.choices[0].text for c in texts) == whole.choices[0].text
    assert all(c.choices[0].finish_reason is None for c in texts)
    assert finish.choices[0].finish_reason == "length"
    assert finish.usage.completion_tokens == 8
    assert usage_only.choices == [] and usage_only.usage.total_tokens == whole.usage.total_tokens


def test_prompts_as_lists_token_ids_and_n_are_choices_in_order(stack, client):
    tokens = stack.http.post(
        f"{stack.base_url}/tokenize", json={"model": DEFAULT_CHAT_MODEL, "prompt": PROMPT}
    ).json()["tokens"]
    completion = client.completions.create(
        model=DEFAULT_CHAT_MODEL,
        prompt=[PROMPT, "1, 2, 3,"],
        max_tokens=4,
        temperature=0,
        n=2,
    )
    texts = [c.text for c in completion.choices]
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    assert texts[0] == texts[1] and texts[2] == texts[3] and texts[0] != texts[2]
    by_ids = client.completions.create(
        model=DEFAULT_CHAT_MODEL, prompt=[tokens, tokens], max_tokens=4, temperature=0
    )
    assert [c.text for c in by_ids.choices] == [texts[0], texts[0]]
    single = client.completions.create(
        model=DEFAULT_CHAT_MODEL, prompt=tokens, max_tokens=4, temperature=0
    )
    assert single.choices[0].text == texts[0]
    # Prompt tokens of every prompt are counted.
    assert by_ids.usage.prompt_tokens == 2 * len(tokens)
    assert completion.usage.completion_tokens == 16


def test_echo_stop_and_legacy_logprobs(client):
    echoed = client.completions.create(
        model=DEFAULT_CHAT_MODEL, prompt=PROMPT, max_tokens=4, temperature=0, echo=True
    )
    assert echoed.choices[0].text.startswith(PROMPT + " ")
    plain = client.completions.create(
        model=DEFAULT_CHAT_MODEL, prompt=PROMPT, max_tokens=4, temperature=0
    )
    word = plain.choices[0].text.split()[1]
    stopped = client.completions.create(
        model=DEFAULT_CHAT_MODEL, prompt=PROMPT, max_tokens=8, temperature=0, stop=[word]
    )
    assert stopped.choices[0].text == plain.choices[0].text[: plain.choices[0].text.index(word)]
    assert stopped.choices[0].finish_reason == "stop"
    scored = client.completions.create(
        model=DEFAULT_CHAT_MODEL, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2
    )
    logprobs = scored.choices[0].logprobs
    assert "".join(logprobs.tokens) == scored.choices[0].text
    assert len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 4
    assert all(lp <= 0 for lp in logprobs.token_logprobs)
    assert logprobs.text_offset[0] == 0
    assert logprobs.text_offset[1] == len(logprobs.tokens[0])
    # Greedy: the chosen token is the likeliest alternative.
    for token, logprob, top in zip(
        logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True
    ):
        assert 2 <= len(top) <= 3 and top[token] == logprob == max(top.values())


def test_streamed_echo_comes_first(client):
    chunks = list(
        client.completions.create(
            model=DEFAULT_CHAT_MODEL,
            prompt=PROMPT,
            max_tokens=3,
            temperature=0,
            echo=True,
            stream=True,
        )
    )
    assert chunks[0].choices[0].text == PROMPT


@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        ({"suffix": "end"}, None, "suffix"),
        ({"best_of": 3}, None, "best_of"),
        ({"echo": True, "logprobs": 1}, None, "echo"),
        ({"prompt": []}, "prompt", "not empty"),
        ({"prompt": [[]]}, "prompt", "prompt"),
        ({"prompt": ["a", 1]}, "prompt", "prompt"),
        ({"prompt": [10**9]}, "prompt", "vocabulary"),
        ({"prompt": ["x"] * 65}, "prompt", "at most"),
        ({"prompt": ["x"] * 8, "n": 9}, None, "at most"),
        ({"logprobs": 21}, "logprobs", ""),
        ({"prompt": "word " * 9000}, "prompt", "context length"),
    ],
)
def test_bad_completions_are_400_naming_the_field(stack, fields, param, says):
    body = {"model": DEFAULT_CHAT_MODEL, "prompt": PROMPT, "max_tokens": 2, **fields}
    response = stack.http.post(f"{stack.base_url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param:
        assert error["param"] == param
    assert says in error["message"]


def test_tokenize_and_detokenize_in_vllms_shapes(stack):
    base, http = stack.base_url, stack.http
    plain = http.post(
        f"{base}/tokenize",
        json={"model": DEFAULT_CHAT_MODEL, "prompt": "Hello world", "return_token_strs": True},
    ).json()
    assert plain["count"] == len(plain["tokens"]) == 2
    assert plain["token_strs"] == ["Hello", "Ġworld"]
    assert plain["max_model_len"] == 8192
    chat = http.post(
        f"{base}/tokenize",
        json={"model": DEFAULT_CHAT_MODEL, "messages": [{"role": "user", "content": "Hi"}]},
    ).json()
    assert chat["token_strs"] is None
    rendered = http.post(
        f"{base}/detokenize", json={"model": DEFAULT_CHAT_MODEL, "tokens": chat["tokens"]}
    ).json()
    assert rendered["prompt"].endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    without = http.post(
        f"{base}/tokenize",
        json={
            "model": DEFAULT_CHAT_MODEL,
            "messages": [{"role": "user", "content": "Hi"}],
            "add_generation_prompt": False,
        },
    ).json()
    assert without["count"] < chat["count"]
    # The model may be left out: the key's serving decides it.
    implicit = http.post(f"{base}/tokenize", json={"prompt": "Hello world"}).json()
    assert implicit["tokens"] == plain["tokens"]
    both = http.post(
        f"{base}/tokenize", json={"prompt": "x", "messages": [{"role": "user", "content": "x"}]}
    )
    assert both.status_code == 400
    outside = http.post(f"{base}/detokenize", json={"tokens": [10**9]})
    assert outside.status_code == 400 and outside.json()["error"]["param"] == "tokens"


def test_completions_and_tokenize_on_a_serving_route(stack, admin):
    serving = admin.create_serving(name="completions-serving")
    key = admin.issue_key(serving["id"])
    sdk = openai.OpenAI(base_url=route(stack, serving["id"]), api_key=key["secret"], max_retries=0)
    completion = sdk.completions.create(
        model="anything", prompt=PROMPT, max_tokens=3, temperature=0
    )
    assert completion.model == DEFAULT_CHAT_MODEL
    tokenized = requests.post(
        f"{route(stack, serving['id'])[: -len('/v1')]}/tokenize",
        json={"prompt": "Hello world"},
        headers={"Authorization": f"Bearer {key['secret']}"},
        timeout=30,
    )
    assert tokenized.status_code == 200 and tokenized.json()["count"] == 2


def test_a_base_model_serves_completions_and_refuses_chat(stack, client, tiny_base_checkpoint):
    with grpc.insecure_channel(f"127.0.0.1:{stack.env['REGISTRY_PORT']}") as channel:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        request = registry_pb2.ImportModelRequest(
            name="tiny-base", kind=registry_pb2.MODEL_KIND_CHAT, source=str(tiny_base_checkpoint)
        )
        *_, done = registry.ImportModel(request, timeout=300)
    assert done.model.chat_template == ""
    time.sleep(1.2)  # the edge trusts its model list for EDGE_CATALOG_TTL_S (1 s here)
    admin_client = openai.OpenAI(
        base_url=f"{stack.base_url}/v1", api_key=stack.admin_token, max_retries=0
    )
    completion = admin_client.completions.create(
        model="tiny-base", prompt="Once upon a time", max_tokens=5
    )
    assert completion.usage.completion_tokens == 5
    with pytest.raises(openai.BadRequestError) as refused:
        admin_client.chat.completions.create(
            model="tiny-base", messages=[{"role": "user", "content": "Hi"}], max_tokens=5
        )
    assert "has no chat template" in refused.value.message
    assert "/v1/completions" in refused.value.message
