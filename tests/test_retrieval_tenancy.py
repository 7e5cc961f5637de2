"""Tenant namespaces of the retrieval service, below the edge: names in the vector store and
uploaded files, including data written before tenancy existed."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.common.errors import InvalidArgument, NotFound
from services.retrieval.database_files import DatabaseFileStore
from services.retrieval.domain import check_collection_name, split_store_name, store_name
from services.retrieval.files import FileStore


@pytest.mark.parametrize("tenant", [0, 1, 42])
@pytest.mark.parametrize("name", ["handbook", "a_b", "default", "x1"])
def test_store_names_round_trip_and_never_collide(tenant, name):
    assert split_store_name(store_name(tenant, name)) == (tenant, name)


def test_the_tenant_separator_is_not_a_valid_collection_name():
    # Otherwise the shared namespace could name `7__x` and reach tenant 7's `x`.
    with pytest.raises(InvalidArgument):
        check_collection_name("7__x")
    assert store_name(0, "handbook") == "handbook"  # collections made before tenancy


@pytest.fixture(params=["disk", "postgresql"])
def file_store(request, tmp_path) -> FileStore | DatabaseFileStore:
    """Uploaded files on local disk (the default), or in PostgreSQL (RETRIEVAL_DATABASE_URL)."""
    if request.param == "disk":
        return FileStore(tmp_path)
    return DatabaseFileStore(request.getfixturevalue("postgres").create_database())


def test_files_belong_to_their_tenant(file_store):
    files = file_store
    mine = files.add(1, "a.txt", b"tenant one", "assistants")
    theirs = files.add(2, "b.txt", b"tenant two", "assistants")
    assert [f.id for f in files.list(1)] == [mine.id]
    assert {f.id for f in files.list(None)} == {mine.id, theirs.id}
    assert files.get(1, mine.id)[1] == b"tenant one"
    for attempt in (lambda: files.get(2, mine.id), lambda: files.delete(2, mine.id)):
        with pytest.raises(NotFound):
            attempt()
    assert files.get(1, mine.id)[0] == mine
    files.delete(1, mine.id)
    assert [f.id for f in files.list(None)] == [theirs.id]
    files.close()


def test_replicas_on_one_database_share_uploaded_files(postgres):
    """Two retrieval replicas (stores opened at once on a new database): a file one accepted
    the other reads, lists and deletes."""
    database = postgres.create_database()
    with ThreadPoolExecutor(2) as pool:
        one, other = pool.map(DatabaseFileStore, [database, database])
    content = "한국어 본문".encode() + bytes(range(256))
    stored = one.add(3, "doc.txt", content, "assistants")
    assert other.get(3, stored.id) == (stored, content)
    assert other.list(3) == [stored]
    other.delete(3, stored.id)
    with pytest.raises(NotFound):
        one.get(3, stored.id)
    one.close()
    other.close()


def test_files_uploaded_before_tenancy_join_the_shared_namespace(tmp_path):
    legacy = sqlite3.connect(tmp_path / "files.db")
    legacy.executescript(
        """
        CREATE TABLE files (
            id TEXT PRIMARY KEY, filename TEXT NOT NULL, bytes INTEGER NOT NULL,
            purpose TEXT NOT NULL, created_at_unix_ms INTEGER NOT NULL
        );
        INSERT INTO files VALUES ('file-old', 'old.txt', 3, 'assistants', 1);
        """
    )
    legacy.close()
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "file-old").write_bytes(b"old")
    files = FileStore(tmp_path)
    (stored,) = files.list(0)
    assert (stored.id, stored.tenant) == ("file-old", 0)
    assert files.get(0, "file-old")[1] == b"old"
    assert files.list(1) == []
    files.close()
    # Opening again finds the column there and changes nothing.
    FileStore(tmp_path).close()
