"""One request's bookkeeping: its rate-limit permit and its usage record, settled exactly once.

Every billable route (chat, embeddings, retrieve, ingestion) is tracked the same way: limits
are checked when tracking starts, and one usage record is left when it settles.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Request

from edge.auth import Access, Caller, caller_of
from edge.errors import status_and_envelope
from edge.generation_client import Delta
from edge.limits import Limiter, Permit
from edge.protocol import usage_dict
from edge.usage import UsageRecorder
from services.common.domain import now_ms
from services.common.errors import Cancelled, ServiceError
from services.common.logs import request_id_var
from services.common.records import Limits, ServingRecord, UsageRecord, UsageStatus


def status_of(error: BaseException | None) -> UsageStatus:
    if error is None:
        return UsageStatus.OK
    if isinstance(error, asyncio.CancelledError | Cancelled):
        return UsageStatus.CANCELLED
    if isinstance(error, ServiceError) and status_and_envelope(error)[0] < 500:
        return UsageStatus.CLIENT_ERROR
    return UsageStatus.SERVER_ERROR


class RequestTracker:
    def __init__(
        self,
        recorder: UsageRecorder,
        permit: Permit,
        *,
        serving: ServingRecord | None,
        caller: Caller,
        user_id: str,
        model: str,
        request_id: str,
        endpoint: str,
    ):
        key_id = caller.key.id if caller.key else ""
        self._permit = permit
        self._recorder = recorder
        self._serving_id = serving.id if serving else 0
        self._key_id = key_id
        self._user_id = user_id
        self._request_id = request_id
        self._endpoint = endpoint
        self._created_at_unix_ms = now_ms()
        self._started = time.monotonic()
        self._first_token_at: float | None = None
        self._settled = False
        # May be learnt during the request (the embedding model of a collection).
        self.model = model
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.blocked = False

    def count(self, delta: Delta) -> None:
        """Accounts one streamed delta of any choice."""
        if self._first_token_at is None:
            self._first_token_at = time.monotonic()
        self.prompt_tokens = delta.prompt_tokens
        self.completion_tokens += delta.token_count

    def usage(self) -> dict:
        return usage_dict(self.prompt_tokens, self.completion_tokens)

    async def settle(self, error: BaseException | None = None) -> None:
        """Frees the request's permit and returns once its usage record is on disk (so before
        the response completes: callers settle before its last byte)."""
        if self._settled:
            return
        self._settled = True
        ttft = self._first_token_at - self._started if self._first_token_at else 0.0
        record = UsageRecord(
            request_id=self._request_id,
            created_at_unix_ms=self._created_at_unix_ms,
            serving_id=self._serving_id,
            model=self.model,
            api_key_id=self._key_id,
            user_id=self._user_id,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            latency_ms=int((time.monotonic() - self._started) * 1000),
            ttft_ms=int(ttft * 1000),
            status=status_of(error),
            blocked=self.blocked,
            endpoint=self._endpoint,
        )
        # The record first (what must not be lost); the permit is freed whatever happens.
        try:
            await self._recorder.record(record)
        finally:
            await self._permit.finish(self.prompt_tokens + self.completion_tokens)

    @asynccontextmanager
    async def settling(self) -> AsyncIterator[RequestTracker]:
        """Settles when the block ends, with the error that ended it, if any."""
        try:
            yield self
        except BaseException as error:
            await self.settle(error)
            raise
        await self.settle()


async def track(
    request: Request,
    endpoint: str,
    *,
    serving: ServingRecord | None,
    user_id: str,
    model: str = "",
    request_id: str = "",
) -> RequestTracker:
    """Admits a request of the route's caller under its serving's and key's limits
    (ResourceExhausted if not) and starts tracking it (see RequestTracker). Without a
    `request_id` one is made; it becomes the request id of every log line and backend call."""
    state = request.app.state.edge
    request_id = request_id or f"req-{uuid.uuid4().hex}"
    request_id_var.set(request_id)
    caller = caller_of(request)
    limiter: Limiter = state.limiter
    permit = await limiter.acquire(
        serving.limits if serving else Limits(),
        serving.id if serving else 0,
        caller.key.id if caller.key else None,
    )
    return RequestTracker(
        state.usage,
        permit,
        serving=serving,
        caller=caller,
        user_id=user_id,
        model=model,
        request_id=request_id,
        endpoint=endpoint,
    )


async def track_access(
    request: Request, endpoint: str, access: Access, request_id: str = ""
) -> RequestTracker:
    """track() for a request whose access to a model is resolved: its serving, user and model."""
    return await track(
        request,
        endpoint,
        serving=access.serving,
        user_id=access.user_id,
        model=access.model.name,
        request_id=request_id,
    )
