"""The Weaviate backend (weaviate-client v4): one Weaviate collection per collection, our own
vectors (no vectorizer), HNSW with cosine distance, near-vector and hybrid (relative score
fusion) queries, batch inserts.

Weaviate has no transactions, so chunk ids are deterministic (uuid5 of collection, document
and chunk index) and a document counts as stored only when all its chunks are there:
re-ingesting after a failure completes it rather than duplicating it. Collection settings
travel in the Weaviate collection's description.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from services.common.errors import AlreadyExists, Internal, NotFound
from services.retrieval.domain import (
    Chunk,
    CollectionInfo,
    CollectionSpec,
    DocumentInfo,
    ScoredChunk,
    SearchMode,
    StoredChunk,
)

logger = logging.getLogger(__name__)

# Our collections among whatever else lives in the Weaviate instance.
PREFIX = "Llmserve_"
_INSERT_BATCH = 256


def _public_url(url: str) -> str:
    """The URL without user info, so no credential reaches /v1/info or the logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class WeaviateStore:
    kind = "weaviate"

    def __init__(self, url: str, grpc_port: int = 0, api_key: str = ""):
        import weaviate
        from weaviate.classes.init import Auth

        parts = urlsplit(url)
        secure = parts.scheme == "https"
        self.location = _public_url(url)
        self._client = weaviate.connect_to_custom(
            http_host=parts.hostname or "localhost",
            http_port=parts.port or (443 if secure else 80),
            http_secure=secure,
            grpc_host=parts.hostname or "localhost",
            grpc_port=grpc_port or 50051,
            grpc_secure=secure,
            auth_credentials=Auth.api_key(api_key) if api_key else None,
        )
        logger.info("connected to Weaviate at %s", self.location)

    def close(self) -> None:
        self._client.close()

    def _collection(self, name: str):
        handle = self._client.collections.use(PREFIX + name)
        if not handle.exists():
            raise NotFound(f"The collection `{name}` does not exist.", param="collection")
        return handle

    # Collections

    def create_collection(self, spec: CollectionSpec) -> CollectionInfo:
        from weaviate.classes.config import Configure, DataType, Property, VectorDistances

        if self._client.collections.exists(PREFIX + spec.name):
            raise AlreadyExists(f"The collection `{spec.name}` already exists.")
        self._client.collections.create(
            PREFIX + spec.name,
            description=spec.settings_json(),
            vector_config=Configure.Vectors.self_provided(
                vector_index_config=Configure.VectorIndex.hnsw(
                    distance_metric=VectorDistances.COSINE
                )
            ),
            properties=[
                Property(name="text", data_type=DataType.TEXT),
                Property(name="document_id", data_type=DataType.TEXT),
                Property(name="filename", data_type=DataType.TEXT),
                Property(name="media_type", data_type=DataType.TEXT),
                Property(name="chunk_index", data_type=DataType.INT),
                Property(name="chunk_count", data_type=DataType.INT),
                Property(name="created_at_unix_ms", data_type=DataType.INT),
            ],
        )
        return CollectionInfo(spec, 0, 0, 0)

    def _info(self, name: str, description: str) -> CollectionInfo:
        from weaviate.classes.aggregate import GroupByAggregate

        handle = self._client.collections.use(PREFIX + name)
        chunks = handle.aggregate.over_all(total_count=True).total_count or 0
        groups = handle.aggregate.over_all(group_by=GroupByAggregate(prop="document_id")).groups
        spec = CollectionSpec.from_settings_json(name, description)
        return CollectionInfo(spec, len(groups), chunks, 0)

    def get_collection(self, name: str) -> CollectionInfo:
        config = self._collection(name).config.get()
        return self._info(name, config.description or "")

    def list_collections(self) -> list[CollectionInfo]:
        configs = self._client.collections.list_all(simple=True)
        return [
            self._info(full_name[len(PREFIX) :], config.description or "")
            for full_name, config in sorted(configs.items())
            if full_name.startswith(PREFIX)
        ]

    def delete_collection(self, name: str) -> None:
        self._collection(name)
        self._client.collections.delete(PREFIX + name)

    # Documents

    def find_document(self, collection: str, document_id: str) -> DocumentInfo | None:
        from weaviate.classes.query import Filter

        handle = self._collection(collection)
        match = Filter.by_property("document_id").equal(document_id)
        found = handle.query.fetch_objects(filters=match, limit=1).objects
        if not found:
            return None
        props = found[0].properties
        stored = handle.aggregate.over_all(filters=match, total_count=True).total_count
        if stored != props["chunk_count"]:
            return None  # a failed ingest left it partial; the next ingest completes it
        return DocumentInfo(
            document_id,
            props["filename"],
            props["media_type"],
            props["chunk_count"],
            props["created_at_unix_ms"],
        )

    def add_document(
        self, collection: str, document: DocumentInfo, chunks: list[Chunk]
    ) -> DocumentInfo:
        from weaviate.classes.data import DataObject
        from weaviate.util import generate_uuid5

        existing = self.find_document(collection, document.id)
        if existing is not None:
            return existing
        handle = self._collection(collection)
        objects = [
            DataObject(
                properties={
                    "text": chunk.text,
                    "document_id": document.id,
                    "filename": document.filename,
                    "media_type": document.media_type,
                    "chunk_index": chunk.index,
                    "chunk_count": len(chunks),
                    "created_at_unix_ms": document.created_at_unix_ms,
                },
                vector=chunk.vector.tolist(),
                uuid=generate_uuid5(f"{collection}/{document.id}/{chunk.index}"),
            )
            for chunk in chunks
        ]
        for start in range(0, len(objects), _INSERT_BATCH):
            result = handle.data.insert_many(objects[start : start + _INSERT_BATCH])
            if result.has_errors:
                first = next(iter(result.errors.values()))
                raise Internal(f"Weaviate rejected chunks of {document.filename}: {first.message}")
        return DocumentInfo(
            document.id,
            document.filename,
            document.media_type,
            len(chunks),
            document.created_at_unix_ms,
        )

    def list_chunks(
        self, collection: str, offset: int, limit: int
    ) -> tuple[list[StoredChunk], int]:
        from weaviate.classes.query import Sort

        handle = self._collection(collection)
        order = (
            Sort.by_property("created_at_unix_ms")
            .by_property("document_id")
            .by_property("chunk_index")
        )
        found = handle.query.fetch_objects(limit=limit, offset=offset, sort=order).objects
        total = handle.aggregate.over_all(total_count=True).total_count
        chunks = [
            StoredChunk(
                o.properties["text"],
                o.properties["document_id"],
                o.properties["filename"],
                o.properties["chunk_index"],
            )
            for o in found
        ]
        return chunks, total

    # Search

    def search(
        self,
        collection: str,
        vector: np.ndarray,
        text: str,
        limit: int,
        mode: SearchMode,
        alpha: float,
    ) -> list[ScoredChunk]:
        from weaviate.classes.query import HybridFusion, MetadataQuery

        handle = self._collection(collection)
        if mode is SearchMode.VECTOR:
            result = handle.query.near_vector(
                near_vector=vector.tolist(),
                limit=limit,
                return_metadata=MetadataQuery(distance=True),
            )
            scored = [(o, 1.0 - (o.metadata.distance or 0.0)) for o in result.objects]
        else:
            result = handle.query.hybrid(
                query=text,
                vector=vector.tolist(),
                alpha=alpha,
                limit=limit,
                fusion_type=HybridFusion.RELATIVE_SCORE,
                return_metadata=MetadataQuery(score=True),
            )
            scored = [(o, o.metadata.score or 0.0) for o in result.objects]
        return [
            ScoredChunk(
                o.properties["text"],
                float(score),
                o.properties["document_id"],
                o.properties["filename"],
                o.properties["chunk_index"],
            )
            for o, score in scored
        ]
