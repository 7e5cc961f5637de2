"""The retrieval service's core, without gRPC: collections, ingestion and search.

Ingestion: extract text -> token-aware chunks (tokens from the embedding service) -> embed the
chunks through the embedding service -> store, all or nothing. A document's id is the SHA-256
of its bytes, so ingesting the same content twice adds nothing. Blocking store calls run in
worker threads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from services.common import tracing
from services.common.domain import now_ms
from services.common.embedding_client import EmbeddingClient
from services.common.errors import InvalidArgument, NotFound
from services.retrieval.chunking import chunk_text
from services.retrieval.database_files import DatabaseFileStore
from services.retrieval.domain import (
    Chunk,
    ChunkSettings,
    CollectionInfo,
    CollectionSpec,
    DocumentInfo,
    ScoredChunk,
    SearchMode,
    StoredChunk,
    check_collection_name,
    split_store_name,
    store_name,
)
from services.retrieval.extract import extract_text, media_type_of
from services.retrieval.files import FileStore, StoredFile
from services.retrieval.vector_store import VectorStore

logger = logging.getLogger(__name__)

# Chunks sent to the embedding service per call; it batches them further itself.
_EMBED_CALL_SIZE = 256
_DEFAULT_ALPHA = 0.5


@dataclass(frozen=True)
class RetrievalDefaults:
    collection: str = "default"
    limit: int = 5
    score_threshold: float = 0.3
    chunking: ChunkSettings = ChunkSettings(128, 24)
    embedding_model: str = "all-MiniLM-L6-v2"
    max_file_bytes: int = 32 * 1024 * 1024


@dataclass(frozen=True)
class IngestResult:
    collection: str
    document: DocumentInfo
    created: bool
    embedded_tokens: int
    embedding_model: str


@dataclass(frozen=True)
class RetrieveResult:
    collection: str
    points: list[ScoredChunk]
    limit: int
    score_threshold: float
    # Tokens of the query the embedding model saw, and which model that was.
    query_tokens: int
    embedding_model: str


@dataclass(frozen=True)
class _ModelFacts:
    dimensions: int
    max_content_tokens: int


class RetrievalCore:
    def __init__(
        self,
        store: VectorStore,
        files: FileStore | DatabaseFileStore,
        embedding: EmbeddingClient,
        defaults: RetrievalDefaults = RetrievalDefaults(),
    ):
        self.store = store
        self.files = files
        self.defaults = defaults
        self._embedding = embedding
        self._facts: dict[str, _ModelFacts] = {}
        # Serializes collection creation, so concurrent first ingests create it once.
        self._creating = asyncio.Lock()

    async def _model_facts(self, model: str) -> _ModelFacts:
        if model not in self._facts:
            probe = await self._embedding.embed(model, ["dimension probe"])
            _, max_content = await self._embedding.tokenize(model, [])
            self._facts[model] = _ModelFacts(probe.vectors.shape[1], max_content)
        return self._facts[model]

    # Collections

    async def create_collection(
        self, tenant: int, name: str, chunk_tokens: int = 0, overlap_tokens: int | None = None
    ) -> CollectionInfo:
        spec = await self._new_spec(
            tenant, check_collection_name(name), chunk_tokens, overlap_tokens
        )
        info = await asyncio.to_thread(self.store.create_collection, spec)
        return _visible(info)

    async def _new_spec(
        self, tenant: int, name: str, chunk_tokens: int, overlap_tokens: int | None
    ) -> CollectionSpec:
        model = self.defaults.embedding_model
        facts = await self._model_facts(model)
        chunking = self._chunking(chunk_tokens, overlap_tokens, facts)
        return CollectionSpec(store_name(tenant, name), model, facts.dimensions, chunking)

    def _chunking(
        self, chunk_tokens: int, overlap_tokens: int | None, facts: _ModelFacts
    ) -> ChunkSettings:
        tokens = chunk_tokens or min(self.defaults.chunking.chunk_tokens, facts.max_content_tokens)
        overlap = (
            self.defaults.chunking.overlap_tokens if overlap_tokens is None else overlap_tokens
        )
        if tokens > facts.max_content_tokens:
            raise InvalidArgument(
                f"chunk_tokens must be at most {facts.max_content_tokens} for "
                f"{self.defaults.embedding_model}.",
                param="chunk_tokens",
            )
        if overlap >= tokens:
            raise InvalidArgument(
                "overlap_tokens must be below chunk_tokens.", param="overlap_tokens"
            )
        return ChunkSettings(tokens, overlap)

    async def list_collections(
        self, tenant: int, all_tenants: bool = False
    ) -> list[CollectionInfo]:
        infos = [_visible(c) for c in await asyncio.to_thread(self.store.list_collections)]
        return infos if all_tenants else [c for c in infos if c.tenant == tenant]

    async def delete_collection(self, tenant: int, name: str) -> None:
        stored = store_name(tenant, check_collection_name(name))
        with _unknown_as(name):
            await asyncio.to_thread(self.store.delete_collection, stored)

    async def list_chunks(
        self, tenant: int, name: str, offset: int, limit: int
    ) -> tuple[list[StoredChunk], int]:
        stored = store_name(tenant, check_collection_name(name))
        with _unknown_as(name):
            return await asyncio.to_thread(self.store.list_chunks, stored, offset, limit)

    async def _find_collection(self, stored: str) -> CollectionInfo | None:
        try:
            return await asyncio.to_thread(self.store.get_collection, stored)
        except NotFound:
            return None

    # Files

    async def upload_file(
        self, tenant: int, filename: str, content: bytes, purpose: str
    ) -> StoredFile:
        self._check_size(content)
        if not filename:
            raise InvalidArgument("`filename` is required.", param="file")
        return await asyncio.to_thread(self.files.add, tenant, filename, content, purpose)

    async def list_files(self, tenant: int, all_tenants: bool = False) -> list[StoredFile]:
        return await asyncio.to_thread(self.files.list, None if all_tenants else tenant)

    async def delete_file(self, tenant: int, file_id: str) -> None:
        await asyncio.to_thread(self.files.delete, tenant, file_id)

    def _check_size(self, content: bytes) -> None:
        if not content:
            raise InvalidArgument("The file is empty.", param="file")
        if len(content) > self.defaults.max_file_bytes:
            raise InvalidArgument(
                f"The file is larger than {self.defaults.max_file_bytes} bytes.", param="file"
            )

    # Ingestion

    async def ingest(
        self,
        tenant: int,
        collection: str,
        filename: str,
        media_type: str,
        content: bytes | None = None,
        file_id: str = "",
        chunk_tokens: int = 0,
        overlap_tokens: int | None = None,
    ) -> IngestResult:
        name = check_collection_name(collection or self.defaults.collection)
        stored_name = store_name(tenant, name)
        if file_id:
            stored, content = await asyncio.to_thread(self.files.get, tenant, file_id)
            filename = filename or stored.filename
        if content is None:
            raise InvalidArgument("Give the file's content or the id of an uploaded file.")
        self._check_size(content)
        media_type = media_type_of(filename, media_type)
        document_id = hashlib.sha256(content).hexdigest()
        existing = await self._find_collection(stored_name)
        if existing is not None:
            spec = existing.spec
            found = await asyncio.to_thread(self.store.find_document, stored_name, document_id)
            if found is not None:
                return IngestResult(name, found, False, 0, spec.embedding_model)
        else:
            # A new collection is created only once its first document is ready to store,
            # so a failed ingestion leaves nothing behind.
            spec = await self._new_spec(tenant, name, chunk_tokens, overlap_tokens)

        text = await asyncio.to_thread(extract_text, content, media_type, filename)
        (spans,), _ = await self._embedding.tokenize(spec.embedding_model, [text])
        texts = chunk_text(text, spans, spec.chunking.chunk_tokens, spec.chunking.overlap_tokens)
        vectors, tokens = await self._embed_all(spec.embedding_model, texts)
        chunks = [Chunk(i, t, v) for i, (t, v) in enumerate(zip(texts, vectors, strict=True))]
        document = DocumentInfo(document_id, filename, media_type, len(chunks), now_ms())
        async with self._creating:
            if await self._find_collection(stored_name) is None:
                await asyncio.to_thread(self.store.create_collection, spec)
        stored = await asyncio.to_thread(self.store.add_document, stored_name, document, chunks)
        logger.info(
            "ingested %s into %s: %d chunks, %d tokens", filename, stored_name, len(chunks), tokens
        )
        return IngestResult(name, stored, True, tokens, spec.embedding_model)

    async def _embed_all(self, model: str, texts: list[str]) -> tuple[np.ndarray, int]:
        vectors, tokens = [], 0
        for start in range(0, len(texts), _EMBED_CALL_SIZE):
            # Chunks fit by construction; truncation is only a guard against tokenizer quirks.
            result = await self._embedding.embed(
                model, texts[start : start + _EMBED_CALL_SIZE], truncate=True
            )
            vectors.append(_unit(result.vectors))
            tokens += result.prompt_tokens
        return np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32), tokens

    # Search

    async def retrieve(
        self,
        tenant: int,
        collection: str,
        query: str,
        limit: int = 0,
        score_threshold: float | None = None,
        mode: SearchMode = SearchMode.VECTOR,
        alpha: float | None = None,
    ) -> RetrieveResult:
        name = check_collection_name(collection or self.defaults.collection)
        if not query.strip():
            raise InvalidArgument("The query is empty.", param="messages")
        limit = limit or self.defaults.limit
        threshold = self.defaults.score_threshold if score_threshold is None else score_threshold
        alpha = _DEFAULT_ALPHA if alpha is None else alpha
        if not 0.0 <= alpha <= 1.0:
            raise InvalidArgument("alpha must be between 0 and 1.", param="alpha")
        stored_name = store_name(tenant, name)
        info = await self._find_collection(stored_name)
        if info is None:
            if name == self.defaults.collection:
                # Every tenant has a default collection; until something is ingested it is empty.
                return RetrieveResult(name, [], limit, threshold, 0, self.defaults.embedding_model)
            raise NotFound(f"The collection `{name}` does not exist.", param="collection")
        # A long question is still a question: search with its first max-tokens.
        result = await self._embedding.embed(info.spec.embedding_model, [query], truncate=True)
        with tracing.span("retrieval.search"):
            found = await asyncio.to_thread(
                self.store.search, stored_name, _unit(result.vectors)[0], query, limit, mode, alpha
            )
        points = [p for p in found if p.score >= threshold]
        return RetrieveResult(
            name, points, limit, threshold, result.prompt_tokens, info.spec.embedding_model
        )


@contextmanager
def _unknown_as(name: str) -> Iterator[None]:
    """A store's NotFound names the qualified name; the caller knows only its own."""
    try:
        yield
    except NotFound as error:
        raise NotFound(f"The collection `{name}` does not exist.", param="collection") from error


def _visible(info: CollectionInfo) -> CollectionInfo:
    """The collection as its tenant names it."""
    tenant, name = split_store_name(info.spec.name)
    return dataclasses.replace(info, spec=dataclasses.replace(info.spec, name=name), tenant=tenant)


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Cosine similarity becomes a dot product, whatever the model's own normalization."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.clip(norms, 1e-12, None)).astype(np.float32)
