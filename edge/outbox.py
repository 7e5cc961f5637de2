"""The edge's on-disk usage outbox: a SQLite database in WAL mode that holds usage records until
the registry has acknowledged them.

Commits use synchronous=NORMAL: a committed record is in the WAL file (the OS page cache) when
`add_all` returns, so it survives a kill -9 of the edge, though not a power cut (that would cost an
fsync per request). The connection takes an exclusive lock for the life of the process, so a
second edge pointed at the same file fails at start instead of shipping or deleting the first
one's records. Every method blocks on the disk: UsageRecorder calls them from its own thread.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from llmserve.registry.v1 import registry_pb2
from services.common.records import UsageRecord


class OutboxInUse(RuntimeError):
    """Another process holds this outbox."""


class UsageOutbox:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit (each statement is its own transaction); used by one thread at a time,
        # though not the one that opened it.
        self._db = sqlite3.connect(path, isolation_level=None, timeout=0, check_same_thread=False)
        try:
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # A write takes the exclusive lock now, not at the first request.
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS outbox"
                " (seq INTEGER PRIMARY KEY AUTOINCREMENT, record BLOB NOT NULL)"
            )
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("COMMIT")
        except sqlite3.OperationalError as error:
            self._db.close()
            raise OutboxInUse(
                f"usage outbox {path} is in use by another process ({error}); give each edge "
                "its own EDGE_USAGE_OUTBOX_PATH"
            ) from error

    def add_all(self, records: list[UsageRecord]) -> None:
        """Commits `records` in one transaction."""
        rows = [(record.to_pb().SerializeToString(),) for record in records]
        self._db.execute("BEGIN")
        try:
            self._db.executemany("INSERT INTO outbox (record) VALUES (?)", rows)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def oldest(self, limit: int) -> tuple[int, list[UsageRecord]]:
        """Up to `limit` records, oldest first, and the sequence number of the last one."""
        rows = self._db.execute(
            "SELECT seq, record FROM outbox ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()
        records = [UsageRecord.from_pb(registry_pb2.UsageRecord.FromString(r)) for _, r in rows]
        return (rows[-1][0] if rows else 0), records

    def delete_through(self, seq: int) -> None:
        self._db.execute("DELETE FROM outbox WHERE seq <= ?", (seq,))

    def count(self) -> int:
        return self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def close(self) -> None:
        self._db.close()
