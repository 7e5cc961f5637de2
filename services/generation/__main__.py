"""Generation service: python -m services.generation (settings from GENERATION_* variables)."""

from __future__ import annotations

import asyncio
import logging

import prometheus_client

from llmserve.generation.v1 import generation_pb2, generation_pb2_grpc
from services.common.logs import setup_logging
from services.common.onnx_runtime import select_providers
from services.common.registry_client import RegistryClient
from services.common.rpc import serve_until_signalled
from services.common.settings import split_names
from services.common.tracing import TracingSettings, setup_tracing
from services.generation.allocator import keep_freed_buffers
from services.generation.model_pool import ModelPool
from services.generation.servicer import GenerationServicer
from services.generation.settings import GenerationSettings

logger = logging.getLogger("services.generation")


async def serve(settings: GenerationSettings) -> None:
    registry = RegistryClient(settings.registry_addr)
    pool = ModelPool(
        registry.get_model,
        select_providers(settings.device),
        settings.intra_op_threads,
        settings.kv_slots,
        settings.max_prefill_tokens,
        settings.max_waiting,
        metrics_enabled=settings.metrics_port > 0,
        weights=settings.weights,
        prefix_cache_bytes=settings.prefix_cache_mb * 2**20,
        kv_context=settings.kv_context,
        spin_us=settings.spin_us,
        kv_cache=settings.kv_cache,
    )
    if settings.metrics_port:
        prometheus_client.start_http_server(settings.metrics_port, addr=settings.host)
    for name in split_names(settings.preload_models):
        await pool.get(name)

    try:
        await serve_until_signalled(
            settings,
            generation_pb2_grpc.add_GenerationServiceServicer_to_server,
            GenerationServicer(pool),
            generation_pb2,
            "GenerationService",
        )
    finally:
        pool.close()
        await registry.close()


def main() -> None:
    settings = GenerationSettings()
    setup_logging(settings.log_level, "generation")
    setup_tracing(TracingSettings(), "generation")
    keep_freed_buffers()
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
