"""Embedding service: python -m services.embedding (settings from EMBEDDING_* variables)."""

from __future__ import annotations

import asyncio
import logging
import os

from llmserve.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from services.common.logs import setup_logging
from services.common.onnx_runtime import select_providers
from services.common.registry_client import RegistryClient
from services.common.rpc import serve_until_signalled
from services.common.settings import split_names
from services.common.tracing import TracingSettings, setup_tracing
from services.embedding.embedder import BatcherConfig, Embedder
from services.embedding.servicer import EmbeddingServicer
from services.embedding.settings import EmbeddingSettings

logger = logging.getLogger("services.embedding")


async def serve(settings: EmbeddingSettings) -> None:
    registry = RegistryClient(settings.registry_addr)
    embedder = Embedder(
        registry.get_model,
        select_providers(settings.device),
        settings.intra_op_threads,
        BatcherConfig(
            settings.max_batch_size,
            settings.max_batch_tokens,
            settings.max_wait_ms / 1000,
            settings.workers or os.cpu_count() or 1,
        ),
        truncate=settings.overlong_inputs == "truncate",
        matryoshka_models=frozenset(split_names(settings.matryoshka_models)),
    )
    for name in split_names(settings.preload_models):
        await embedder.get(name)

    try:
        await serve_until_signalled(
            settings,
            embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server,
            EmbeddingServicer(embedder),
            embedding_pb2,
            "EmbeddingService",
        )
    finally:
        embedder.close()
        await registry.close()


def main() -> None:
    settings = EmbeddingSettings()
    setup_logging(settings.log_level, "embedding")
    setup_tracing(TracingSettings(), "embedding")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
