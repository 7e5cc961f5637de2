"""Usage records go to the edge's on-disk outbox before the response completes, and reach the
registry from there in batches.

`record` returns once the record is committed to the outbox (edge.outbox), and request
tracking awaits it before the last byte of a response is sent, so a kill -9 of the edge loses
no record of a finished request. A background task ships the oldest records and deletes them
only after the registry acknowledged them (after its commit); a restarted edge ships what its
predecessor left. A crash between the acknowledgement and the delete resends a batch, which
the registry ignores: usage is idempotent by request id there.

The outbox's disk I/O runs on one thread of its own, never on the event loop: a slow disk then
delays the requests being settled, not every stream this edge serves. Records that arrive
while a write is under way are committed together in the next one (group commit), so under
load a request costs a share of one commit and one thread hand-off, not one of each.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edge.outbox import UsageOutbox
from services.common.errors import ServiceError
from services.common.records import UsageRecord
from services.common.registry_client import RegistryClient

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 5.0


class UsageRecorder:
    def __init__(
        self, registry: RegistryClient, outbox_path: Path, flush_interval_s: float, batch_size: int
    ):
        self._registry = registry
        self._flush_interval_s = flush_interval_s
        self._batch_size = batch_size
        self._outbox = UsageOutbox(outbox_path)
        self._disk = ThreadPoolExecutor(1, thread_name_prefix="usage-outbox")
        # Records in the outbox, those a previous run left included.
        self._pending = self._outbox.count()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None
        # Records waiting for the next commit, each with the future its request awaits.
        self._unwritten: list[tuple[UsageRecord, asyncio.Future]] = []
        self._to_write = asyncio.Event()
        self._writer: asyncio.Task | None = None

    @property
    def pending(self) -> int:
        return self._pending

    def start(self) -> None:
        if self._pending:
            logger.info("shipping %d usage records left in the outbox", self._pending)
            self._wakeup.set()
        self._task = asyncio.create_task(self._run())
        self._writer = asyncio.create_task(self._write())

    async def record(self, record: UsageRecord) -> None:
        """Returns once `record` is on disk."""
        written = asyncio.get_running_loop().create_future()
        self._unwritten.append((record, written))
        self._to_write.set()
        # Shielded: a cancelled request still leaves its record.
        await asyncio.shield(written)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Writes what is queued, then stops shipping after it shipped what it could within
        `timeout_s`; the rest stays in the outbox for the next start."""
        self._closing = True
        self._to_write.set()
        self._wakeup.set()
        if self._writer:
            await self._writer
        if self._task:
            try:
                await asyncio.wait_for(self._task, timeout_s)
            except TimeoutError:
                logger.warning("%d usage records stay in the outbox until restart", self.pending)
        await self._on_disk(self._outbox.close)
        self._disk.shutdown()

    def _on_disk(self, function, *args) -> asyncio.Future:
        return asyncio.get_running_loop().run_in_executor(self._disk, function, *args)

    async def _write(self) -> None:
        """Commits the queued records, all of them at once, until closing empties the queue."""
        while self._unwritten or not self._closing:
            if not self._unwritten:
                await self._to_write.wait()
                self._to_write.clear()
                continue
            batch, self._unwritten = self._unwritten, []
            try:
                await self._on_disk(self._outbox.add_all, [record for record, _ in batch])
            except Exception as error:  # noqa: BLE001 - each waiting request fails with it
                logger.exception("could not write %d usage records to the outbox", len(batch))
                for _, written in batch:
                    written.set_exception(error)
                continue
            for _, written in batch:
                written.set_result(None)
            self._pending += len(batch)
            if self._pending >= self._batch_size:
                self._wakeup.set()

    async def _run(self) -> None:
        backoff = self._flush_interval_s
        while True:
            try:
                await asyncio.wait_for(self._wakeup.wait(), backoff)
            except TimeoutError:
                pass
            self._wakeup.clear()
            try:
                while self._pending and await self._ship_one_batch():
                    pass
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

    async def _ship_one_batch(self) -> int:
        """Ships the oldest records; returns how many (0: the outbox is empty)."""
        last, batch = await self._on_disk(self._outbox.oldest, self._batch_size)
        if batch:
            await self._registry.record_usage(batch)
            # Only acknowledged records leave the outbox; newer ones have higher numbers.
            await self._on_disk(self._outbox.delete_through, last)
            self._pending -= len(batch)
        return len(batch)
