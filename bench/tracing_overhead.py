"""What tracing costs: edge chat completions per second with tracing off and on, and the cost
per request of the hooks that stay in the path while it is off.

  .venv/bin/python -m bench.tracing_overhead [--requests 1500] [--concurrency 8] [--rounds 3]

The edge app runs in-process (ASGI over httpx, auth off) in front of a real registry (a fresh
SQLite file) and a stub generation service that answers every Generate with one token at
once, so the figure is the edge's own cost per chat completion, usage tracking included. The
configurations alternate, `--rounds` times each, and the median is printed as JSON.

To compare with a commit from before tracing, run the same file with that checkout first on
the path (PYTHONPATH=<checkout>:. python bench/tracing_overhead.py): "on" and the hook timings
are then skipped, as it has no tracing module.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import timeit
from pathlib import Path

import httpx

from edge.app import build_app
from edge.settings import EdgeSettings
from llmserve.common.v1 import common_pb2
from llmserve.generation.v1 import generation_pb2, generation_pb2_grpc
from llmserve.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.records import ModelKind, ModelRecord, SourceFormat
from services.common.rpc import rpc_method, service_name, start_server
from services.registry.importer import ModelImporter
from services.registry.servicer import RegistryServicer
from services.registry.store import RegistryStore

try:
    from services.common import tracing
except ImportError:  # a checkout from before tracing
    tracing = None

MODEL = "bench-model"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


class OneTokenGeneration(generation_pb2_grpc.GenerationServiceServicer):
    @rpc_method
    async def Generate(self, request, context):
        yield generation_pb2.GenerateResponse(
            text="x",
            token_ids=[1],
            finish_reason=generation_pb2.FINISH_REASON_STOP,
            usage=common_pb2.Usage(prompt_tokens=5, completion_tokens=1),
        )


async def start_backends(data: Path):
    store = RegistryStore(data / "registry.db")
    store.add_model(
        ModelRecord(
            name=MODEL,
            kind=ModelKind.CHAT,
            source="bench",
            source_format=SourceFormat.HF_DIRECTORY,
            source_sha256="0" * 64,
            artifact_dir=str(data),
            chat_template="",
            context_length=2048,
        )
    )

    def registry(server):
        servicer = RegistryServicer(store, ModelImporter(data / "cache"))
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)
        return [service_name(registry_pb2, "RegistryService")]

    def generation(server):
        generation_pb2_grpc.add_GenerationServiceServicer_to_server(OneTokenGeneration(), server)
        return [service_name(generation_pb2, "GenerationService")]

    return await start_server("127.0.0.1:0", registry), await start_server(
        "127.0.0.1:0", generation
    )


async def requests_per_s(settings: EdgeSettings, requests: int, concurrency: int) -> float:
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:

            async def worker(count: int) -> None:
                for _ in range(count):
                    response = await client.post("/v1/chat/completions", json=BODY)
                    assert response.status_code == 200, response.text

            await worker(20)  # warm caches (catalog, channels)
            started = time.perf_counter()
            await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
            return (requests // concurrency * concurrency) / (time.perf_counter() - started)


def hooks_us() -> dict[str, float]:
    """Microseconds per call of the hooks, tracing off (against the same call without them)
    and on (spans batched to an exporter that discards them)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from services.common.client import call_metadata
    from services.common.logs import REQUEST_ID_METADATA_KEY, request_id_var

    class Discard(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    def us(statement, number: int = 100_000) -> float:
        return min(timeit.repeat(statement, number=number, repeat=5)) / number * 1e6

    def span():
        with tracing.server_span("Service/Method", ()):
            pass

    def engine_phases():
        phases = tracing.phases("generation.queue")
        phases.next("generation.prefill")
        phases.next("generation.decode")
        phases.end()

    figures = {
        "call_metadata_without_trace_us": us(
            lambda: ((REQUEST_ID_METADATA_KEY, request_id_var.get()),)
        ),
        "call_metadata_off_us": us(call_metadata),
        "server_span_off_us": us(span),
        "engine_phases_off_us_per_request": us(engine_phases),
    }
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    tracing.enable(provider)
    try:
        figures |= {
            "call_metadata_on_us": us(call_metadata, 10_000),
            "server_span_on_us": us(span, 10_000),
            "engine_phases_on_us_per_request": us(engine_phases, 10_000),
        }
    finally:
        tracing.disable()
        provider.shutdown()
    return figures


class AcknowledgingRegistry:
    async def record_usage(self, records) -> None:
        pass


async def outbox_record_us(data: Path, concurrency: int, records: int = 2000) -> float:
    """Microseconds per `UsageRecorder.record` (committed to the outbox on its thread) with
    `concurrency` requests settling at once: what settling adds since the outbox."""
    from edge.usage import UsageRecorder
    from services.common.records import UsageRecord, UsageStatus

    recorder = UsageRecorder(AcknowledgingRegistry(), data / "outbox-bench.db", 0.2, 256)
    recorder.start()
    record = UsageRecord("req", 0, 0, MODEL, "", "", 5, 1, 1, 1, UsageStatus.OK, False, "/v1")

    async def settle(count: int) -> None:
        for _ in range(count):
            await recorder.record(record)

    started = time.perf_counter()
    await asyncio.gather(*(settle(records // concurrency) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await recorder.close()
    return elapsed / (records // concurrency * concurrency) * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        registry, generation = await start_backends(Path(tmp))
        settings = EdgeSettings(
            data_dir=Path(tmp) / "edge",
            auth_enabled=False,
            registry_addr=f"127.0.0.1:{registry.port}",
            generation_addr=f"127.0.0.1:{generation.port}",
        )
        configurations = ["off", "on"] if tracing else ["off"]
        figures: dict[str, list[float]] = {name: [] for name in configurations}
        for _ in range(args.rounds):
            for name in configurations:
                if name == "on":
                    from opentelemetry.sdk.trace import TracerProvider
                    from opentelemetry.sdk.trace.export import BatchSpanProcessor
                    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
                        InMemorySpanExporter,
                    )

                    provider = TracerProvider()
                    provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
                    tracing.enable(provider)
                try:
                    rate = await requests_per_s(settings, args.requests, args.concurrency)
                finally:
                    if name == "on":
                        tracing.disable()
                figures[name].append(rate)
        await generation.stop(0)
        await registry.stop(0)
    result = {
        f"edge_chat_requests_per_s_tracing_{name}": round(statistics.median(rates), 1)
        for name, rates in figures.items()
    }
    result["rounds"] = {name: [round(r, 1) for r in rates] for name, rates in figures.items()}
    if tracing:
        result |= {name: round(value, 3) for name, value in hooks_us().items()}
        for concurrency in (1, args.concurrency):
            with tempfile.TemporaryDirectory() as tmp:
                us = await outbox_record_us(Path(tmp), concurrency)
                result[f"outbox_record_us_{concurrency}_at_once"] = round(us, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
