"""What request handlers share: settings and the clients of the backend services."""

from __future__ import annotations

from dataclasses import dataclass

from edge.generation_client import GenerationClient
from edge.model_catalog import ModelCatalog
from edge.rag import Grounding
from edge.retrieval_client import RetrievalClient
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
    retrieval: RetrievalClient
    grounding: Grounding

    @classmethod
    def connect(cls, settings: EdgeSettings) -> EdgeState:
        registry = RegistryClient(settings.registry_addr)
        generation = GenerationClient(settings.generation_addr)
        retrieval = RetrievalClient(settings.retrieval_addr)
        return cls(
            settings=settings,
            registry=registry,
            generation=generation,
            catalog=ModelCatalog(registry, settings.model_cache_ttl_s),
            embedding=EmbeddingClient(settings.embedding_addr),
            retrieval=retrieval,
            grounding=Grounding(retrieval, generation, registry, settings.rag_timeout_s),
        )

    async def close(self) -> None:
        await self.generation.close()
        await self.embedding.close()
        await self.retrieval.close()
        await self.registry.close()
