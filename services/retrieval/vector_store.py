"""The interface every vector store backend implements. Methods block: the core calls them
from worker threads."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from services.retrieval.domain import (
    Chunk,
    CollectionInfo,
    CollectionSpec,
    DocumentInfo,
    ScoredChunk,
    SearchMode,
    StoredChunk,
)


class VectorStore(Protocol):
    # `embedded` or `weaviate`.
    kind: str
    # Database path or server URL, for /v1/info (never a secret).
    location: str

    def create_collection(self, spec: CollectionSpec) -> CollectionInfo:
        """AlreadyExists if the name is taken."""

    def get_collection(self, name: str) -> CollectionInfo:
        """NotFound if unknown."""

    def list_collections(self) -> list[CollectionInfo]:
        """Sorted by name."""

    def delete_collection(self, name: str) -> None:
        """NotFound if unknown."""

    def find_document(self, collection: str, document_id: str) -> DocumentInfo | None: ...

    def add_document(
        self, collection: str, document: DocumentInfo, chunks: list[Chunk]
    ) -> DocumentInfo:
        """Stores a document and its chunks durably, all or nothing. When the collection
        already holds the id, stores nothing and returns the stored document."""

    def search(
        self,
        collection: str,
        vector: np.ndarray,
        text: str,
        limit: int,
        mode: SearchMode,
        alpha: float,
    ) -> list[ScoredChunk]:
        """The `limit` best chunks, best first."""

    def list_chunks(
        self, collection: str, offset: int, limit: int
    ) -> tuple[list[StoredChunk], int]:
        """A page of the chunks in stored order (document by document, in chunk order) and
        the collection's chunk count. NotFound if unknown."""

    def close(self) -> None: ...
