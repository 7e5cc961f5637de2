"""Registry schema migrations: each released schema is a revision, and databases made by earlier
releases upgrade in place when the store opens them, keep their rows, and end at the same schema
as a new database."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

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
from services.registry.store import RegistryStore

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
    record = UsageRecord(
        request_id="r1",
        created_at_unix_ms=1,
        serving_id=serving.id,
        model="old-chat",
        api_key_id=key.id,
        user_id="",
        prompt_tokens=3,
        completion_tokens=0,
        latency_ms=5,
        ttft_ms=0,
        status=UsageStatus.OK,
        blocked=False,
        endpoint="/v1/embeddings",
    )
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
