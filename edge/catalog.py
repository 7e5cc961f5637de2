"""The registry's models and servings as the edge sees them, cached for a short TTL."""

from __future__ import annotations

import asyncio
import time

from services.common.errors import ModelNotFound, NotFound, Unavailable
from services.common.records import ModelKind, ModelRecord, ServingRecord
from services.common.registry_client import RegistryClient


class Catalog:
    def __init__(self, registry: RegistryClient, ttl_s: float):
        self._registry = registry
        self._ttl_s = ttl_s
        self._models: dict[str, ModelRecord] = {}
        self._servings: dict[int, ServingRecord] = {}
        self._fetched_at = float("-inf")
        self._stale = False
        self._lock = asyncio.Lock()

    async def models(self) -> list[ModelRecord]:
        await self._refresh()
        return list(self._models.values())

    async def model(self, name: str, kind: ModelKind) -> ModelRecord:
        await self._refresh()
        model = self._models.get(name)
        if model is None or model.kind is not kind:
            raise ModelNotFound(name)
        return model

    async def serving(self, serving_id: int) -> ServingRecord:
        await self._refresh()
        serving = self._servings.get(serving_id)
        if serving is None:
            raise NotFound(f"The serving {serving_id} does not exist.", code="serving_not_found")
        return serving

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

    async def _refresh(self) -> None:
        if self._fresh():
            return
        async with self._lock:
            if self._fresh():
                return
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
            self._stale = False
