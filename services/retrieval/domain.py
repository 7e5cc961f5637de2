"""The retrieval service's domain types, shared by its core and its vector stores."""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass

import numpy as np

from services.common.errors import InvalidArgument

# Letters, digits and single underscores: valid in every backend (Weaviate class names
# included), and never holding the separator of tenant-qualified names.
_COLLECTION_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
_TENANT_SEPARATOR = "__"


def check_collection_name(name: str) -> str:
    if not _COLLECTION_NAME.fullmatch(name) or _TENANT_SEPARATOR in name:
        raise InvalidArgument(
            f"Invalid collection name `{name}`: use 1 to 64 letters, digits or single underscores.",
            param="collection",
        )
    return name


def store_name(tenant: int, name: str) -> str:
    """The name a tenant's collection has in the vector store: `<tenant>__<name>`. Tenant 0
    (the shared namespace) keeps plain names, so collections made before tenancy stay its own.
    User names never hold `__`, so the two kinds never meet."""
    return f"{tenant}{_TENANT_SEPARATOR}{name}" if tenant else name


def split_store_name(stored: str) -> tuple[int, str]:
    """(tenant, name) of a name in the vector store; the inverse of `store_name`."""
    tenant, separator, name = stored.partition(_TENANT_SEPARATOR)
    if separator and tenant.isdigit():
        return int(tenant), name
    return 0, stored


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
    # Set by the core, which shows callers the name without its tenant (see `store_name`).
    tenant: int = 0


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
class StoredChunk:
    """A chunk as stored, listed without a query."""

    text: str
    document_id: str
    filename: str
    index: int


@dataclass(frozen=True)
class ScoredChunk:
    text: str
    score: float
    document_id: str
    filename: str
    index: int
