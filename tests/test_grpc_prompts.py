"""Generation over gRPC from a raw prompt or token ids (no chat template), Tokenize and
Detokenize both ways, and a base model (no chat template) that serves prompts only."""

from __future__ import annotations

import grpc
import pytest

from llmserve.common.v1 import common_pb2
from llmserve.generation.v1 import generation_pb2, generation_pb2_grpc
from llmserve.registry.v1 import registry_pb2, registry_pb2_grpc
from services.registry.defaults import DEFAULT_CHAT_MODEL

GREEDY = common_pb2.SamplingParams(temperature=0.0, max_tokens=8)


@pytest.fixture
async def stub(generation_server):
    async with grpc.aio.insecure_channel(generation_server[0]) as channel:
        yield generation_pb2_grpc.GenerationServiceStub(channel)


async def _generate(stub, **fields) -> list[generation_pb2.GenerateResponse]:
    request = generation_pb2.GenerateRequest(sampling=GREEDY, **fields)
    return [r async for r in stub.Generate(request)]


async def _error(stub, **fields) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _generate(stub, **fields)
    return caught.value


async def test_a_prompt_as_text_or_as_its_token_ids_gives_the_same_continuation(stub):
    prompt = "The capital of France is"
    tokenized = await stub.Tokenize(
        generation_pb2.TokenizeRequest(model=DEFAULT_CHAT_MODEL, prompt=prompt)
    )
    assert tokenized.prompt == prompt
    assert tokenized.max_model_len == 8192
    assert "".join(tokenized.token_strs).replace("Ġ", " ") == prompt
    by_text = await _generate(stub, model=DEFAULT_CHAT_MODEL, prompt=prompt)
    by_ids = await _generate(
        stub, model=DEFAULT_CHAT_MODEL, prompt_token_ids=list(tokenized.token_ids)
    )
    text = "".join(r.text for r in by_text)
    assert text == "".join(r.text for r in by_ids)
    assert "Paris" in text
    assert by_text[-1].usage.prompt_tokens == len(tokenized.token_ids)
    assert by_text[-1].finish_reason == generation_pb2.FINISH_REASON_LENGTH
    # No chat markers: the prompt was continued as it is.
    assert "<|im_start|>" not in text


async def test_detokenize_is_the_inverse_of_tokenize(stub):
    text = "Grüße aus 서울 — 東京"
    tokenized = await stub.Tokenize(
        generation_pb2.TokenizeRequest(model=DEFAULT_CHAT_MODEL, prompt=text)
    )
    back = await stub.Detokenize(
        generation_pb2.DetokenizeRequest(model=DEFAULT_CHAT_MODEL, token_ids=tokenized.token_ids)
    )
    assert back.text == text
    chat = await stub.Tokenize(
        generation_pb2.TokenizeRequest(
            model=DEFAULT_CHAT_MODEL,
            messages=[common_pb2.ChatMessage(role="user", content="Hi")],
            add_generation_prompt=False,
        )
    )
    assert chat.prompt.endswith("<|im_start|>user\nHi<|im_end|>\n")
    kept = await stub.Detokenize(
        generation_pb2.DetokenizeRequest(model=DEFAULT_CHAT_MODEL, token_ids=chat.token_ids)
    )
    skipped = await stub.Detokenize(
        generation_pb2.DetokenizeRequest(
            model=DEFAULT_CHAT_MODEL, token_ids=chat.token_ids, skip_special_tokens=True
        )
    )
    assert kept.text == chat.prompt
    assert "<|im_start|>" not in skipped.text


async def test_bad_prompts_are_invalid_argument(stub):
    user = [common_pb2.ChatMessage(role="user", content="Hi")]
    cases = {
        "none": {},
        "two": {"prompt": "Hi", "messages": user},
        "empty": {"prompt": ""},
        "outside the vocabulary": {"prompt_token_ids": [1, 10**9]},
    }
    for name, fields in cases.items():
        error = await _error(stub, model=DEFAULT_CHAT_MODEL, **fields)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, name
    long = await _error(stub, model=DEFAULT_CHAT_MODEL, prompt_token_ids=[28] * 9000)
    assert long.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context length" in long.details()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Detokenize(
            generation_pb2.DetokenizeRequest(model=DEFAULT_CHAT_MODEL, token_ids=[10**9])
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_base_model_serves_prompts_and_refuses_chat_saying_why(
    registry_server, stub, tiny_base_checkpoint
):
    async with grpc.aio.insecure_channel(registry_server) as channel:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        request = registry_pb2.ImportModelRequest(
            name="tiny-base", kind=registry_pb2.MODEL_KIND_CHAT, source=str(tiny_base_checkpoint)
        )
        imported = [r async for r in registry.ImportModel(request)][-1].model
    assert imported.chat_template == ""
    completed = await _generate(stub, model="tiny-base", prompt="Once upon a time")
    assert completed[-1].usage.completion_tokens == 8
    refused = await _error(
        stub, model="tiny-base", messages=[common_pb2.ChatMessage(role="user", content="Hi")]
    )
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "has no chat template" in refused.details()
    assert "/v1/completions" in refused.details()
