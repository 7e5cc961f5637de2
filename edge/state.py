"""What request handlers share: settings, backend clients, caches, limiter and usage log."""

from __future__ import annotations

from dataclasses import dataclass

from edge.auth import KeyVerifier
from edge.catalog import Catalog
from edge.generation_client import GenerationClient
from edge.limits import RateLimiter
from edge.settings import EdgeSettings
from edge.usage import UsageRecorder
from services.common.registry_client import RegistryClient


@dataclass
class EdgeState:
    settings: EdgeSettings
    registry: RegistryClient
    generation: GenerationClient
    catalog: Catalog
    keys: KeyVerifier
    limiter: RateLimiter
    usage: UsageRecorder

    @classmethod
    def connect(cls, settings: EdgeSettings) -> EdgeState:
        registry = RegistryClient(settings.registry_addr)
        usage = UsageRecorder(registry, settings.usage_flush_interval_s, settings.usage_batch_size)
        usage.start()
        return cls(
            settings=settings,
            registry=registry,
            generation=GenerationClient(settings.generation_addr),
            catalog=Catalog(registry, settings.catalog_ttl_s),
            keys=KeyVerifier(registry, settings.key_cache_ttl_s),
            limiter=RateLimiter(),
            usage=usage,
        )

    async def close(self) -> None:
        await self.usage.close()
        await self.generation.close()
        await self.registry.close()
