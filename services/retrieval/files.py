"""Uploaded files, kept on local disk until ingested or deleted.

Each file is written to a temporary name, fsynced and renamed before its row is committed,
so an acknowledged upload survives a crash and a crash never leaves a half file behind a row.
A file belongs to the tenant that uploaded it; to every other tenant it does not exist.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from services.common.domain import now_ms
from services.common.errors import NotFound

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    filename TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    purpose TEXT NOT NULL,
    created_at_unix_ms INTEGER NOT NULL,
    tenant INTEGER NOT NULL DEFAULT 0
);
"""
_COLUMNS = "id, filename, bytes, purpose, created_at_unix_ms, tenant"


@dataclass(frozen=True)
class StoredFile:
    id: str
    filename: str
    bytes: int
    purpose: str
    created_at_unix_ms: int
    tenant: int


class FileStore:
    def __init__(self, directory: Path):
        self._blobs = directory / "files"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            directory / "files.db", check_same_thread=False, isolation_level=None
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(files)")}
        if "tenant" not in columns:
            # Files uploaded before tenancy belong to the shared namespace.
            self._conn.execute("ALTER TABLE files ADD COLUMN tenant INTEGER NOT NULL DEFAULT 0")
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def add(self, tenant: int, filename: str, content: bytes, purpose: str) -> StoredFile:
        stored = StoredFile(
            f"file-{uuid.uuid4().hex[:24]}", filename, len(content), purpose, now_ms(), tenant
        )
        path = self._blobs / stored.id
        partial = path.with_suffix(".partial")
        with partial.open("wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        partial.rename(path)
        directory = os.open(self._blobs, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        with self._lock:
            self._conn.execute(
                f"INSERT INTO files ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (stored.id, filename, stored.bytes, purpose, stored.created_at_unix_ms, tenant),
            )
        return stored

    def get(self, tenant: int, file_id: str) -> tuple[StoredFile, bytes]:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLUMNS} FROM files WHERE id = ? AND tenant = ?", (file_id, tenant)
            ).fetchone()
        if row is None:
            raise NotFound(f"No such file: `{file_id}`.", param="file_id")
        return StoredFile(*row), (self._blobs / file_id).read_bytes()

    def list(self, tenant: int | None) -> list[StoredFile]:
        """A tenant's files, or every tenant's (None), newest first."""
        where, args = ("WHERE tenant = ?", (tenant,)) if tenant is not None else ("", ())
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM files {where} ORDER BY created_at_unix_ms DESC, id", args
            ).fetchall()
        return [StoredFile(*row) for row in rows]

    def delete(self, tenant: int, file_id: str) -> None:
        with self._lock:
            deleted = self._conn.execute(
                "DELETE FROM files WHERE id = ? AND tenant = ?", (file_id, tenant)
            ).rowcount
        if not deleted:
            raise NotFound(f"No such file: `{file_id}`.", param="file_id")
        (self._blobs / file_id).unlink(missing_ok=True)
