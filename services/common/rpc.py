"""gRPC plumbing shared by every service: error mapping, request ids and the server lifecycle."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import signal
from collections.abc import Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.errors import ERROR_CODE_KEY, ERROR_PARAM_KEY, ServiceError
from services.common.logs import REQUEST_ID_METADATA_KEY, request_id_var
from services.common.settings import ServiceSettings
from services.common.tracing import server_span

logger = logging.getLogger(__name__)

# Chat prompts and embedding batches can be large; 64 MiB keeps them off the default 4 MiB cap.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


def _bind_request_id(context: grpc.aio.ServicerContext) -> None:
    # Each RPC runs in its own task, so setting the context variable scopes it to this call.
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_METADATA_KEY:
            request_id_var.set(value)
            return


async def _abort(context: grpc.aio.ServicerContext, error: Exception) -> None:
    if isinstance(error, ServiceError):
        trailing = tuple(
            (key, value)
            for key, value in ((ERROR_CODE_KEY, error.code), (ERROR_PARAM_KEY, error.param))
            if value
        )
        context.set_trailing_metadata(trailing)
        await context.abort(error.grpc_code, error.message)
    # Unknown failures become INTERNAL without leaking their text.
    logger.exception("unhandled error in RPC")
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


def _span_of(servicer, method: Callable, context: grpc.aio.ServicerContext):
    """The call's span, joined to its caller's trace (see services.common.tracing)."""
    return server_span(
        f"{type(servicer).__name__}/{method.__name__}", context.invocation_metadata() or ()
    )


def rpc_method(method: Callable) -> Callable:
    """Wraps a servicer method: binds the request id, traces the call and maps raised errors to
    gRPC status."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self, request, context):
            _bind_request_id(context)
            with _span_of(self, method, context):
                try:
                    async for response in method(self, request, context):
                        yield response
                except Exception as error:  # noqa: BLE001 - mapped, never swallowed
                    await _abort(context, error)

        return stream

    @functools.wraps(method)
    async def unary(self, request, context):
        _bind_request_id(context)
        with _span_of(self, method, context):
            try:
                return await method(self, request, context)
            except Exception as error:  # noqa: BLE001 - mapped, never swallowed
                await _abort(context, error)

    return unary


def service_name(pb2_module, service: str) -> str:
    return pb2_module.DESCRIPTOR.services_by_name[service].full_name


class GrpcServer:
    """A started gRPC server with health and reflection, and its graceful shutdown."""

    def __init__(self, server: grpc.aio.Server, port: int, health_servicer, names: list[str]):
        self.server = server
        self.port = port
        self.health = health_servicer
        self._names = names

    async def stop(self, grace_s: float) -> None:
        # Flip every service to NOT_SERVING first so load balancers stop sending work.
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)

    async def serve_until_signalled(self, grace_s: float) -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await stopping.wait()
        logger.info("shutting down: draining for up to %.1fs", grace_s)
        await self.stop(grace_s)


async def start_server(
    address: str, register: Callable[[grpc.aio.Server], Iterable[str]]
) -> GrpcServer:
    """Builds a server, lets `register` add servicers (returning their full names), and starts it.

    Binding port 0 picks a free port, which `GrpcServer.port` reports.
    """
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    names = list(register(server))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    port = server.add_insecure_port(address)
    await server.start()
    for name in ("", *names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    logger.info("serving %s on port %d", ", ".join(names), port)
    return GrpcServer(server, port, health_servicer, names)


def insecure_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


async def serve_until_signalled(
    settings: ServiceSettings, add_to_server: Callable, servicer, pb2_module, service: str
) -> None:
    """Serves one servicer (plus health and reflection) on the settings' host and port until
    SIGTERM or SIGINT, then drains for the settings' grace period."""

    def register(server):
        add_to_server(servicer, server)
        return [service_name(pb2_module, service)]

    server = await start_server(f"{settings.host}:{settings.port}", register)
    await server.serve_until_signalled(settings.shutdown_grace_s)
