"""The services over real gRPC on free ports: streams, status codes, cancellation, health."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from llmserve.common.v1 import common_pb2
from llmserve.generation.v1 import generation_pb2, generation_pb2_grpc
from llmserve.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.errors import ERROR_CODE_KEY
from services.registry.defaults import DEFAULT_CHAT_MODEL, smollm2_gguf


def user(text: str) -> list[common_pb2.ChatMessage]:
    return [common_pb2.ChatMessage(role="user", content=text)]


@pytest.fixture
async def generation(generation_server):
    address, pool = generation_server
    async with grpc.aio.insecure_channel(address) as channel:
        yield generation_pb2_grpc.GenerationServiceStub(channel), pool


@pytest.fixture
async def registry(registry_server):
    async with grpc.aio.insecure_channel(registry_server) as channel:
        yield registry_pb2_grpc.RegistryServiceStub(channel)


async def test_generate_streams_text_then_finish_and_usage(generation):
    stub, _ = generation
    responses = [
        r
        async for r in stub.Generate(
            generation_pb2.GenerateRequest(
                model=DEFAULT_CHAT_MODEL,
                messages=user("What is the capital of France?"),
                sampling=common_pb2.SamplingParams(temperature=0.0),
            )
        )
    ]
    assert "Paris" in "".join(r.text for r in responses)
    assert all(r.finish_reason == 0 for r in responses[:-1])
    last = responses[-1]
    assert last.finish_reason == generation_pb2.FINISH_REASON_STOP
    assert last.usage.completion_tokens == sum(len(r.token_ids) for r in responses)
    assert last.usage.prompt_tokens > 10


async def _error(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    return caught.value


async def test_bad_requests_get_status_codes(generation):
    stub, _ = generation
    empty = await _error(stub.Generate(generation_pb2.GenerateRequest(model=DEFAULT_CHAT_MODEL)))
    assert empty.code() is grpc.StatusCode.INVALID_ARGUMENT

    unknown = await _error(
        stub.Generate(generation_pb2.GenerateRequest(model="no-such-model", messages=user("hi")))
    )
    assert unknown.code() is grpc.StatusCode.NOT_FOUND
    assert dict(list(unknown.trailing_metadata()))[ERROR_CODE_KEY] == "model_not_found"

    too_long = await _error(
        stub.Generate(
            generation_pb2.GenerateRequest(model=DEFAULT_CHAT_MODEL, messages=user("hello " * 9000))
        )
    )
    assert too_long.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert dict(list(too_long.trailing_metadata()))[ERROR_CODE_KEY] == "context_length_exceeded"
    assert "maximum context length is 8192" in too_long.details()


async def test_cancelled_call_leaves_the_batch(generation):
    stub, pool = generation
    call = stub.Generate(
        generation_pb2.GenerateRequest(
            model=DEFAULT_CHAT_MODEL,
            messages=user("Write a very long essay about the history of Rome."),
            sampling=common_pb2.SamplingParams(temperature=0.0, max_tokens=1000),
        )
    )
    await call.read()
    await call.read()
    engine = pool.loaded[DEFAULT_CHAT_MODEL].engine
    assert engine.running == 1
    call.cancel()
    for _ in range(100):
        if engine.running == 0:
            break
        await asyncio.sleep(0.05)
    assert engine.running == 0


async def test_tokenize_renders_the_chat_template(generation):
    stub, _ = generation
    response = await stub.Tokenize(
        generation_pb2.TokenizeRequest(model=DEFAULT_CHAT_MODEL, messages=user("Hi there"))
    )
    assert response.prompt.endswith("<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n")
    assert len(response.token_ids) > 5


async def test_registry_import_streams_progress_and_delete(registry):
    responses = [
        r
        async for r in registry.ImportModel(
            registry_pb2.ImportModelRequest(
                name="smol-copy", kind=registry_pb2.MODEL_KIND_CHAT, source=str(smollm2_gguf())
            )
        )
    ]
    assert responses[0].progress == 0.0
    assert responses[-1].model.name == "smol-copy"
    assert responses[-1].model.context_length == 8192

    listed = await registry.ListModels(registry_pb2.ListModelsRequest())
    assert {"smol-copy", DEFAULT_CHAT_MODEL} <= {m.name for m in listed.models}

    with pytest.raises(grpc.aio.AioRpcError) as duplicate:
        async for _ in registry.ImportModel(
            registry_pb2.ImportModelRequest(
                name="smol-copy", kind=registry_pb2.MODEL_KIND_CHAT, source=str(smollm2_gguf())
            )
        ):
            pass
    assert duplicate.value.code() is grpc.StatusCode.ALREADY_EXISTS

    await registry.DeleteModel(registry_pb2.DeleteModelRequest(name="smol-copy"))
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await registry.GetModel(registry_pb2.GetModelRequest(name="smol-copy"))
    assert gone.value.code() is grpc.StatusCode.NOT_FOUND

    with pytest.raises(grpc.aio.AioRpcError) as missing_source:
        async for _ in registry.ImportModel(
            registry_pb2.ImportModelRequest(
                name="x", kind=registry_pb2.MODEL_KIND_CHAT, source="/no/such/file.gguf"
            )
        ):
            pass
    assert missing_source.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_servings_over_grpc(registry):
    created = await registry.CreateServing(
        registry_pb2.CreateServingRequest(name="team-a", model=DEFAULT_CHAT_MODEL)
    )
    assert created.serving.id > 0
    fetched = await registry.GetServing(registry_pb2.GetServingRequest(id=created.serving.id))
    assert fetched.serving.model == DEFAULT_CHAT_MODEL
    with pytest.raises(grpc.aio.AioRpcError) as unknown_model:
        await registry.CreateServing(registry_pb2.CreateServingRequest(name="b", model="nope"))
    assert unknown_model.value.code() is grpc.StatusCode.NOT_FOUND


async def test_health_and_reflection(registry_server):
    async with grpc.aio.insecure_channel(registry_server) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="llmserve.registry.v1.RegistryService")
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = [s.name async for r in responses for s in r.list_services_response.service]
        assert "llmserve.registry.v1.RegistryService" in names
