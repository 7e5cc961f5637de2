"""The retrieval service's domain types, shared by its core and its vector stores."""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass

import numpy as np

from services.common.errors import InvalidArgument

# Letters, digits and underscores: valid in every backend (Weaviate class names included).
_COLLECTION_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")


def check_collection_name(name: str) -> str:
    if not _COLLECTION_NAME.fullmatch(name):
        raise InvalidArgument(
            f"Invalid collection name `{name}`: use 1 to 64 letters, digits or underscores.",
            param="collection",
        )
    return name


class SearchMode(enum.Enum):
    VECTOR = "vector"
    HYBRID = "hybrid"


@dataclass(frozen=True)
class ChunkSettings:
    chunk_tokens: int
    overlap_tokens: int


@dataclass(frozen=True)
class CollectionSpec:
    name: str
    embedding_model: str
    dimensions: int
    chunking: ChunkSettings

    def settings_json(self) -> str:
        """Everything but the name, as the stores keep it."""
        return json.dumps(
            {
                "embedding_model": self.embedding_model,
                "dimensions": self.dimensions,
                "chunk_tokens": self.chunking.chunk_tokens,
                "overlap_tokens": self.chunking.overlap_tokens,
            }
        )

    @classmethod
    def from_settings_json(cls, name: str, text: str) -> CollectionSpec:
        data = json.loads(text)
        return cls(
            name,
            data["embedding_model"],
            data["dimensions"],
            ChunkSettings(data["chunk_tokens"], data["overlap_tokens"]),
        )


@dataclass(frozen=True)
class CollectionInfo:
    spec: CollectionSpec
    document_count: int
    chunk_count: int
    created_at_unix_ms: int


@dataclass(frozen=True)
class DocumentInfo:
    id: str
    filename: str
    media_type: str
    chunk_count: int
    created_at_unix_ms: int


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    # Unit length, float32.
    vector: np.ndarray


@dataclass(frozen=True)
class ScoredChunk:
    text: str
    score: float
    document_id: str
    filename: str
    index: int
