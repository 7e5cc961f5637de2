"""Batches concurrent embedding requests into shared forward passes.

A single worker thread per model takes waiting inputs (from any number of requests), waits a
moment for more while the batch is not full, sorts them by length so padding stays small,
and splits them into forward passes bounded by a padded-token budget, spread over `workers`
threads that share the session (on CPU, passes side by side on one thread each use the cores
better than one pass over several threads). The event loop only queues inputs and awaits
their futures, so no ONNX Runtime call ever runs on it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from services.common.errors import Internal, Unavailable
from services.embedding.model import EmbeddingModel

logger = logging.getLogger(__name__)


@dataclass
class _Item:
    ids: list[int]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop

    def resolve(self, value: np.ndarray | Exception) -> None:
        def settle() -> None:
            if self.future.done():  # the request was cancelled meanwhile
                return
            if isinstance(value, Exception):
                self.future.set_exception(value)
            else:
                self.future.set_result(value)

        self.loop.call_soon_threadsafe(settle)


def plan_batches(lengths: list[int], max_size: int, max_tokens: int) -> list[list[int]]:
    """Splits input indices, shortest first, into batches of at most `max_size` inputs whose
    padded size (count x longest) stays within `max_tokens` (a lone long input always fits)."""
    batches: list[list[int]] = []
    current: list[int] = []
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        padded = lengths[index] * (len(current) + 1)
        if current and (len(current) == max_size or padded > max_tokens):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


class EmbeddingBatcher:
    def __init__(
        self,
        model: EmbeddingModel,
        max_batch_size: int = 32,
        max_batch_tokens: int = 16384,
        max_wait_s: float = 0.002,
        workers: int = 1,
    ):
        self.model = model
        self.workers = workers
        # One round takes enough inputs to give every worker a full pass.
        self._capacity = max_batch_size * workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="embedding-forward")
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self._waiting: collections.deque[_Item] = collections.deque()
        self._wakeup = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="embedding-batcher", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def embed(self, inputs: list[list[int]]) -> np.ndarray:
        """Embeds prepared inputs (special tokens included): [len(inputs), dimensions]."""
        loop = asyncio.get_running_loop()
        items = [_Item(ids, loop.create_future(), loop) for ids in inputs]
        with self._wakeup:
            if self._stopping:
                raise Unavailable("The embedding service is shutting down.")
            self._waiting.extend(items)
            self._wakeup.notify()
        try:
            return np.stack(await asyncio.gather(*(item.future for item in items)))
        finally:
            for item in items:
                item.future.cancel()

    def close(self) -> None:
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        self._thread.join()
        self._pool.shutdown()

    # Worker thread

    def _take(self) -> list[_Item] | None:
        with self._wakeup:
            while not self._stopping and not self._waiting:
                self._wakeup.wait()
            # A short wait lets requests arriving together share a forward pass.
            deadline = time.monotonic() + self.max_wait_s
            while not self._stopping and len(self._waiting) < self._capacity:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wakeup.wait(remaining)
            if self._stopping:
                return None
            taken = []
            while self._waiting and len(taken) < self._capacity:
                item = self._waiting.popleft()
                if not item.future.done():
                    taken.append(item)
            return taken

    def _run(self) -> None:
        while (items := self._take()) is not None:
            lengths = [len(item.ids) for item in items]
            # Enough passes to give every worker one.
            size = min(self.max_batch_size, -(-len(items) // self.workers))
            batches = plan_batches(lengths, size, self.max_batch_tokens)
            list(self._pool.map(self._forward, [[items[i] for i in b] for b in batches]))
        for item in self._waiting:
            item.resolve(Unavailable("The embedding service shut down."))

    def _forward(self, members: list[_Item]) -> None:
        try:
            vectors = self.model.forward([item.ids for item in members])
        except Exception as error:  # noqa: BLE001 - every waiting request must hear of it
            logger.exception("embedding forward pass failed")
            failure = Internal(f"Embedding failed: {type(error).__name__}")
            for item in members:
                item.resolve(failure)
            return
        for item, vector in zip(members, vectors, strict=True):
            item.resolve(vector)
