"""Registry schema migrations: each released schema is a revision, and databases made by earlier
releases upgrade in place when the store opens them, keep their rows, and end at the same schema
as a new database, on SQLite and on PostgreSQL."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from services.common.database import database_url
from services.common.domain import SamplingParams
from services.common.records import (
    GraphKind,
    Limits,
    ModelKind,
    ModelRecord,
    ModerationAction,
    ModerationPolicy,
    ServingRecord,
    SourceFormat,
    UsageQuery,
    UsageRecord,
    UsageStatus,
)
from services.registry.migrations import upgrade_schema
from services.registry.store import RegistryStore, hash_secret
from services.registry.tables import metadata

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = REPO / "tests" / "registry_schemas"
HEAD = ScriptDirectory(str(REPO / "services" / "registry" / "migrations")).get_current_head()


def database(path: Path, sql_file: str) -> Path:
    """A database file made by running one of the releases' SQL texts."""
    conn = sqlite3.connect(path)
    conn.executescript((SCHEMAS / sql_file).read_text())
    conn.close()
    return path


def schema(path: Path) -> dict:
    """Everything about the tables that queries can tell apart, minus Alembic's bookkeeping."""
    conn = sqlite3.connect(path)
    tables = [
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            " AND name NOT IN ('alembic_version', 'sqlite_sequence') ORDER BY name"
        )
    ]
    described = {}
    for table in tables:
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
        indexes = {
            row[1]: (row[2], row[3], [c[2] for c in conn.execute(f"PRAGMA index_info('{row[1]}')")])
            for row in conn.execute(f"PRAGMA index_list('{table}')")
        }
        described[table] = {
            "columns": conn.execute(f"PRAGMA table_info('{table}')").fetchall(),
            "foreign_keys": [r[2:] for r in conn.execute(f"PRAGMA foreign_key_list('{table}')")],
            "indexes": indexes,
            "autoincrement": "AUTOINCREMENT" in sql.upper(),
        }
    conn.close()
    return described


def version(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    finally:
        conn.close()


@pytest.fixture
def head_schema(tmp_path) -> dict:
    """The schema of a new database."""
    RegistryStore(tmp_path / "new.db").close()
    return schema(tmp_path / "new.db")


@pytest.mark.parametrize(
    ("revision", "release"), [("0001", "first_release.sql"), ("0002", "before_migrations.sql")]
)
def test_each_released_schema_is_a_revision(tmp_path, revision, release):
    upgrade_schema(sa.URL.create("sqlite", database=str(tmp_path / "migrated.db")), revision)
    assert version(tmp_path / "migrated.db") == revision
    assert schema(tmp_path / "migrated.db") == schema(database(tmp_path / "made.db", release))


USAGE = UsageRecord(
    request_id="r1",
    created_at_unix_ms=1,
    serving_id=1,
    model="old-chat",
    api_key_id="",
    user_id="",
    prompt_tokens=3,
    completion_tokens=0,
    latency_ms=5,
    ttft_ms=0,
    status=UsageStatus.OK,
    blocked=False,
    endpoint="/v1/embeddings",
)


def test_first_release_database_upgrades_in_place(tmp_path, head_schema):
    path = database(tmp_path / "registry.db", "first_release.sql")
    store = RegistryStore(path)

    model = store.get_model("old-chat")
    assert (model.context_length, model.default_sampling) == (2048, SamplingParams(temperature=0.5))
    [serving] = store.list_servings()
    assert (serving.id, serving.name, serving.system_prompt) == (1, "legacy", "Be brief.")
    assert serving.rag_collection == "docs"
    # The columns added since read as their defaults.
    assert serving.moderation == ModerationPolicy()
    assert serving.limits == Limits()
    # And the tables added since work.
    key, secret = store.create_key(serving.id, name="after")
    assert store.verify_key(secret) == key
    record = replace(USAGE, serving_id=serving.id, api_key_id=key.id)
    store.record_usage([record])
    assert store.query_usage(UsageQuery(serving_id=serving.id)).records == [record]
    assert store.add_serving(ServingRecord(id=0, name="new", model="old-chat")).id == 2
    store.close()

    assert version(path) == HEAD
    assert schema(path) == head_schema


def test_database_from_before_migrations_is_stamped_and_keeps_rows(tmp_path, head_schema):
    path = database(tmp_path / "registry.db", "before_migrations.sql")
    store = RegistryStore(path)

    assert store.get_model("old-chat").source_sha256 == "abc123"
    assert store.get_model("old-chat").graph is GraphKind.OPTIMUM
    serving = store.get_serving(1)
    assert serving.moderation == ModerationPolicy(True, ("secret",), ModerationAction.WITHHOLD)
    assert (serving.limits.requests_per_minute, serving.limits.max_concurrent_requests) == (60, 2)
    key = store.verify_key("sk-llms-made-before-migrations")
    assert (key.id, key.serving_id, key.name) == ("key_0123456789abcdef", 1, "ops")
    usage = store.query_usage(UsageQuery())
    assert usage.total_requests == 1
    [record] = usage.records
    assert (record.request_id, record.user_id, record.status) == (
        "chatcmpl-old",
        "alice",
        UsageStatus.OK,
    )
    assert (record.prompt_tokens, record.completion_tokens) == (12, 7)
    assert record.endpoint == "/v1/chat/completions"
    store.close()

    assert version(path) == HEAD
    assert schema(path) == head_schema


def test_0003_records_the_models_of_a_0002_database_as_optimum_exports(tmp_path, head_schema):
    path = tmp_path / "registry.db"
    upgrade_schema(sa.URL.create("sqlite", database=str(path)), "0002")
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "INSERT INTO models VALUES (?,?,?,?,?,?,?,?,?,?)",
            ("old-chat", 1, "/src.gguf", 1, "abc", "/a", "{{ m }}", 2048, "{}", 1),
        )
    conn.close()

    store = RegistryStore(path)
    assert store.get_model("old-chat").graph is GraphKind.OPTIMUM
    new = ModelRecord(
        "new-chat", ModelKind.CHAT, "/b.gguf", SourceFormat.GGUF, "def", "/b", "{{ m }}", 8192
    )
    store.add_model(replace(new, graph=GraphKind.GQA))
    assert store.get_model("new-chat").graph is GraphKind.GQA
    store.close()

    assert version(path) == HEAD
    assert schema(path) == head_schema


def test_reopening_changes_nothing(tmp_path):
    path = tmp_path / "registry.db"
    store = RegistryStore(path)
    store.add_model(
        ModelRecord(
            "m", ModelKind.EMBEDDING, "/src", SourceFormat.HF_DIRECTORY, "f00", "/a", "", 512
        )
    )
    store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # SQLite bumps the schema cookie on every DDL statement.
    cookie = conn.execute("PRAGMA schema_version").fetchone()[0]

    store = RegistryStore(path)
    assert conn.execute("PRAGMA schema_version").fetchone()[0] == cookie
    assert version(path) == HEAD
    assert [m.name for m in store.list_models()] == ["m"]
    store.close()
    conn.close()


def test_a_failed_upgrade_leaves_the_database_as_it_was(tmp_path):
    path = database(tmp_path / "registry.db", "first_release.sql")
    # A stray table that revision 0002 wants to create makes it fail halfway through.
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE usage (anything TEXT)")
    conn.close()
    before = schema(path)

    with pytest.raises(sa.exc.OperationalError, match="table usage already exists"):
        RegistryStore(path)

    assert schema(path) == before
    conn = sqlite3.connect(path)
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    assert "alembic_version" not in tables and "api_keys" not in tables
    assert conn.execute("SELECT name FROM servings").fetchall() == [("legacy",)]
    conn.close()


# The revisions on both engines: each step from an older revision keeps its rows and ends at the
# schema of a new database; PostgreSQL runs them for real, not only SQLite.


def inspected(database: Path | str) -> dict:
    """The schema as SQLAlchemy's inspector sees it, on either engine."""
    engine = sa.create_engine(database_url(database), poolclass=sa.NullPool)
    inspector = sa.inspect(engine)
    described = {
        table: {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], c.get("default"))
                for c in inspector.get_columns(table)
            ],
            "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
            "foreign_keys": sorted(
                (fk["constrained_columns"], fk["referred_table"], fk["options"])
                for fk in inspector.get_foreign_keys(table)
            ),
            "indexes": sorted((i["name"], i["column_names"]) for i in inspector.get_indexes(table)),
        }
        for table in inspector.get_table_names()
        if table != "alembic_version"
    }
    engine.dispose()
    return described


def execute(database: Path | str, sql: str, *rows: dict) -> None:
    engine = sa.create_engine(database_url(database), poolclass=sa.NullPool)
    with engine.begin() as connection:
        connection.execute(sa.text(sql), list(rows) or None)
    engine.dispose()


def test_each_revision_upgrades_in_place_on_both_engines(new_registry_database):
    database = new_registry_database()
    upgrade_schema(database_url(database), "0001")
    execute(
        database,
        "INSERT INTO models VALUES (:name, 1, '/src.gguf', 1, 'abc', '/a', 't', 2048, '{}', 1)",
        {"name": "old-chat"},
    )
    execute(
        database,
        "INSERT INTO servings (name, model, system_prompt, default_sampling, rag_collection,"
        " created_at_unix_ms) VALUES ('legacy', 'old-chat', 'Be brief.', '{}', 'docs', :t)",
        {"t": 1_700_000_000_000},
    )
    upgrade_schema(database_url(database), "0002")
    execute(
        database,
        "INSERT INTO api_keys VALUES ('key_old', 1, 'ops', :digest, 2, 0, 0)",
        {"digest": hash_secret("sk-llms-old")},
    )

    store = RegistryStore(database)
    assert store.get_model("old-chat").graph is GraphKind.OPTIMUM
    serving = store.get_serving(1)
    assert (serving.name, serving.system_prompt, serving.rag_collection) == (
        "legacy",
        "Be brief.",
        "docs",
    )
    assert (serving.moderation, serving.limits) == (ModerationPolicy(), Limits())
    assert store.verify_key("sk-llms-old").id == "key_old"
    # The identity of servings goes on after the rows inserted by older releases.
    assert store.add_serving(ServingRecord(id=0, name="new", model="old-chat")).id == 2
    # 64-bit Unix milliseconds fit (PostgreSQL's INTEGER would not hold them).
    store.record_usage([replace(USAGE, created_at_unix_ms=4_102_444_800_000)])
    assert store.query_usage(UsageQuery()).records[0].created_at_unix_ms == 4_102_444_800_000
    store.close()

    fresh = new_registry_database()
    RegistryStore(fresh).close()
    assert inspected(database) == inspected(fresh)
    # The store's own view of the tables (services/registry/tables.py) is the migrations' head.
    assert {t: [c[0] for c in d["columns"]] for t, d in inspected(fresh).items()} == {
        t.name: [c.name for c in t.columns] for t in metadata.sorted_tables
    }


def test_a_failed_upgrade_changes_nothing_on_both_engines(new_registry_database):
    database = new_registry_database()
    upgrade_schema(database_url(database), "0001")
    execute(
        database,
        "INSERT INTO models VALUES ('m', 1, '/src.gguf', 1, 'abc', '/a', 't', 2048, '{}', 1)",
    )
    # A stray table that revision 0002 wants to create makes it fail halfway through.
    execute(database, "CREATE TABLE usage (anything TEXT)")
    before = inspected(database)

    with pytest.raises(sa.exc.DBAPIError, match="already exists"):
        RegistryStore(database)

    assert inspected(database) == before
    engine = sa.create_engine(database_url(database), poolclass=sa.NullPool)
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT version_num FROM alembic_version")).all() == [
            ("0001",)
        ]
        assert connection.execute(sa.text("SELECT name FROM models")).all() == [("m",)]
    engine.dispose()
