"""Database URLs as users write them, made into SQLAlchemy URLs (the registry's store and the
retrieval service's uploaded files)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

# A user writes postgresql://; SQLAlchemy's default driver for that is psycopg2, not installed.
_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}


def database_url(database: Path | str | sa.URL) -> sa.URL:
    """A SQLite file path, or a database URL (postgresql:// is mapped to psycopg 3)."""
    if isinstance(database, Path):
        return sa.URL.create("sqlite", database=str(database))
    url = sa.make_url(database)
    return url.set(drivername=_DRIVERS.get(url.drivername, url.drivername))
