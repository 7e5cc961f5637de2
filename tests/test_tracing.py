"""OpenTelemetry traces across services: the edge app in-process (ASGI) in front of the suite's
real registry, generation, embedding and retrieval gRPC servers, with the SDK's in-memory
exporter seeing every process's spans (all of them run in this one)."""

from __future__ import annotations

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from edge.app import build_app
from edge.settings import EdgeSettings
from services.common import tracing
from services.registry.defaults import DEFAULT_CHAT_MODEL
from tests.documents import CITY_FILES
from tests.edges import EdgeProcess, eventually

COLLECTION = "traced"


@pytest.fixture
def exported():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    yield exporter
    tracing.disable()


async def test_a_grounded_chat_is_one_trace_from_the_edge_through_every_service(
    exported, tmp_path, registry_server, generation_server, embedding_server, retrieval_server
):
    settings = EdgeSettings(
        data_dir=tmp_path,
        auth_enabled=False,
        registry_addr=registry_server,
        generation_addr=generation_server[0],
        embedding_addr=embedding_server[0],
        retrieval_addr=retrieval_server[0],
    )
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            name, content = next(iter(CITY_FILES.items()))
            ingested = await client.post(
                "/v1/create/rag",
                files={"file": (name, content)},
                data={"vdb_collection_name": COLLECTION},
                timeout=120,
            )
            assert ingested.status_code == 200, ingested.text
            exported.clear()
            chat = await client.post(
                "/v1/chat/completions",
                json={
                    "model": DEFAULT_CHAT_MODEL,
                    "messages": [{"role": "user", "content": "Who designed the bridge?"}],
                    "max_tokens": 2,
                    "vdb_collection_name": COLLECTION,
                },
                timeout=120,
            )
            assert chat.status_code == 200, chat.text

    # Server spans end just after their last response is sent: wait for the last of them.
    wanted = {
        "POST /v1/chat/completions",
        "RetrievalServicer/Retrieve",
        "EmbeddingServicer/Embed",
        "retrieval.search",
        "GenerationServicer/Generate",
        "generation.queue",
        "generation.prefill",
        "generation.decode",
    }

    async def all_ended() -> bool:
        return wanted <= {span.name for span in exported.get_finished_spans()}

    await eventually(all_ended, f"spans {wanted}", timeout_s=10)

    (root,) = [s for s in exported.get_finished_spans() if s.name == "POST /v1/chat/completions"]
    assert root.parent is None
    assert root.attributes["http.response.status_code"] == 200
    # One trace holds every span of the request; usage is shipped in batches of many
    # requests' records, by a background task of its own, outside any request's trace.
    spans = [
        s for s in exported.get_finished_spans() if s.context.trace_id == root.context.trace_id
    ]
    others = {s.name for s in exported.get_finished_spans() if s not in spans}
    assert others <= {"RegistryServicer/RecordUsage"}
    assert [s for s in spans if s.parent is None] == [root]
    by_name = {span.name: span for span in spans}

    def parent_of(name: str) -> str:
        parent_id = by_name[name].parent.span_id
        return next(span.name for span in spans if span.context.span_id == parent_id)

    assert parent_of("RetrievalServicer/Retrieve") == root.name
    # The retrieval service embeds the query: its call carries the trace on.
    assert parent_of("EmbeddingServicer/Embed") == "RetrievalServicer/Retrieve"
    assert parent_of("retrieval.search") == "RetrievalServicer/Retrieve"
    assert parent_of("GenerationServicer/Generate") == root.name
    for phase in ("generation.queue", "generation.prefill", "generation.decode"):
        assert parent_of(phase) == "GenerationServicer/Generate"
    queue, prefill, decode = (by_name[f"generation.{p}"] for p in ("queue", "prefill", "decode"))
    assert queue.end_time <= prefill.start_time and prefill.end_time <= decode.start_time


def test_tracing_off_sends_no_metadata_and_makes_no_spans():
    assert not tracing.enabled()
    assert tracing.outgoing_metadata() == ()
    with tracing.server_span(
        "call", [("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01")]
    ) as span:
        assert span is None
    # One shared object that does nothing.
    assert tracing.phases("work") is tracing.phases("other")


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: keeps (service.name, span name) of what it is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str]] = []

    async def Export(self, request, context):
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                self.spans += [(attributes["service.name"], s.name) for s in scope_spans.spans]
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_a_process_exports_its_spans_over_otlp_when_an_endpoint_is_set(tmp_path):
    collector = Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    edge = EdgeProcess(tmp_path / "edge.log", auth_enabled="false", data_dir=str(tmp_path))
    edge.env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{port}"
    try:
        # Its health checks while starting are requests like any other.
        await edge.start()
        # Exporting is batched; a stopping process sends what is left.
        await edge.stop()
    finally:
        await server.stop(0)
    assert ("edge", "GET /health") in collector.spans
