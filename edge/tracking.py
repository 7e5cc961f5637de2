"""One request's bookkeeping: its rate-limit permit and its usage record, settled exactly once."""

from __future__ import annotations

import asyncio
import time

from edge.auth import Access
from edge.errors import status_and_envelope
from edge.generation_client import Delta
from edge.limits import Permit
from edge.protocol import usage_dict
from edge.usage import UsageRecorder
from services.common.domain import now_ms
from services.common.errors import Cancelled, ServiceError
from services.common.records import UsageRecord, UsageStatus


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
        access: Access,
        request_id: str,
        endpoint: str,
    ):
        self._recorder = recorder
        self._permit = permit
        self._access = access
        self._request_id = request_id
        self._endpoint = endpoint
        self._created_at_unix_ms = now_ms()
        self._started = time.monotonic()
        self._first_token_at: float | None = None
        self._settled = False
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

    def settle(self, error: BaseException | None = None) -> None:
        if self._settled:
            return
        self._settled = True
        self._permit.finish(self.prompt_tokens + self.completion_tokens)
        ttft = self._first_token_at - self._started if self._first_token_at else 0.0
        self._recorder.record(
            UsageRecord(
                request_id=self._request_id,
                created_at_unix_ms=self._created_at_unix_ms,
                serving_id=self._access.serving_id,
                model=self._access.model.name,
                api_key_id=self._access.key.id if self._access.key else "",
                user_id=self._access.user_id,
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
                latency_ms=int((time.monotonic() - self._started) * 1000),
                ttft_ms=int(ttft * 1000),
                status=status_of(error),
                blocked=self.blocked,
                endpoint=self._endpoint,
            )
        )
