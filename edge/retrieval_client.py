"""Async client of the retrieval service, returning plain dicts and dataclasses for the routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from llmserve.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc
from services.common.errors import from_rpc_error
from services.common.logs import REQUEST_ID_METADATA_KEY, request_id_var
from services.common.rpc import insecure_channel

T = TypeVar("T")


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


def _chunking(chunk_tokens: int | None, overlap_tokens: int | None):
    chunking = retrieval_pb2.ChunkSettings(chunk_tokens=chunk_tokens or 0)
    if overlap_tokens is not None:
        chunking.overlap_tokens = overlap_tokens
    return chunking


def collection_dict(collection: retrieval_pb2.Collection) -> dict:
    return {
        "name": collection.name,
        "object": "collection",
        "embedding_model": collection.embedding_model,
        "dimensions": collection.dimensions,
        "chunk_tokens": collection.chunking.chunk_tokens,
        "overlap_tokens": collection.chunking.overlap_tokens,
        "documents": collection.document_count,
        "chunks": collection.chunk_count,
        "created_at": collection.created_at_unix_ms // 1000,
    }


def file_dict(stored: retrieval_pb2.File) -> dict:
    """OpenAI's file object."""
    return {
        "id": stored.id,
        "object": "file",
        "bytes": stored.bytes,
        "created_at": stored.created_at_unix_ms // 1000,
        "filename": stored.filename,
        "purpose": stored.purpose,
        "status": "processed",
    }


class RetrievalClient:
    def __init__(self, address: str):
        self._channel = insecure_channel(address)
        self._stub = retrieval_pb2_grpc.RetrievalServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method: Callable[..., Awaitable[T]], request, timeout_s: float) -> T:
        metadata = ((REQUEST_ID_METADATA_KEY, request_id_var.get()),)
        try:
            return await method(request, timeout=timeout_s, metadata=metadata)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error

    async def retrieve(
        self,
        collection: str,
        query: str,
        limit: int | None = None,
        score_threshold: float | None = None,
        timeout_s: float = 60.0,
    ) -> Retrieved:
        request = retrieval_pb2.RetrieveRequest(
            collection=collection, query=query, limit=limit or 0
        )
        if score_threshold is not None:
            request.score_threshold = score_threshold
        response = await self._call(self._stub.Retrieve, request, timeout_s)
        return Retrieved(
            response.collection,
            [Point(p.source, p.score) for p in response.points],
            response.limit,
            response.score_threshold,
        )

    async def ingest(
        self,
        collection: str,
        filename: str,
        media_type: str,
        content: bytes | None,
        file_id: str,
        chunk_tokens: int | None,
        overlap_tokens: int | None,
        timeout_s: float,
    ) -> retrieval_pb2.IngestResponse:
        request = retrieval_pb2.IngestRequest(
            collection=collection,
            filename=filename,
            media_type=media_type,
            chunking=_chunking(chunk_tokens, overlap_tokens),
        )
        if file_id:
            request.file_id = file_id
        else:
            request.content = content or b""
        return await self._call(self._stub.Ingest, request, timeout_s)

    async def create_collection(
        self, name: str, chunk_tokens: int | None, overlap_tokens: int | None
    ) -> dict:
        request = retrieval_pb2.CreateCollectionRequest(
            name=name, chunking=_chunking(chunk_tokens, overlap_tokens)
        )
        response = await self._call(self._stub.CreateCollection, request, 30.0)
        return collection_dict(response.collection)

    async def list_collections(self) -> list[dict]:
        response = await self._call(
            self._stub.ListCollections, retrieval_pb2.ListCollectionsRequest(), 30.0
        )
        return [collection_dict(c) for c in response.collections]

    async def delete_collection(self, name: str) -> None:
        await self._call(
            self._stub.DeleteCollection, retrieval_pb2.DeleteCollectionRequest(name=name), 60.0
        )

    async def upload_file(self, filename: str, content: bytes, purpose: str) -> dict:
        request = retrieval_pb2.UploadFileRequest(
            filename=filename, content=content, purpose=purpose
        )
        response = await self._call(self._stub.UploadFile, request, 60.0)
        return file_dict(response.file)

    async def list_files(self) -> list[dict]:
        response = await self._call(self._stub.ListFiles, retrieval_pb2.ListFilesRequest(), 30.0)
        return [file_dict(f) for f in response.files]

    async def delete_file(self, file_id: str) -> None:
        await self._call(self._stub.DeleteFile, retrieval_pb2.DeleteFileRequest(id=file_id), 30.0)

    async def store_info(self) -> retrieval_pb2.GetStoreInfoResponse:
        return await self._call(self._stub.GetStoreInfo, retrieval_pb2.GetStoreInfoRequest(), 10.0)
