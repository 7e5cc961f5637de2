"""Async client of the retrieval service. Every call acts in one tenant's namespace (the
caller's serving; 0 for the shared one) and hands back domain objects."""

from __future__ import annotations

from dataclasses import dataclass

from llmserve.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc
from services.common.client import ServiceClient


@dataclass(frozen=True)
class Point:
    source: str
    score: float


@dataclass(frozen=True)
class Retrieved:
    collection: str
    points: list[Point]
    limit: int
    score_threshold: float
    # Tokens of the query the embedding model saw, and which model that was.
    query_tokens: int
    embedding_model: str


@dataclass(frozen=True)
class Collection:
    name: str
    tenant: int
    embedding_model: str
    dimensions: int
    chunk_tokens: int
    overlap_tokens: int
    documents: int
    chunks: int
    created_at_unix_ms: int

    @classmethod
    def from_pb(cls, pb: retrieval_pb2.Collection) -> Collection:
        return cls(
            pb.name,
            pb.tenant,
            pb.embedding_model,
            pb.dimensions,
            pb.chunking.chunk_tokens,
            pb.chunking.overlap_tokens,
            pb.document_count,
            pb.chunk_count,
            pb.created_at_unix_ms,
        )


@dataclass(frozen=True)
class StoredChunk:
    text: str
    document_id: str
    filename: str
    index: int


@dataclass(frozen=True)
class ChunkPage:
    chunks: list[StoredChunk]
    # Chunks in the whole collection.
    total: int


@dataclass(frozen=True)
class StoredFile:
    id: str
    tenant: int
    filename: str
    bytes: int
    purpose: str
    created_at_unix_ms: int

    @classmethod
    def from_pb(cls, pb: retrieval_pb2.File) -> StoredFile:
        return cls(pb.id, pb.tenant, pb.filename, pb.bytes, pb.purpose, pb.created_at_unix_ms)


@dataclass(frozen=True)
class Ingested:
    collection: str
    created: bool
    document_id: str
    filename: str
    media_type: str
    chunks: int
    embedded_tokens: int
    embedding_model: str


@dataclass(frozen=True)
class StoreInfo:
    kind: str
    location: str
    default_collection: str
    default_limit: int
    default_score_threshold: float
    embedding_model: str
    chunk_tokens: int
    overlap_tokens: int


def _chunking(chunk_tokens: int | None, overlap_tokens: int | None):
    chunking = retrieval_pb2.ChunkSettings(chunk_tokens=chunk_tokens or 0)
    if overlap_tokens is not None:
        chunking.overlap_tokens = overlap_tokens
    return chunking


class RetrievalClient(ServiceClient):
    def __init__(self, address: str, timeout_s: float = 60.0):
        super().__init__(address, retrieval_pb2_grpc.RetrievalServiceStub, timeout_s)

    async def retrieve(
        self,
        tenant: int,
        collection: str,
        query: str,
        limit: int | None = None,
        score_threshold: float | None = None,
        timeout_s: float | None = None,
    ) -> Retrieved:
        request = retrieval_pb2.RetrieveRequest(
            tenant=tenant, collection=collection, query=query, limit=limit or 0
        )
        if score_threshold is not None:
            request.score_threshold = score_threshold
        response = await self._unary(self._stub.Retrieve, request, timeout_s)
        return Retrieved(
            response.collection,
            [Point(p.source, p.score) for p in response.points],
            response.limit,
            response.score_threshold,
            response.query_tokens,
            response.embedding_model,
        )

    async def ingest(
        self,
        tenant: int,
        collection: str,
        filename: str,
        media_type: str,
        content: bytes | None,
        file_id: str,
        chunk_tokens: int | None,
        overlap_tokens: int | None,
        timeout_s: float | None = None,
    ) -> Ingested:
        request = retrieval_pb2.IngestRequest(
            tenant=tenant,
            collection=collection,
            filename=filename,
            media_type=media_type,
            chunking=_chunking(chunk_tokens, overlap_tokens),
        )
        if file_id:
            request.file_id = file_id
        else:
            request.content = content or b""
        response = await self._unary(self._stub.Ingest, request, timeout_s)
        document = response.document
        return Ingested(
            response.collection,
            response.created,
            document.id,
            document.filename,
            document.media_type,
            document.chunk_count,
            response.embedded_tokens,
            response.embedding_model,
        )

    async def create_collection(
        self, tenant: int, name: str, chunk_tokens: int | None, overlap_tokens: int | None
    ) -> Collection:
        request = retrieval_pb2.CreateCollectionRequest(
            tenant=tenant, name=name, chunking=_chunking(chunk_tokens, overlap_tokens)
        )
        return Collection.from_pb(
            (await self._unary(self._stub.CreateCollection, request)).collection
        )

    async def list_collections(self, tenant: int, all_tenants: bool = False) -> list[Collection]:
        request = retrieval_pb2.ListCollectionsRequest(tenant=tenant, all_tenants=all_tenants)
        response = await self._unary(self._stub.ListCollections, request)
        return [Collection.from_pb(c) for c in response.collections]

    async def list_chunks(self, tenant: int, name: str, offset: int, limit: int) -> ChunkPage:
        request = retrieval_pb2.ListChunksRequest(
            tenant=tenant, collection=name, offset=offset, limit=limit
        )
        response = await self._unary(self._stub.ListChunks, request)
        chunks = [StoredChunk(c.text, c.document_id, c.filename, c.index) for c in response.chunks]
        return ChunkPage(chunks, response.total)

    async def delete_collection(self, tenant: int, name: str) -> None:
        request = retrieval_pb2.DeleteCollectionRequest(tenant=tenant, name=name)
        await self._unary(self._stub.DeleteCollection, request)

    async def upload_file(
        self, tenant: int, filename: str, content: bytes, purpose: str
    ) -> StoredFile:
        request = retrieval_pb2.UploadFileRequest(
            tenant=tenant, filename=filename, content=content, purpose=purpose
        )
        return StoredFile.from_pb((await self._unary(self._stub.UploadFile, request)).file)

    async def list_files(self, tenant: int, all_tenants: bool = False) -> list[StoredFile]:
        request = retrieval_pb2.ListFilesRequest(tenant=tenant, all_tenants=all_tenants)
        response = await self._unary(self._stub.ListFiles, request)
        return [StoredFile.from_pb(f) for f in response.files]

    async def delete_file(self, tenant: int, file_id: str) -> None:
        request = retrieval_pb2.DeleteFileRequest(tenant=tenant, id=file_id)
        await self._unary(self._stub.DeleteFile, request)

    async def store_info(self) -> StoreInfo:
        response = await self._unary(
            self._stub.GetStoreInfo, retrieval_pb2.GetStoreInfoRequest(), 10.0
        )
        return StoreInfo(
            response.kind,
            response.location,
            response.default_collection,
            response.default_limit,
            response.default_score_threshold,
            response.embedding_model,
            response.default_chunking.chunk_tokens,
            response.default_chunking.overlap_tokens,
        )
