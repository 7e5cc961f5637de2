"""The embedding service: its core on the real ONNX model, then over real gRPC."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from llmserve.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from services.common.errors import ERROR_CODE_KEY, InvalidArgument
from services.common.onnx_runtime import select_providers
from services.embedding.batcher import plan_batches
from services.embedding.embedder import BatcherConfig, Embedder
from services.registry.defaults import (
    DEFAULT_CHAT_MODEL,
    DEFAULT_EMBEDDING_MODEL,
    minilm_checkpoint,
)

SIMILAR = ("A man is eating food.", "A man is eating a piece of bread.")
UNRELATED = "The stock market fell sharply on Tuesday."


def test_plan_batches_sorts_by_length_and_respects_both_bounds():
    lengths = [5, 100, 6, 7, 90, 8]
    batches = plan_batches(lengths, max_size=3, max_tokens=200)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert batches[0] == [0, 2, 3]  # shortest first
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= 200
    # One input longer than the budget still gets a batch of its own.
    assert plan_batches([500], max_size=4, max_tokens=100) == [[0]]


@pytest.fixture(scope="module")
def embedder(embedding_model, chat_model):
    records = {embedding_model.name: embedding_model, chat_model.name: chat_model}

    async def lookup(name):
        return records[name]

    # Two workers, so batches are split into passes that run side by side.
    embedder = Embedder(lookup, select_providers("cpu"), 1, BatcherConfig(workers=2))
    yield embedder
    embedder.close()


async def test_similar_sentences_score_higher_than_unrelated(embedder):
    result = await embedder.embed(DEFAULT_EMBEDDING_MODEL, [*SIMILAR, UNRELATED])
    vectors = result.vectors
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert vectors[0] @ vectors[1] > 0.6
    assert vectors[0] @ vectors[2] < 0.2
    # [CLS] + 6 tokens + [SEP]
    assert result.token_counts[0] == 8
    assert result.truncated == [False] * 3


async def test_matches_pytorch_mean_pooling_reference(embedder):
    torch = pytest.importorskip("torch")
    from transformers import AutoModel, AutoTokenizer

    texts = [*SIMILAR, "서울은 한국의 수도입니다.", "word " * 50]
    ours = (await embedder.embed(DEFAULT_EMBEDDING_MODEL, texts)).vectors
    tokenizer = AutoTokenizer.from_pretrained(minilm_checkpoint())
    model = AutoModel.from_pretrained(minilm_checkpoint())
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        tokens = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    reference = torch.nn.functional.normalize((tokens * mask).sum(1) / mask.sum(1), dim=1)
    cosines = (ours * reference.numpy()).sum(axis=1)
    assert cosines.min() > 0.99999


async def test_concurrent_requests_batch_together_with_equal_results(embedder):
    texts = [
        f"Sentence number {i} is about {'cats' if i % 2 else 'the weather'}." for i in range(24)
    ]
    alone = [(await embedder.embed(DEFAULT_EMBEDDING_MODEL, [t])).vectors[0] for t in texts[:4]]
    results = await asyncio.gather(*(embedder.embed(DEFAULT_EMBEDDING_MODEL, [t]) for t in texts))
    for single, batched in zip(alone, results, strict=False):
        np.testing.assert_allclose(single, batched.vectors[0], atol=1e-5)


async def test_token_ids_embed_like_their_text(embedder):
    model = (await embedder.get(DEFAULT_EMBEDDING_MODEL)).model
    ids = model.tokenizer.encode(SIMILAR[0], add_special_tokens=False).ids
    from_text, from_ids = (await embedder.embed(DEFAULT_EMBEDDING_MODEL, [SIMILAR[0], ids])).vectors
    np.testing.assert_allclose(from_text, from_ids, atol=1e-6)
    with pytest.raises(InvalidArgument, match="outside the vocabulary"):
        await embedder.embed(DEFAULT_EMBEDDING_MODEL, [[10**7]])


async def test_overlong_inputs_are_rejected_or_truncated_as_configured(embedder, embedding_model):
    long_text = "word " * 400
    with pytest.raises(InvalidArgument) as rejected:
        await embedder.embed(DEFAULT_EMBEDDING_MODEL, ["short", long_text])
    assert rejected.value.code == "context_length_exceeded"
    assert "input[1]" in rejected.value.message

    async def lookup(name):
        return embedding_model

    truncating = Embedder(lookup, select_providers("cpu"), truncate=True)
    try:
        result = await truncating.embed(DEFAULT_EMBEDDING_MODEL, ["short", long_text])
    finally:
        truncating.close()
    assert result.truncated == [False, True]
    assert result.token_counts[1] == embedding_model.context_length == 256


async def test_dimensions_only_where_the_model_allows(embedder, embedding_model):
    same = await embedder.embed(DEFAULT_EMBEDDING_MODEL, ["hi"], dimensions=384)
    assert same.vectors.shape == (1, 384)
    with pytest.raises(InvalidArgument) as refused:
        await embedder.embed(DEFAULT_EMBEDDING_MODEL, ["hi"], dimensions=128)
    assert refused.value.param == "dimensions"

    async def lookup(name):
        return embedding_model

    matryoshka = Embedder(
        lookup, select_providers("cpu"), matryoshka_models=frozenset({DEFAULT_EMBEDDING_MODEL})
    )
    try:
        short = await matryoshka.embed(DEFAULT_EMBEDDING_MODEL, ["hi"], dimensions=128)
        with pytest.raises(InvalidArgument):
            await matryoshka.embed(DEFAULT_EMBEDDING_MODEL, ["hi"], dimensions=1000)
    finally:
        matryoshka.close()
    assert short.vectors.shape == (1, 128)
    assert np.linalg.norm(short.vectors[0]) == pytest.approx(1.0, rel=1e-5)


async def test_chat_model_is_not_an_embedding_model(embedder):
    with pytest.raises(InvalidArgument, match="not an embedding model"):
        await embedder.embed(DEFAULT_CHAT_MODEL, ["hi"])


async def test_tokenize_gives_character_spans(embedder):
    text = "서울은 한국의 수도입니다. Hello"
    (spans,), max_content = await embedder.tokenize(DEFAULT_EMBEDDING_MODEL, [text])
    assert max_content == 254
    assert len(spans.ids) == len(spans.starts) == len(spans.ends)
    # Offsets point into the original text, in characters, past the Korean ones.
    assert text[spans.starts[-1] : spans.ends[-1]] == "Hello"


# Over real gRPC


@pytest.fixture
async def stub(embedding_server):
    address, _ = embedding_server
    async with grpc.aio.insecure_channel(address) as channel:
        yield embedding_pb2_grpc.EmbeddingServiceStub(channel)


def _texts(*texts: str) -> list[embedding_pb2.EmbedInput]:
    return [embedding_pb2.EmbedInput(text=t) for t in texts]


async def test_embed_over_grpc(stub):
    response = await stub.Embed(
        embedding_pb2.EmbedRequest(model=DEFAULT_EMBEDDING_MODEL, inputs=_texts(*SIMILAR))
    )
    assert len(response.embeddings) == 2
    assert len(response.embeddings[0].values) == 384
    assert response.prompt_tokens == sum(e.token_count for e in response.embeddings) > 0
    loaded = await stub.ListLoadedModels(embedding_pb2.ListLoadedModelsRequest())
    (model,) = loaded.models
    assert (model.name, model.dimensions, model.pooling, model.normalized) == (
        DEFAULT_EMBEDDING_MODEL,
        384,
        "mean",
        True,
    )


@pytest.mark.parametrize(
    "request_kwargs,code,error_code",
    [
        ({"model": "no-such-model", "inputs": _texts("hi")}, grpc.StatusCode.NOT_FOUND, None),
        (
            {"model": DEFAULT_CHAT_MODEL, "inputs": _texts("hi")},
            grpc.StatusCode.INVALID_ARGUMENT,
            None,
        ),
        ({"model": DEFAULT_EMBEDDING_MODEL}, grpc.StatusCode.INVALID_ARGUMENT, None),
        ({"inputs": _texts("hi")}, grpc.StatusCode.INVALID_ARGUMENT, None),
        (
            {"model": DEFAULT_EMBEDDING_MODEL, "inputs": _texts("word " * 400)},
            grpc.StatusCode.INVALID_ARGUMENT,
            "context_length_exceeded",
        ),
    ],
)
async def test_bad_embed_requests_get_status_codes(stub, request_kwargs, code, error_code):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Embed(embedding_pb2.EmbedRequest(**request_kwargs))
    assert caught.value.code() is code
    if error_code:
        assert dict(list(caught.value.trailing_metadata()))[ERROR_CODE_KEY] == error_code
