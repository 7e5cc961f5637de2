"""What request handlers share: settings and the clients of the backend services."""

from __future__ import annotations

from dataclasses import dataclass

from edge.generation_client import GenerationClient
from edge.model_catalog import ModelCatalog
from edge.settings import EdgeSettings
from services.common.embedding_client import EmbeddingClient
from services.common.registry_client import RegistryClient


@dataclass
class EdgeState:
    settings: EdgeSettings
    registry: RegistryClient
    generation: GenerationClient
    catalog: ModelCatalog
    embedding: EmbeddingClient

    @classmethod
    def connect(cls, settings: EdgeSettings) -> EdgeState:
        registry = RegistryClient(settings.registry_addr)
        return cls(
            settings=settings,
            registry=registry,
            generation=GenerationClient(settings.generation_addr),
            catalog=ModelCatalog(registry, settings.model_cache_ttl_s),
            embedding=EmbeddingClient(settings.embedding_addr),
        )

    async def close(self) -> None:
        await self.generation.close()
        await self.embedding.close()
        await self.registry.close()
