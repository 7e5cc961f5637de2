"""Uploaded files in a database (RETRIEVAL_DATABASE_URL, PostgreSQL), so that every retrieval
replica reads what any one of them accepted: the same contract as files.FileStore, which keeps
them on one machine's disk.

A file's bytes and its row are one INSERT, committed before `add` returns: an acknowledged
upload is durable, and no row ever lacks its bytes. The table is created when missing.

Blocking: callers on an event loop run these methods in a worker thread.
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import sqlalchemy as sa

from services.common.database import database_url
from services.common.domain import now_ms
from services.common.errors import NotFound
from services.retrieval.files import StoredFile

_metadata = sa.MetaData()
# Its own name: the database may be the registry's, whose tables Alembic owns.
_files = sa.Table(
    "retrieval_files",
    _metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("filename", sa.Text, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("purpose", sa.Text, nullable=False),
    sa.Column("created_at_unix_ms", sa.BigInteger, nullable=False),
    sa.Column("tenant", sa.BigInteger, nullable=False, index=True),
    sa.Column("content", sa.LargeBinary, nullable=False),
)
_COLUMNS = [c for c in _files.columns if c.name != "content"]
# pg_advisory_xact_lock's key while creating the table: replicas starting at once would race
# in CREATE TABLE IF NOT EXISTS.
_CREATE_LOCK = 0x6C6C6D74


class DatabaseFileStore:
    def __init__(self, database: Path | str):
        self._engine = sa.create_engine(database_url(database), pool_pre_ping=True)
        with self._engine.begin() as connection:
            if self._engine.dialect.name == "postgresql":
                connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_CREATE_LOCK)))
            _metadata.create_all(connection)

    def close(self) -> None:
        self._engine.dispose()

    def add(self, tenant: int, filename: str, content: bytes, purpose: str) -> StoredFile:
        stored = StoredFile(
            f"file-{uuid.uuid4().hex[:24]}", filename, len(content), purpose, now_ms(), tenant
        )
        with self._engine.begin() as connection:
            connection.execute(
                _files.insert().values(**dataclasses.asdict(stored), content=content)
            )
        return stored

    def get(self, tenant: int, file_id: str) -> tuple[StoredFile, bytes]:
        with self._engine.connect() as connection:
            row = connection.execute(
                sa.select(*_COLUMNS, _files.c.content).where(
                    _files.c.id == file_id, _files.c.tenant == tenant
                )
            ).first()
        if row is None:
            raise NotFound(f"No such file: `{file_id}`.", param="file_id")
        return StoredFile(*row[:-1]), bytes(row[-1])

    def list(self, tenant: int | None) -> list[StoredFile]:
        """A tenant's files, or every tenant's (None), newest first."""
        query = sa.select(*_COLUMNS).order_by(_files.c.created_at_unix_ms.desc(), _files.c.id)
        if tenant is not None:
            query = query.where(_files.c.tenant == tenant)
        with self._engine.connect() as connection:
            return [StoredFile(*row) for row in connection.execute(query)]

    def delete(self, tenant: int, file_id: str) -> None:
        with self._engine.begin() as connection:
            deleted = connection.execute(
                _files.delete().where(_files.c.id == file_id, _files.c.tenant == tenant)
            ).rowcount
        if not deleted:
            raise NotFound(f"No such file: `{file_id}`.", param="file_id")
