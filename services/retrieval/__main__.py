"""Retrieval service: python -m services.retrieval (settings from RETRIEVAL_* variables)."""

from __future__ import annotations

import asyncio
import logging

from llmserve.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc
from services.common.embedding_client import EmbeddingClient
from services.common.logs import setup_logging
from services.common.rpc import serve_until_signalled
from services.common.tracing import TracingSettings, setup_tracing
from services.retrieval.core import RetrievalCore, RetrievalDefaults
from services.retrieval.database_files import DatabaseFileStore
from services.retrieval.domain import ChunkSettings
from services.retrieval.files import FileStore
from services.retrieval.servicer import RetrievalServicer
from services.retrieval.settings import RetrievalSettings
from services.retrieval.vector_store import VectorStore

logger = logging.getLogger("services.retrieval")


def open_store(settings: RetrievalSettings) -> VectorStore:
    if settings.weaviate_url:
        from services.retrieval.weaviate_store import WeaviateStore

        return WeaviateStore(
            settings.weaviate_url,
            settings.weaviate_grpc_port,
            settings.weaviate_api_key.get_secret_value(),
        )
    from services.retrieval.embedded_store import EmbeddedStore

    return EmbeddedStore(settings.data_dir / "vectors.db")


def defaults_of(settings: RetrievalSettings) -> RetrievalDefaults:
    return RetrievalDefaults(
        collection=settings.default_collection,
        limit=settings.default_limit,
        score_threshold=settings.default_score_threshold,
        chunking=ChunkSettings(settings.chunk_tokens, settings.overlap_tokens),
        embedding_model=settings.embedding_model,
        max_file_bytes=settings.max_file_bytes,
    )


def open_files(settings: RetrievalSettings) -> FileStore | DatabaseFileStore:
    if settings.database_url.get_secret_value():
        return DatabaseFileStore(settings.database_url.get_secret_value())
    return FileStore(settings.data_dir)


async def serve(settings: RetrievalSettings) -> None:
    store = await asyncio.to_thread(open_store, settings)
    files = open_files(settings)
    embedding = EmbeddingClient(settings.embedding_addr)
    core = RetrievalCore(store, files, embedding, defaults_of(settings))

    try:
        await serve_until_signalled(
            settings,
            retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server,
            RetrievalServicer(core),
            retrieval_pb2,
            "RetrievalService",
        )
    finally:
        await embedding.close()
        files.close()
        store.close()


def main() -> None:
    settings = RetrievalSettings()
    setup_logging(settings.log_level, "retrieval")
    setup_tracing(TracingSettings(), "retrieval")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
