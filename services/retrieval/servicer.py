"""Thin gRPC adapter over the retrieval core, with the proto <-> domain converters."""

from __future__ import annotations

from llmserve.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc
from services.common.errors import InvalidArgument
from services.common.rpc import rpc_method
from services.retrieval.core import RetrievalCore
from services.retrieval.domain import ChunkSettings, CollectionInfo, DocumentInfo, SearchMode
from services.retrieval.files import StoredFile

_MODES = {
    retrieval_pb2.SEARCH_MODE_UNSPECIFIED: SearchMode.VECTOR,
    retrieval_pb2.SEARCH_MODE_VECTOR: SearchMode.VECTOR,
    retrieval_pb2.SEARCH_MODE_HYBRID: SearchMode.HYBRID,
}


def _chunking_pb(chunking: ChunkSettings) -> retrieval_pb2.ChunkSettings:
    return retrieval_pb2.ChunkSettings(
        chunk_tokens=chunking.chunk_tokens, overlap_tokens=chunking.overlap_tokens
    )


def _overlap(chunking: retrieval_pb2.ChunkSettings) -> int | None:
    return chunking.overlap_tokens if chunking.HasField("overlap_tokens") else None


def collection_pb(info: CollectionInfo) -> retrieval_pb2.Collection:
    return retrieval_pb2.Collection(
        name=info.spec.name,
        embedding_model=info.spec.embedding_model,
        dimensions=info.spec.dimensions,
        chunking=_chunking_pb(info.spec.chunking),
        document_count=info.document_count,
        chunk_count=info.chunk_count,
        created_at_unix_ms=info.created_at_unix_ms,
        tenant=info.tenant,
    )


def document_pb(document: DocumentInfo) -> retrieval_pb2.Document:
    return retrieval_pb2.Document(
        id=document.id,
        filename=document.filename,
        media_type=document.media_type,
        chunk_count=document.chunk_count,
        created_at_unix_ms=document.created_at_unix_ms,
    )


def file_pb(stored: StoredFile) -> retrieval_pb2.File:
    return retrieval_pb2.File(
        id=stored.id,
        filename=stored.filename,
        bytes=stored.bytes,
        purpose=stored.purpose,
        created_at_unix_ms=stored.created_at_unix_ms,
        tenant=stored.tenant,
    )


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServiceServicer):
    def __init__(self, core: RetrievalCore):
        self._core = core

    @rpc_method
    async def Retrieve(self, request, context):
        result = await self._core.retrieve(
            request.tenant,
            request.collection,
            request.query,
            request.limit,
            request.score_threshold if request.HasField("score_threshold") else None,
            _MODES[request.mode],
            request.alpha if request.HasField("alpha") else None,
        )
        return retrieval_pb2.RetrieveResponse(
            points=[
                retrieval_pb2.Point(
                    source=p.text,
                    score=p.score,
                    document_id=p.document_id,
                    filename=p.filename,
                    chunk_index=p.index,
                )
                for p in result.points
            ],
            limit=result.limit,
            score_threshold=result.score_threshold,
            collection=result.collection,
            query_tokens=result.query_tokens,
            embedding_model=result.embedding_model,
        )

    @rpc_method
    async def Ingest(self, request, context):
        source = request.WhichOneof("source")
        if source is None:
            raise InvalidArgument("Give `content` or `file_id`.", param="file")
        result = await self._core.ingest(
            request.tenant,
            request.collection,
            request.filename,
            request.media_type,
            content=request.content if source == "content" else None,
            file_id=request.file_id,
            chunk_tokens=request.chunking.chunk_tokens,
            overlap_tokens=_overlap(request.chunking),
        )
        return retrieval_pb2.IngestResponse(
            document=document_pb(result.document),
            created=result.created,
            collection=result.collection,
            embedded_tokens=result.embedded_tokens,
            embedding_model=result.embedding_model,
        )

    @rpc_method
    async def CreateCollection(self, request, context):
        info = await self._core.create_collection(
            request.tenant, request.name, request.chunking.chunk_tokens, _overlap(request.chunking)
        )
        return retrieval_pb2.CreateCollectionResponse(collection=collection_pb(info))

    @rpc_method
    async def ListCollections(self, request, context):
        collections = await self._core.list_collections(request.tenant, request.all_tenants)
        return retrieval_pb2.ListCollectionsResponse(
            collections=[collection_pb(c) for c in collections]
        )

    @rpc_method
    async def ListChunks(self, request, context):
        chunks, total = await self._core.list_chunks(
            request.tenant, request.collection, request.offset, request.limit or 100
        )
        return retrieval_pb2.ListChunksResponse(
            chunks=[
                retrieval_pb2.StoredChunk(
                    text=c.text, document_id=c.document_id, filename=c.filename, index=c.index
                )
                for c in chunks
            ],
            total=total,
        )

    @rpc_method
    async def DeleteCollection(self, request, context):
        await self._core.delete_collection(request.tenant, request.name)
        return retrieval_pb2.DeleteCollectionResponse()

    @rpc_method
    async def UploadFile(self, request, context):
        stored = await self._core.upload_file(
            request.tenant, request.filename, request.content, request.purpose
        )
        return retrieval_pb2.UploadFileResponse(file=file_pb(stored))

    @rpc_method
    async def ListFiles(self, request, context):
        files = await self._core.list_files(request.tenant, request.all_tenants)
        return retrieval_pb2.ListFilesResponse(files=[file_pb(f) for f in files])

    @rpc_method
    async def DeleteFile(self, request, context):
        await self._core.delete_file(request.tenant, request.id)
        return retrieval_pb2.DeleteFileResponse()

    @rpc_method
    async def GetStoreInfo(self, request, context):
        store, defaults = self._core.store, self._core.defaults
        return retrieval_pb2.GetStoreInfoResponse(
            kind=store.kind,
            location=store.location,
            default_collection=defaults.collection,
            default_limit=defaults.limit,
            default_score_threshold=defaults.score_threshold,
            embedding_model=defaults.embedding_model,
            default_chunking=_chunking_pb(defaults.chunking),
        )
