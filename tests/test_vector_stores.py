"""The VectorStore contract, run against each backend: the embedded store always, Weaviate
when WEAVIATE_URL names a live server (e.g. http://127.0.0.1:8080)."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

from services.common.errors import AlreadyExists, NotFound
from services.retrieval.domain import Chunk, ChunkSettings, CollectionSpec, DocumentInfo, SearchMode
from services.retrieval.embedded_store import EmbeddedStore
from services.retrieval.weaviate_store import _public_url

WEAVIATE_URL = os.environ.get("WEAVIATE_URL", "")


@pytest.fixture(params=["embedded", "weaviate"])
def open_store(request, tmp_path):
    """Opens the backend afresh each call (a new process would see the same)."""
    if request.param == "embedded":
        yield lambda: EmbeddedStore(tmp_path / "vectors.db")
        return
    if not WEAVIATE_URL:
        pytest.skip("needs a live Weaviate server: set WEAVIATE_URL, e.g. http://127.0.0.1:8080")
    from services.retrieval.weaviate_store import WeaviateStore

    yield lambda: WeaviateStore(
        WEAVIATE_URL,
        int(os.environ.get("WEAVIATE_GRPC_PORT", "0")),
        os.environ.get("WEAVIATE_API_KEY", ""),
    )


def _unit_rows(count: int, dim: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_store_contract(open_store):
    name = f"contract_{uuid.uuid4().hex[:8]}"
    spec = CollectionSpec(name, "m", 8, ChunkSettings(10, 2))
    vectors = _unit_rows(50, 8, seed=1)
    store = open_store()
    store.create_collection(spec)
    try:
        with pytest.raises(AlreadyExists):
            store.create_collection(spec)
        for doc in range(5):
            chunks = [
                Chunk(i, f"doc{doc} chunk{i} word{doc * 10 + i}", vectors[doc * 10 + i])
                for i in range(10)
            ]
            document = DocumentInfo(f"d{doc}", f"f{doc}.txt", "text/plain", 0, 1)
            store.add_document(name, document, chunks)
        assert store.find_document(name, "d3").chunk_count == 10
        assert store.find_document(name, "nope") is None
        # The same id again stores nothing.
        again = store.add_document(name, DocumentInfo("d0", "other.txt", "text/plain", 0, 2), [])
        assert (again.filename, again.chunk_count) == ("f0.txt", 10)
        store.close()

        store = open_store()
        (info,) = [c for c in store.list_collections() if c.spec.name == name]
        assert (info.document_count, info.chunk_count, info.spec) == (5, 50, spec)
        query = vectors[23] + 0.01 * vectors[7]
        query /= np.linalg.norm(query)
        found = store.search(name, query, "", 3, SearchMode.VECTOR, 0.5)
        exact = np.argsort(-(vectors @ query))[:3]
        assert [p.text for p in found] == [f"doc{i // 10} chunk{i % 10} word{i}" for i in exact]
        assert found[0].score == pytest.approx(float(vectors[23] @ query), abs=1e-4)
        assert (found[0].document_id, found[0].filename, found[0].index) == ("d2", "f2.txt", 3)
        # Listed in stored order, a page at a time.
        page, total = store.list_chunks(name, 12, 3)
        assert total == 50
        assert [(c.text, c.document_id, c.filename, c.index) for c in page] == [
            (f"doc1 chunk{i} word{10 + i}", "d1", "f1.txt", i) for i in (2, 3, 4)
        ]
        # Hybrid: a keyword only one chunk holds lifts it to the top despite a poor vector.
        hybrid = store.search(name, vectors[0], "word42", 3, SearchMode.HYBRID, 0.3)
        assert hybrid[0].text == "doc4 chunk2 word42"
    finally:
        store.delete_collection(name)
    with pytest.raises(NotFound):
        store.search(name, vectors[0], "", 3, SearchMode.VECTOR, 0.5)
    with pytest.raises(NotFound):
        store.delete_collection(name)
    with pytest.raises(NotFound):
        store.list_chunks(name, 0, 10)
    store.close()
    reopened = open_store()
    assert name not in [c.spec.name for c in reopened.list_collections()]
    reopened.close()


def test_weaviate_location_never_shows_credentials():
    assert _public_url("https://admin:s3cret@weaviate.internal:8443/") == (
        "https://weaviate.internal:8443/"
    )
    assert _public_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
