"""The registry's models as the edge sees them, cached for a short TTL."""

from __future__ import annotations

import asyncio
import time

from services.common.errors import ModelNotFound
from services.common.records import ModelKind, ModelRecord
from services.common.registry_client import RegistryClient


class ModelCatalog:
    def __init__(self, registry: RegistryClient, ttl_s: float):
        self._registry = registry
        self._ttl_s = ttl_s
        self._models: dict[str, ModelRecord] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def models(self) -> list[ModelRecord]:
        await self._refresh()
        return list(self._models.values())

    async def resolve(self, name: str, kind: ModelKind) -> ModelRecord:
        await self._refresh()
        model = self._models.get(name)
        if model is None or model.kind is not kind:
            raise ModelNotFound(name)
        return model

    async def _refresh(self) -> None:
        if time.monotonic() - self._fetched_at < self._ttl_s:
            return
        async with self._lock:
            if time.monotonic() - self._fetched_at < self._ttl_s:
                return
            models = await self._registry.list_models()
            self._models = {m.name: m for m in models}
            self._fetched_at = time.monotonic()
