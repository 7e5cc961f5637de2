"""What request handlers share: settings, backend clients, caches, limiter and usage log."""

from __future__ import annotations

from dataclasses import dataclass

from edge.auth import KeyVerifier
from edge.catalog import Catalog
from edge.generation_client import GenerationClient
from edge.limits import Limiter, LocalLimiter
from edge.rag import Grounding
from edge.redis_limits import RedisLimiter
from edge.retrieval_client import RetrievalClient
from edge.settings import EdgeSettings
from edge.usage import UsageRecorder
from services.common.embedding_client import EmbeddingClient
from services.common.registry_client import RegistryClient


@dataclass
class EdgeState:
    settings: EdgeSettings
    registry: RegistryClient
    generation: GenerationClient
    catalog: Catalog
    keys: KeyVerifier
    limiter: Limiter
    usage: UsageRecorder
    embedding: EmbeddingClient
    retrieval: RetrievalClient
    grounding: Grounding

    @classmethod
    def connect(cls, settings: EdgeSettings) -> EdgeState:
        registry = RegistryClient(settings.registry_addr)
        usage = UsageRecorder(
            registry,
            settings.outbox_path,
            settings.usage_flush_interval_s,
            settings.usage_batch_size,
        )
        usage.start()
        generation = GenerationClient(settings.generation_addr)
        retrieval = RetrievalClient(settings.retrieval_addr)
        return cls(
            settings=settings,
            registry=registry,
            generation=generation,
            catalog=Catalog(registry, settings.catalog_ttl_s),
            keys=KeyVerifier(registry, settings.key_cache_ttl_s),
            limiter=limiter_for(settings),
            usage=usage,
            embedding=EmbeddingClient(settings.embedding_addr),
            retrieval=retrieval,
            grounding=Grounding(retrieval, generation, settings.rag_timeout_s),
        )

    async def close(self) -> None:
        await self.usage.close()
        await self.limiter.close()
        await self.generation.close()
        await self.embedding.close()
        await self.retrieval.close()
        await self.registry.close()


def limiter_for(settings: EdgeSettings) -> Limiter:
    """Shared limits in Redis when EDGE_REDIS_URL is set, else this process's own counts."""
    if not settings.redis_url:
        return LocalLimiter()
    limiter = RedisLimiter(
        settings.redis_url,
        settings.redis_permit_ttl_s,
        settings.redis_timeout_s,
        settings.redis_retry_s,
    )
    limiter.start()
    return limiter
