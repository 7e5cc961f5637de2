"""Schema migrations of the registry database (Alembic), run by the store each time it opens.

One revision per schema change in versions/, forward only, written with Alembic's dialect-neutral
operations: SQLite and PostgreSQL run the same ones (tests/test_registry_migrations.py runs them
on both).

A database made before migrations existed has no alembic_version table: it is recognised by its
tables, stamped with the revision whose schema it has, then upgraded like any other.

A new revision is a new file in versions/ whose `down_revision` is the current head; revisions
already released never change.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from services.common.database import database_url
from services.registry.database import use_wal

_SCRIPTS = Path(__file__).resolve().parent
# pg_advisory_xact_lock's key: any constant that no other code of ours locks.
_UPGRADE_LOCK = 0x6C6C6D73


def upgrade_schema(url: str | sa.URL, revision: str = "head") -> None:
    """Brings the database at `url` to `revision` (tests pin older ones), in one transaction."""
    engine = sa.create_engine(database_url(url), poolclass=sa.NullPool)
    if engine.dialect.name == "sqlite":
        _take_over_sqlite_transactions(engine)
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            # Replicas starting at once upgrade one after another: the second waits here, then
            # finds the schema at head. (SQLite: BEGIN IMMEDIATE does the same.)
            connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_UPGRADE_LOCK)))
        config.attributes["connection"] = connection
        legacy = _pre_migrations_revision(connection)
        if legacy:
            command.stamp(config, legacy)
        command.upgrade(config, revision)


def _pre_migrations_revision(connection: sa.Connection) -> str | None:
    """The revision matching a database made before migrations existed; None for any other."""
    tables = set(sa.inspect(connection).get_table_names())
    if "alembic_version" in tables or "models" not in tables:
        return None
    # Keys, usage, moderation and limits arrived together in the second release.
    return "0002" if "api_keys" in tables else "0001"


def _take_over_sqlite_transactions(engine: sa.Engine) -> None:
    """Python's sqlite3 begins a transaction only before INSERT, UPDATE or DELETE, so DDL would
    commit statement by statement; BEGIN ourselves so that an upgrade is all or nothing."""

    @sa.event.listens_for(engine, "connect")
    def connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None
        # Before the file's first transaction: switching to WAL later fails while another
        # process holds a rollback-journal write lock (two replicas creating one file).
        use_wal(dbapi_connection)
        # Batch mode copies a table and drops the original: with foreign keys enforced, dropping
        # `servings` would delete every API key through ON DELETE CASCADE.
        dbapi_connection.execute("PRAGMA foreign_keys=OFF")

    @sa.event.listens_for(engine, "begin")
    def begin(connection: sa.Connection) -> None:
        # IMMEDIATE takes the write lock first, so two processes opening one file take turns.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
