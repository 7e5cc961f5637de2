"""/v1/embeddings on the whole stack, driven by the official openai SDK and requests."""

from __future__ import annotations

import numpy as np
import openai
import pytest

from services.registry.defaults import DEFAULT_CHAT_MODEL, DEFAULT_EMBEDDING_MODEL


@pytest.fixture(scope="module")
def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.api_key, max_retries=0)


def test_sdk_embeddings_float_and_base64_agree(client):
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "Stocks fell."]
    as_float = client.embeddings.create(
        model=DEFAULT_EMBEDDING_MODEL, input=texts, encoding_format="float"
    )
    # The SDK asks for base64 by default and decodes it itself.
    as_base64 = client.embeddings.create(model=DEFAULT_EMBEDDING_MODEL, input=texts)
    floats = np.array([d.embedding for d in as_float.data])
    decoded = np.array([d.embedding for d in as_base64.data])
    assert floats.shape == decoded.shape == (3, 384)
    np.testing.assert_allclose(floats, decoded, atol=1e-6)
    assert [d.index for d in as_float.data] == [0, 1, 2]
    assert as_float.model == DEFAULT_EMBEDDING_MODEL
    assert as_float.usage.prompt_tokens == as_float.usage.total_tokens > 10
    assert floats[0] @ floats[1] > floats[0] @ floats[2]


def test_string_and_token_id_inputs(client, stack):
    one = client.embeddings.create(model=DEFAULT_EMBEDDING_MODEL, input="hello world")
    assert len(one.data) == 1
    # "hello world" in the model's own vocabulary.
    ids = [7592, 2088]
    by_ids = client.embeddings.create(model=DEFAULT_EMBEDDING_MODEL, input=ids)
    np.testing.assert_allclose(one.data[0].embedding, by_ids.data[0].embedding, atol=1e-5)
    lists = client.embeddings.create(model=DEFAULT_EMBEDDING_MODEL, input=[ids, ids[:1]])
    assert len(lists.data) == 2
    assert lists.usage.prompt_tokens == 4 + 3


def test_dimensions_are_refused_for_a_model_without_them(client):
    same = client.embeddings.create(model=DEFAULT_EMBEDDING_MODEL, input="hi", dimensions=384)
    assert len(same.data[0].embedding) == 384
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=DEFAULT_EMBEDDING_MODEL, input="hi", dimensions=64)
    assert refused.value.param == "dimensions"


@pytest.mark.parametrize(
    "body,status,param,code",
    [
        ({"model": DEFAULT_EMBEDDING_MODEL}, 400, "input", None),
        ({"model": DEFAULT_EMBEDDING_MODEL, "input": []}, 400, "input", None),
        ({"model": DEFAULT_EMBEDDING_MODEL, "input": ""}, 400, "input", None),
        ({"model": DEFAULT_EMBEDDING_MODEL, "input": ["a", 1]}, 400, "input", None),
        ({"model": DEFAULT_EMBEDDING_MODEL, "input": [-1]}, 400, "input", None),
        (
            {"model": DEFAULT_EMBEDDING_MODEL, "input": "hi", "encoding_format": "int8"},
            400,
            "encoding_format",
            None,
        ),
        (
            {"model": DEFAULT_EMBEDDING_MODEL, "input": "hi", "dimensions": 0},
            400,
            "dimensions",
            None,
        ),
        (
            {"model": DEFAULT_EMBEDDING_MODEL, "input": "word " * 400},
            400,
            "input",
            "context_length_exceeded",
        ),
        ({"model": "text-embedding-3-small", "input": "hi"}, 404, "model", "model_not_found"),
        # A chat model is not an embedding model.
        ({"model": DEFAULT_CHAT_MODEL, "input": "hi"}, 404, "model", "model_not_found"),
    ],
)
def test_bad_embedding_requests_get_openai_envelopes(stack, body, status, param, code):
    response = stack.http.post(f"{stack.base_url}/v1/embeddings", json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code)
