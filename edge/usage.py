"""Usage records leave the request path at once and reach the registry in batches.

A batch stays buffered until the registry acknowledges it (after its commit), so a registry
crash or restart loses nothing; shutdown flushes what is left.
"""

from __future__ import annotations

import asyncio
import logging

from services.common.errors import ServiceError
from services.common.records import UsageRecord
from services.common.registry_client import RegistryClient

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 5.0


class UsageRecorder:
    def __init__(self, registry: RegistryClient, flush_interval_s: float, batch_size: int):
        self._registry = registry
        self._flush_interval_s = flush_interval_s
        self._batch_size = batch_size
        self._pending: list[UsageRecord] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def record(self, record: UsageRecord) -> None:
        self._pending.append(record)
        if len(self._pending) >= self._batch_size:
            self._wakeup.set()

    async def close(self, timeout_s: float = 10.0) -> None:
        """Stops the background task and flushes what is buffered, retrying for `timeout_s`."""
        self._closing = True
        self._wakeup.set()
        if self._task:
            try:
                await asyncio.wait_for(self._task, timeout_s)
            except TimeoutError:
                logger.error("could not deliver %d usage records before shutdown", self.pending)

    async def _run(self) -> None:
        backoff = self._flush_interval_s
        while True:
            try:
                await asyncio.wait_for(self._wakeup.wait(), backoff)
            except TimeoutError:
                pass
            self._wakeup.clear()
            try:
                while self._pending:
                    await self._flush_one_batch()
                backoff = self._flush_interval_s
            except ServiceError as error:
                backoff = min(MAX_BACKOFF_S, backoff * 2)
                logger.warning(
                    "usage write failed (%s); %d records kept, retrying in %.1fs",
                    error.message,
                    self.pending,
                    backoff,
                )
            if self._closing and not self._pending:
                return

    async def _flush_one_batch(self) -> None:
        batch = self._pending[: self._batch_size]
        await self._registry.record_usage(batch)
        # Only acknowledged records leave the buffer; new ones may have been appended meanwhile.
        del self._pending[: len(batch)]
