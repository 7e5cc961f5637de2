"""The registry's models and servings as the edge sees them, cached for a short TTL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from services.common.errors import ModelNotFound, NotFound, Unavailable
from services.common.records import ModelKind, ModelRecord, ServingRecord
from services.common.registry_client import RegistryClient

T = TypeVar("T")


class Catalog:
    def __init__(self, registry: RegistryClient, ttl_s: float):
        self._registry = registry
        self._ttl_s = ttl_s
        self._models: dict[str, ModelRecord] = {}
        self._servings: dict[int, ServingRecord] = {}
        self._fetched_at = float("-inf")
        self._fetch_began_at = float("-inf")
        self._stale = False
        self._lock = asyncio.Lock()

    async def models(self) -> list[ModelRecord]:
        await self._refresh()
        return list(self._models.values())

    async def model(self, name: str, kind: ModelKind) -> ModelRecord:
        model = await self._find(lambda: self._models.get(name))
        if model is None or model.kind is not kind:
            raise ModelNotFound(name)
        return model

    async def serving(self, serving_id: int) -> ServingRecord:
        serving = await self._find(lambda: self._servings.get(serving_id))
        if serving is None:
            raise NotFound(f"The serving {serving_id} does not exist.", code="serving_not_found")
        return serving

    async def _find(self, lookup: Callable[[], T | None]) -> T | None:
        """A cached record, or one created since the last fetch (through the registry's CLI or
        another edge): a miss fetches again, once, unless a fetch began after the miss."""
        missed_at = time.monotonic()
        await self._refresh()
        found = lookup()
        if found is None:
            await self._refresh(newer_than=missed_at)
            found = lookup()
        return found

    async def serving_or_none(self, serving_id: int | None) -> ServingRecord | None:
        return None if serving_id is None else await self.serving(serving_id)

    async def servings_of(self, model: str) -> list[ServingRecord]:
        await self._refresh()
        return [s for s in self._servings.values() if s.model == model]

    def invalidate(self) -> None:
        """Refresh on next use, e.g. after an admin change through this edge."""
        self._stale = True

    def _fresh(self) -> bool:
        return not self._stale and time.monotonic() - self._fetched_at < self._ttl_s

    async def _refresh(self, newer_than: float | None = None) -> None:
        """Fetches when the cache is stale, or (newer_than) unless a fetch began after then."""

        def current() -> bool:
            if newer_than is not None:
                return self._fetch_began_at >= newer_than
            return self._fresh()

        if current():
            return
        async with self._lock:
            if current():
                return
            began = time.monotonic()
            try:
                models, servings = await asyncio.gather(
                    self._registry.list_models(), self._registry.list_servings()
                )
            except Unavailable:
                # Registry down: serve what we knew, if we knew anything.
                if self._fetched_at == float("-inf"):
                    raise
                return
            self._models = {m.name: m for m in models}
            self._servings = {s.id: s for s in servings}
            self._fetched_at = time.monotonic()
            self._fetch_began_at = began
            self._stale = False
