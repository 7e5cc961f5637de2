"""The registry's two database engines behind one SQLAlchemy engine: SQLite (embedded default)
or PostgreSQL through psycopg 3. Everything above this module is engine-neutral.

SQLite: one connection (writes are tiny and rare next to inference), WAL, synchronous=FULL,
foreign keys on, and every transaction BEGIN IMMEDIATE, so two processes on one file take turns
instead of failing to upgrade a read lock. PostgreSQL: a small pool whose connections are
checked before use (a replica outlives a database failover); commits are durable with the
server's default synchronous_commit=on.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import sqlalchemy as sa

# As long as Python's sqlite3 waits for a lock (its default timeout).
_WAL_SWITCH_TIMEOUT_S = 5.0


def use_wal(dbapi_connection: sqlite3.Connection) -> None:
    """WAL is a property of the file, set by the first connection that finds it missing (the
    migrations', before any transaction). Switching needs the file to itself, and SQLite
    answers "database is locked" at once instead of calling its busy handler (two replicas
    creating one file switch at the same moment), so retry as that handler would."""
    deadline = time.monotonic() + _WAL_SWITCH_TIMEOUT_S
    while True:
        try:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def create_engine(url: sa.URL) -> sa.Engine:
    if url.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_size=4, max_overflow=4, pool_pre_ping=True)
    if url.database:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url,
        pool_size=1,
        max_overflow=0,
        pool_timeout=60,
        connect_args={"check_same_thread": False},
    )

    @sa.event.listens_for(engine, "connect")
    def connect(dbapi_connection, _record) -> None:
        # We BEGIN ourselves (below): Python's sqlite3 would begin only before DML.
        dbapi_connection.isolation_level = None
        use_wal(dbapi_connection)
        dbapi_connection.execute("PRAGMA synchronous=FULL")
        dbapi_connection.execute("PRAGMA foreign_keys=ON")

    @sa.event.listens_for(engine, "begin")
    def begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
