"""OpenTelemetry traces: one trace per request, from the edge through gRPC metadata (W3C
`traceparent`) into every service, exported over OTLP/gRPC.

Off unless OTEL_EXPORTER_OTLP_ENDPOINT is set (`setup_tracing`, from each process's __main__).
While off, every hook below is one check of a module variable: no span objects, no metadata,
no parsing (bench/tracing_overhead.py measures it). The tracer provider is this module's own,
not OpenTelemetry's global one, so a test can switch tracing on and off within one process.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator

from opentelemetry import context as otel_context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic_settings import BaseSettings, SettingsConfigDict

_provider: TracerProvider | None = None
_tracer: Tracer | None = None
_propagator = TraceContextTextMapPropagator()


class TracingSettings(BaseSettings):
    """OpenTelemetry's own variable, without a service prefix (one collector for the stack)."""

    model_config = SettingsConfigDict(extra="ignore")

    # OTLP/gRPC collector, e.g. http://127.0.0.1:4317; empty turns tracing off.
    otel_exporter_otlp_endpoint: str = ""


def setup_tracing(settings: TracingSettings, service: str) -> None:
    """Exports this process's spans, as `service`, when an endpoint is configured."""
    if not settings.otel_exporter_otlp_endpoint:
        return
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPSpanExporter(endpoint=settings.otel_exporter_otlp_endpoint)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    enable(provider)


def enable(provider: TracerProvider) -> None:
    global _provider, _tracer
    _provider, _tracer = provider, provider.get_tracer("llmserve")


def disable() -> None:
    global _provider, _tracer
    _provider, _tracer = None, None


def flush() -> None:
    """Exports the spans still batched; for a process that may exit without running atexit
    handlers (uvicorn re-raises SIGTERM after its shutdown)."""
    if _provider is not None:
        _provider.force_flush()


def enabled() -> bool:
    return _tracer is not None


def outgoing_metadata() -> tuple[tuple[str, str], ...]:
    """The current trace context as gRPC metadata (nothing while tracing is off)."""
    if _tracer is None:
        return ()
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return tuple(carrier.items())


@contextlib.contextmanager
def server_span(name: str, metadata: Iterable[tuple[str, str]]) -> Iterator[Span | None]:
    """A span for one incoming call, child of the trace context its caller sent (if any), and
    current while the block runs; None while tracing is off."""
    if _tracer is None:
        yield None
        return
    parent = _propagator.extract(dict(metadata))
    with _tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER) as span:
        yield span


@contextlib.contextmanager
def span(name: str) -> Iterator[None]:
    """A span of one part of the current work, under the current span (nothing while off)."""
    if _tracer is None:
        yield
        return
    with _tracer.start_as_current_span(name):
        yield


class Phases:
    """Consecutive phases of one piece of work (queue wait, prefill, decode) as sibling spans
    under the span current when it was made; may be driven from another thread."""

    def __init__(self, tracer: Tracer, first: str):
        self._tracer = tracer
        self._parent = otel_context.get_current()
        self._lock = threading.Lock()
        self._span: Span | None = tracer.start_span(first, context=self._parent)

    def next(self, name: str) -> None:
        with self._lock:
            if self._span is not None:
                self._span.end()
                self._span = self._tracer.start_span(name, context=self._parent)

    def end(self) -> None:
        """Ends the current phase; later `next` calls are ignored."""
        with self._lock:
            if self._span is not None:
                self._span.end()
                self._span = None


class _NoPhases:
    def next(self, name: str) -> None:
        pass

    def end(self) -> None:
        pass


_NO_PHASES = _NoPhases()


def phases(first: str) -> Phases | _NoPhases:
    """Starts the first phase (a no-op object while tracing is off)."""
    return _NO_PHASES if _tracer is None else Phases(_tracer, first)
