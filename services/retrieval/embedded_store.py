"""The default vector store: SQLite for durable storage, exact search in memory with numpy.

Chunks, vectors and a full-text index (FTS5, for hybrid search) are written in one SQLite
transaction (WAL, synchronous=FULL) before an ingest is acknowledged, so a kill -9 loses
nothing acknowledged. Each collection's vectors are also held as one float32 matrix; a query
is a single matrix-vector product, exact (recall 1.0). See docs/vector-store.md for the
measurements behind this choice.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np

from services.common.domain import now_ms
from services.common.errors import AlreadyExists, NotFound
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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    created_at_unix_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS documents (
    collection TEXT NOT NULL REFERENCES collections(name) ON DELETE CASCADE,
    id TEXT NOT NULL,
    filename TEXT NOT NULL,
    media_type TEXT NOT NULL,
    chunk_count INTEGER NOT NULL,
    created_at_unix_ms INTEGER NOT NULL,
    PRIMARY KEY (collection, id)
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    collection TEXT NOT NULL REFERENCES collections(name) ON DELETE CASCADE,
    document_id TEXT NOT NULL,
    chunk_index INTEGER NOT NULL,
    text TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_collection ON chunks(collection, id);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(text);
"""
# Keyword side of hybrid search: words of the query, each quoted so FTS5 syntax can't leak in.
_WORD = re.compile(r"\w+")
# Candidates each side contributes to hybrid fusion, per requested point.
_HYBRID_CANDIDATES_PER_POINT = 4


class _Matrix:
    """One collection's vectors and chunk ids, grown in place (doubling capacity)."""

    def __init__(self, dimensions: int):
        self.ids = np.zeros(0, np.int64)
        self.vectors = np.zeros((0, dimensions), np.float32)
        self.size = 0

    def append(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        needed = self.size + len(ids)
        if needed > len(self.ids):
            capacity = max(needed, 2 * len(self.ids), 1024)
            grown_ids = np.zeros(capacity, np.int64)
            grown = np.zeros((capacity, self.vectors.shape[1]), np.float32)
            grown_ids[: self.size] = self.ids[: self.size]
            grown[: self.size] = self.vectors[: self.size]
            self.ids, self.vectors = grown_ids, grown
        self.ids[self.size : needed] = ids
        self.vectors[self.size : needed] = vectors
        self.size = needed

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        # Appends only write past `size` or into a new array, so this view stays valid.
        return self.ids[: self.size], self.vectors[: self.size]


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, len(scores))
    if k == 0:
        return np.zeros(0, np.int64)
    top = np.argpartition(-scores, k - 1)[:k]
    return top[np.argsort(-scores[top], kind="stable")]


def _rescale(scores: dict[int, float]) -> dict[int, float]:
    """Min-max to [0, 1], as Weaviate's relative score fusion does."""
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    span = high - low
    return {key: (value - low) / span if span else 1.0 for key, value in scores.items()}


class EmbeddedStore:
    kind = "embedded"

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.location = str(path)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(_SCHEMA)
        # Guards the connection and the matrices; searches compute outside it on a view.
        self._lock = threading.Lock()
        self._matrices: dict[str, _Matrix] = {}
        started = time.monotonic()
        for info in self.list_collections():
            self._matrices[info.spec.name] = self._load_matrix(info.spec)
        logger.info(
            "opened %s: %d collections, %d chunks in %.2fs",
            path,
            len(self._matrices),
            sum(m.size for m in self._matrices.values()),
            time.monotonic() - started,
        )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _load_matrix(self, spec: CollectionSpec) -> _Matrix:
        matrix = _Matrix(spec.dimensions)
        rows = self._conn.execute(
            "SELECT id, vector FROM chunks WHERE collection = ? ORDER BY id", (spec.name,)
        ).fetchall()
        if rows:
            ids = np.fromiter((row[0] for row in rows), np.int64, len(rows))
            vectors = np.frombuffer(b"".join(row[1] for row in rows), np.float32)
            matrix.append(ids, vectors.reshape(len(rows), spec.dimensions))
        return matrix

    # Collections

    def create_collection(self, spec: CollectionSpec) -> CollectionInfo:
        created = now_ms()
        with self._lock:
            try:
                self._conn.execute(
                    "INSERT INTO collections VALUES (?, ?, ?)",
                    (spec.name, spec.settings_json(), created),
                )
            except sqlite3.IntegrityError as error:
                raise AlreadyExists(f"The collection `{spec.name}` already exists.") from error
            self._matrices[spec.name] = _Matrix(spec.dimensions)
        return CollectionInfo(spec, 0, 0, created)

    def get_collection(self, name: str) -> CollectionInfo:
        rows = self._collection_rows("WHERE c.name = ?", (name,))
        if not rows:
            raise NotFound(f"The collection `{name}` does not exist.", param="collection")
        return rows[0]

    def list_collections(self) -> list[CollectionInfo]:
        return self._collection_rows("", ())

    def _collection_rows(self, where: str, args: tuple) -> list[CollectionInfo]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT c.name, c.spec, c.created_at_unix_ms,"
                " (SELECT COUNT(*) FROM documents d WHERE d.collection = c.name),"
                " (SELECT COALESCE(SUM(chunk_count), 0) FROM documents d"
                "  WHERE d.collection = c.name)"
                f" FROM collections c {where} ORDER BY c.name",
                args,
            ).fetchall()
        return [
            CollectionInfo(
                CollectionSpec.from_settings_json(name, spec), documents, chunks, created
            )
            for name, spec, created, documents, chunks in rows
        ]

    def delete_collection(self, name: str) -> None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "DELETE FROM chunks_fts WHERE rowid IN"
                    " (SELECT id FROM chunks WHERE collection = ?)",
                    (name,),
                )
                deleted = self._conn.execute(
                    "DELETE FROM collections WHERE name = ?", (name,)
                ).rowcount
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            self._matrices.pop(name, None)
        if not deleted:
            raise NotFound(f"The collection `{name}` does not exist.", param="collection")

    # Documents

    def find_document(self, collection: str, document_id: str) -> DocumentInfo | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT id, filename, media_type, chunk_count, created_at_unix_ms"
                " FROM documents WHERE collection = ? AND id = ?",
                (collection, document_id),
            ).fetchone()
        return DocumentInfo(*row) if row else None

    def add_document(
        self, collection: str, document: DocumentInfo, chunks: list[Chunk]
    ) -> DocumentInfo:
        with self._lock:
            matrix = self._matrices.get(collection)
            if matrix is None:
                raise NotFound(f"The collection `{collection}` does not exist.")
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                try:
                    self._conn.execute(
                        "INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            collection,
                            document.id,
                            document.filename,
                            document.media_type,
                            len(chunks),
                            document.created_at_unix_ms,
                        ),
                    )
                except sqlite3.IntegrityError:
                    # The same content raced in from another request: keep the first.
                    self._conn.execute("ROLLBACK")
                    return self._stored_document(collection, document.id)
                ids = []
                for chunk in chunks:
                    cursor = self._conn.execute(
                        "INSERT INTO chunks (collection, document_id, chunk_index, text, vector)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (
                            collection,
                            document.id,
                            chunk.index,
                            chunk.text,
                            chunk.vector.astype(np.float32).tobytes(),
                        ),
                    )
                    ids.append(cursor.lastrowid)
                    self._conn.execute(
                        "INSERT INTO chunks_fts (rowid, text) VALUES (?, ?)",
                        (cursor.lastrowid, chunk.text),
                    )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            if chunks:
                matrix.append(np.array(ids, np.int64), np.stack([c.vector for c in chunks]))
        return DocumentInfo(
            document.id,
            document.filename,
            document.media_type,
            len(chunks),
            document.created_at_unix_ms,
        )

    def _stored_document(self, collection: str, document_id: str) -> DocumentInfo:
        row = self._conn.execute(
            "SELECT id, filename, media_type, chunk_count, created_at_unix_ms"
            " FROM documents WHERE collection = ? AND id = ?",
            (collection, document_id),
        ).fetchone()
        return DocumentInfo(*row)

    # Search

    def list_chunks(
        self, collection: str, offset: int, limit: int
    ) -> tuple[list[StoredChunk], int]:
        self.get_collection(collection)
        with self._lock:
            # Chunk ids grow as documents are added, each document's chunks in order.
            rows = self._conn.execute(
                "SELECT c.text, c.document_id, d.filename, c.chunk_index FROM chunks c"
                " JOIN documents d ON d.collection = c.collection AND d.id = c.document_id"
                " WHERE c.collection = ? ORDER BY c.id LIMIT ? OFFSET ?",
                (collection, limit, offset),
            ).fetchall()
            (total,) = self._conn.execute(
                "SELECT COUNT(*) FROM chunks WHERE collection = ?", (collection,)
            ).fetchone()
        return [StoredChunk(*row) for row in rows], total

    def search(
        self,
        collection: str,
        vector: np.ndarray,
        text: str,
        limit: int,
        mode: SearchMode,
        alpha: float,
    ) -> list[ScoredChunk]:
        with self._lock:
            matrix = self._matrices.get(collection)
            if matrix is None:
                raise NotFound(f"The collection `{collection}` does not exist.", param="collection")
            ids, vectors = matrix.view()
        scores = vectors @ vector.astype(np.float32)
        if mode is SearchMode.VECTOR:
            top = _top(scores, limit)
            ranked = [(int(ids[i]), float(scores[i])) for i in top]
        else:
            ranked = self._hybrid(collection, ids, scores, text, limit, alpha)
        return self._chunks(ranked)

    def _hybrid(
        self,
        collection: str,
        ids: np.ndarray,
        scores: np.ndarray,
        text: str,
        limit: int,
        alpha: float,
    ) -> list[tuple[int, float]]:
        candidates = limit * _HYBRID_CANDIDATES_PER_POINT
        vector_side = {int(ids[i]): float(scores[i]) for i in _top(scores, candidates)}
        keyword_side: dict[int, float] = {}
        words = _WORD.findall(text)
        if words:
            query = " OR ".join(f'"{word}"' for word in words)
            with self._lock:
                rows = self._conn.execute(
                    "SELECT f.rowid, bm25(chunks_fts) FROM chunks_fts f"
                    " JOIN chunks c ON c.id = f.rowid"
                    " WHERE chunks_fts MATCH ? AND c.collection = ?"
                    " ORDER BY bm25(chunks_fts) LIMIT ?",
                    (query, collection, candidates),
                ).fetchall()
            # FTS5's bm25() is lower-is-better; negate so higher is better like the vectors.
            keyword_side = {rowid: -rank for rowid, rank in rows}
        vector_side, keyword_side = _rescale(vector_side), _rescale(keyword_side)
        fused = {
            key: alpha * vector_side.get(key, 0.0) + (1 - alpha) * keyword_side.get(key, 0.0)
            for key in vector_side.keys() | keyword_side.keys()
        }
        return sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:limit]

    def _chunks(self, ranked: list[tuple[int, float]]) -> list[ScoredChunk]:
        if not ranked:
            return []
        marks = ",".join("?" * len(ranked))
        with self._lock:
            rows = self._conn.execute(
                "SELECT c.id, c.text, c.document_id, d.filename, c.chunk_index FROM chunks c"
                " JOIN documents d ON d.collection = c.collection AND d.id = c.document_id"
                f" WHERE c.id IN ({marks})",
                [chunk_id for chunk_id, _ in ranked],
            ).fetchall()
        by_id = {row[0]: row[1:] for row in rows}
        return [
            ScoredChunk(text, score, document_id, filename, index)
            for chunk_id, score in ranked
            if chunk_id in by_id
            for text, document_id, filename, index in [by_id[chunk_id]]
        ]
