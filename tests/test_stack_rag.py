"""Documents, retrieval and grounded chat on the whole stack, through the node API's routes,
the official openai SDK and requests."""

from __future__ import annotations

import grpc
import openai
import pytest
import requests

from llmserve.registry.v1 import registry_pb2, registry_pb2_grpc
from services.registry.defaults import DEFAULT_CHAT_MODEL
from tests.documents import CITY_FILES

COLLECTION = "velmora"
BRIDGE_QUESTION = "Who designed the Amberline Bridge in Velmora?"


@pytest.fixture(scope="module")
def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.api_key, max_retries=0)


@pytest.fixture(scope="module")
def city(stack) -> list[dict]:
    """The city's documents ingested with /v1/create/rag (upload + chunk + embed + store)."""
    created = []
    for name, content in CITY_FILES.items():
        response = stack.http.post(
            f"{stack.base_url}/v1/create/rag",
            files={"file": (name, content)},
            data={"vdb_collection_name": COLLECTION, "chunk_capacity": "64", "chunk_overlap": "8"},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        created.append(response.json())
    return created


def test_create_rag_is_idempotent_by_content(stack, city):
    assert [d["created"] for d in city] == [True, True, True]
    assert all(d["chunks"] >= 1 and d["usage"]["prompt_tokens"] > 0 for d in city)
    again = stack.http.post(
        f"{stack.base_url}/v1/create/rag",
        files={"file": ("renamed.md", CITY_FILES["history.md"])},
        data={"vdb_collection_name": COLLECTION},
        timeout=60,
    ).json()
    assert again["created"] is False and again["id"] == city[0]["id"]
    collections = stack.http.get(f"{stack.base_url}/v1/collections", timeout=10).json()["data"]
    (velmora,) = [c for c in collections if c["name"] == COLLECTION]
    assert (velmora["documents"], velmora["chunk_tokens"], velmora["overlap_tokens"]) == (3, 64, 8)
    assert velmora["chunks"] == sum(d["chunks"] for d in city)


def retrieve(stack, **body) -> requests.Response:
    payload = {"messages": [{"role": "user", "content": BRIDGE_QUESTION}], **body}
    return stack.http.post(f"{stack.base_url}/v1/retrieve", json=payload, timeout=60)


def test_retrieve_in_the_node_api_shape_honours_limit_and_threshold(stack, city):
    answer = retrieve(stack, vdb_collection_name=COLLECTION, limit=2).json()
    assert set(answer) == {"points", "limit", "score_threshold"}
    assert answer["limit"] == 2 and len(answer["points"]) <= 2
    assert set(answer["points"][0]) == {"source", "score"}
    assert "Tessa Quorin" in answer["points"][0]["source"]
    # The earlier conversation is not the query: only the last user message is.
    history = retrieve(
        stack,
        vdb_collection_name=[COLLECTION],
        limit=[1],
        messages=[
            {"role": "user", "content": BRIDGE_QUESTION},
            {"role": "assistant", "content": "I don't know."},
            {"role": "user", "content": "What is the signature dish of Velmora?"},
        ],
    ).json()
    assert "smoked eel" in history["points"][0]["source"] and len(history["points"]) == 1
    strict = retrieve(stack, vdb_collection_name=COLLECTION, score_threshold=0.95).json()
    assert strict["points"] == [] and strict["score_threshold"] == pytest.approx(0.95)


def test_grounded_chat_knows_what_only_the_documents_say(client, city):
    ungrounded = client.chat.completions.create(
        model=DEFAULT_CHAT_MODEL,
        messages=[{"role": "user", "content": BRIDGE_QUESTION}],
        temperature=0,
        max_tokens=60,
    )
    assert "Quorin" not in ungrounded.choices[0].message.content
    grounded = client.chat.completions.create(
        model=DEFAULT_CHAT_MODEL,
        messages=[{"role": "user", "content": BRIDGE_QUESTION}],
        temperature=0,
        max_tokens=60,
        extra_body={"vdb_collection_name": COLLECTION, "limit": 2},
    )
    assert "Tessa Quorin" in grounded.choices[0].message.content
    # Retrieved context counts as prompt.
    assert grounded.usage.prompt_tokens > ungrounded.usage.prompt_tokens + 40


def test_a_serving_grounds_its_chats_in_its_collection(stack, city):
    with grpc.insecure_channel(f"127.0.0.1:{stack.env['REGISTRY_PORT']}") as channel:
        serving = (
            registry_pb2_grpc.RegistryServiceStub(channel)
            .CreateServing(
                registry_pb2.CreateServingRequest(
                    name="velmora-guide", model=DEFAULT_CHAT_MODEL, rag_collection=COLLECTION
                ),
                timeout=10,
            )
            .serving
        )
        secret = (
            registry_pb2_grpc.RegistryServiceStub(channel)
            .CreateApiKey(registry_pb2.CreateApiKeyRequest(serving_id=serving.id), timeout=10)
            .secret
        )
    base = f"{stack.base_url}/api/gateway/rep/serving/{serving.id}/v1"
    # A serving's collection lives in its own namespace: the dev key's `velmora` is not its.
    for name, content in CITY_FILES.items():
        response = requests.post(
            f"{base}/create/rag",
            files={"file": (name, content)},
            data={"vdb_collection_name": COLLECTION, "chunk_capacity": "64", "chunk_overlap": "8"},
            headers={"Authorization": f"Bearer {secret}"},
            timeout=120,
        )
        assert response.status_code == 200, response.text
    serving_client = openai.OpenAI(base_url=base, api_key=secret, max_retries=0)
    chunks = serving_client.chat.completions.create(
        model=DEFAULT_CHAT_MODEL,
        messages=[{"role": "user", "content": BRIDGE_QUESTION}],
        temperature=0,
        max_tokens=60,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Tessa Quorin" in text


def test_files_with_the_openai_sdk_then_ingest_by_id(stack, client):
    uploaded = client.files.create(file=("food.txt", CITY_FILES["food.txt"]), purpose="assistants")
    assert uploaded.id.startswith("file-") and uploaded.filename == "food.txt"
    assert uploaded.bytes == len(CITY_FILES["food.txt"])
    assert uploaded.id in [f.id for f in client.files.list()]
    ingested = stack.http.post(
        f"{stack.base_url}/v1/create/rag",
        data={"file_id": uploaded.id, "vdb_collection_name": "from_upload"},
        timeout=60,
    ).json()
    assert ingested["created"] and ingested["filename"] == "food.txt"
    assert client.files.delete(uploaded.id).deleted
    deleted = stack.http.delete(f"{stack.base_url}/v1/collections/from_upload", timeout=30)
    assert deleted.json() == {"name": "from_upload", "object": "collection", "deleted": True}
    names = [
        c["name"]
        for c in stack.http.get(f"{stack.base_url}/v1/collections", timeout=10).json()["data"]
    ]
    assert "from_upload" not in names


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_info_describes_models_and_vector_store(stack, method):
    info = stack.http.request(method, f"{stack.base_url}/v1/info", timeout=10).json()
    assert info["version"] == "0.1.0"
    chat = next(m for m in info["models"] if m["name"] == DEFAULT_CHAT_MODEL)
    assert "<|im_start|>" in chat["prompt_template"] and chat["context_size"] == 8192
    # SmolLM2's GGUF has no generation_config.json: the platform's defaults, bounded.
    assert chat["default_sampling"] == {
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "n_predict": 1024,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "repetition_penalty": 1.0,
    }
    store = info["vector_store"]
    assert store["kind"] == "embedded" and "location" not in store
    assert (store["collection"], store["limit"], store["score_threshold"]) == ("default", 5, 0.3)
    # Where the store lives is an operator's detail: the admin token sees it.
    admin = requests.request(
        method, f"{stack.base_url}/v1/info", headers=stack.admin_headers, timeout=10
    ).json()
    assert admin["vector_store"]["location"].endswith("vectors.db")


def _error(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_bad_document_and_retrieval_requests_get_envelopes(stack):
    base = stack.base_url
    assert _error(retrieve(stack, vdb_collection_name="nowhere"), 404)["param"] == "collection"
    assert _error(retrieve(stack, vdb_collection_name="bad name"), 400)["param"] == "collection"
    assert _error(retrieve(stack, limit=0), 400)["param"] == "limit.0"
    no_user = stack.http.post(
        f"{base}/v1/retrieve", json={"messages": [{"role": "system", "content": "x"}]}, timeout=10
    )
    assert _error(no_user, 400)["param"] == "messages"
    assert (
        _error(stack.http.post(f"{base}/v1/create/rag", data={}, timeout=10), 400)["param"]
        == "file"
    )
    png = stack.http.post(
        f"{base}/v1/create/rag", files={"file": ("a.png", b"\x89PNG")}, timeout=10
    )
    assert "supported files" in _error(png, 400)["message"]
    assert _error(stack.http.post(f"{base}/v1/files", timeout=10), 400)["param"] == "file"
    assert (
        _error(stack.http.delete(f"{base}/v1/files/file-nope", timeout=10), 404)["param"]
        == "file_id"
    )
    assert _error(stack.http.delete(f"{base}/v1/collections/nope", timeout=10), 404)
    grounded_unknown = stack.http.post(
        f"{base}/v1/chat/completions",
        json={
            "model": DEFAULT_CHAT_MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "vdb_collection_name": "nowhere",
        },
        timeout=30,
    )
    assert _error(grounded_unknown, 404)["param"] == "collection"
