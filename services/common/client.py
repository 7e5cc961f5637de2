"""The one pattern of every gRPC client: built from an address, typed methods, the request id
and trace context of the current task sent as metadata, failures raised as the platform's
domain errors, and domain objects (never protobuf) handed back to callers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from services.common.errors import from_rpc_error
from services.common.logs import REQUEST_ID_METADATA_KEY, request_id_var
from services.common.rpc import insecure_channel
from services.common.tracing import outgoing_metadata

Response = TypeVar("Response")


def call_metadata() -> tuple[tuple[str, str], ...]:
    return ((REQUEST_ID_METADATA_KEY, request_id_var.get()), *outgoing_metadata())


class ServiceClient:
    """Base of the services' clients; subclasses add typed methods over `_unary`/`_stream`."""

    def __init__(
        self, address: str, stub_class: Callable[[grpc.aio.Channel], Any], timeout_s: float
    ):
        self._channel = insecure_channel(address)
        self._stub = stub_class(self._channel)
        # Deadline of calls that set none of their own.
        self._timeout_s = timeout_s

    async def close(self) -> None:
        await self._channel.close()

    async def _unary(
        self,
        method: Callable[..., Awaitable[Response]],
        request,
        timeout_s: float | None = None,
    ) -> Response:
        try:
            return await method(
                request, timeout=timeout_s or self._timeout_s, metadata=call_metadata()
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error

    async def _stream(
        self, method: Callable[..., Any], request, timeout_s: float | None = None
    ) -> AsyncIterator[Any]:
        """Server-streamed responses; closing the iterator early cancels the call."""
        call = method(request, timeout=timeout_s or self._timeout_s, metadata=call_metadata())
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error
        finally:
            call.cancel()
