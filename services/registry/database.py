"""The registry's two database engines behind one SQLAlchemy engine: SQLite (embedded default)
or PostgreSQL through psycopg 3. Everything above this module is engine-neutral.

SQLite: one connection (writes are tiny and rare next to inference), WAL, synchronous=FULL,
foreign keys on, and every transaction BEGIN IMMEDIATE, so two processes on one file take turns
instead of failing to upgrade a read lock. PostgreSQL: a small pool whose connections are
checked before use (a replica outlives a database failover); commits are durable with the
server's default synchronous_commit=on.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa


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
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=FULL")
        dbapi_connection.execute("PRAGMA foreign_keys=ON")

    @sa.event.listens_for(engine, "begin")
    def begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
