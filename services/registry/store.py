"""SQLite persistence of the registry. Every write commits (WAL, synchronous=FULL) before returning.

Blocking: callers on an event loop run these methods in a worker thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path

from services.common.domain import SamplingParams
from services.common.errors import AlreadyExists, FailedPrecondition, NotFound
from services.common.records import ModelKind, ModelRecord, ServingRecord, SourceFormat

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY,
    kind INTEGER NOT NULL,
    source TEXT NOT NULL,
    source_format INTEGER NOT NULL,
    source_sha256 TEXT NOT NULL,
    artifact_dir TEXT NOT NULL,
    chat_template TEXT NOT NULL,
    context_length INTEGER NOT NULL,
    default_sampling TEXT NOT NULL,
    created_at_unix_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS servings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    model TEXT NOT NULL REFERENCES models(name),
    system_prompt TEXT NOT NULL,
    default_sampling TEXT NOT NULL,
    rag_collection TEXT NOT NULL,
    created_at_unix_ms INTEGER NOT NULL
);
"""


def now_ms() -> int:
    return int(time.time() * 1000)


class RegistryStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # One connection guarded by a lock: writes are tiny and rare next to inference.
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _write(self, sql: str, args: tuple) -> sqlite3.Cursor:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._conn.execute(sql, args)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return cursor

    def _read(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    # Models

    def add_model(self, model: ModelRecord) -> ModelRecord:
        model = _with_created(model)
        try:
            self._write(
                "INSERT INTO models VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    model.name,
                    int(model.kind),
                    model.source,
                    int(model.source_format),
                    model.source_sha256,
                    model.artifact_dir,
                    model.chat_template,
                    model.context_length,
                    json.dumps(model.default_sampling.to_dict()),
                    model.created_at_unix_ms,
                ),
            )
        except sqlite3.IntegrityError as error:
            raise AlreadyExists(f"A model named `{model.name}` already exists.") from error
        return model

    def get_model(self, name: str) -> ModelRecord:
        rows = self._read("SELECT * FROM models WHERE name = ?", (name,))
        if not rows:
            raise NotFound(f"The model `{name}` does not exist.", code="model_not_found")
        return _model_from_row(rows[0])

    def list_models(self, kind: ModelKind | None = None) -> list[ModelRecord]:
        if kind is None:
            rows = self._read("SELECT * FROM models ORDER BY name")
        else:
            rows = self._read("SELECT * FROM models WHERE kind = ? ORDER BY name", (int(kind),))
        return [_model_from_row(row) for row in rows]

    def delete_model(self, name: str) -> None:
        users = self._read("SELECT id FROM servings WHERE model = ?", (name,))
        if users:
            ids = ", ".join(str(row["id"]) for row in users)
            raise FailedPrecondition(f"The model `{name}` is used by servings {ids}.")
        if self._write("DELETE FROM models WHERE name = ?", (name,)).rowcount == 0:
            raise NotFound(f"The model `{name}` does not exist.", code="model_not_found")

    # Servings

    def add_serving(self, serving: ServingRecord) -> ServingRecord:
        self.get_model(serving.model)
        serving = _with_created(serving)
        cursor = self._write(
            "INSERT INTO servings (name, model, system_prompt, default_sampling, rag_collection,"
            " created_at_unix_ms) VALUES (?,?,?,?,?,?)",
            (
                serving.name,
                serving.model,
                serving.system_prompt,
                json.dumps(serving.default_sampling.to_dict()),
                serving.rag_collection,
                serving.created_at_unix_ms,
            ),
        )
        return self.get_serving(cursor.lastrowid)

    def get_serving(self, serving_id: int) -> ServingRecord:
        rows = self._read("SELECT * FROM servings WHERE id = ?", (serving_id,))
        if not rows:
            raise NotFound(f"The serving {serving_id} does not exist.", code="serving_not_found")
        return _serving_from_row(rows[0])

    def list_servings(self) -> list[ServingRecord]:
        return [_serving_from_row(row) for row in self._read("SELECT * FROM servings ORDER BY id")]

    def delete_serving(self, serving_id: int) -> None:
        if self._write("DELETE FROM servings WHERE id = ?", (serving_id,)).rowcount == 0:
            raise NotFound(f"The serving {serving_id} does not exist.", code="serving_not_found")


def _with_created(record):
    if record.created_at_unix_ms:
        return record
    return replace(record, created_at_unix_ms=now_ms())


def _model_from_row(row: sqlite3.Row) -> ModelRecord:
    return ModelRecord(
        name=row["name"],
        kind=ModelKind(row["kind"]),
        source=row["source"],
        source_format=SourceFormat(row["source_format"]),
        source_sha256=row["source_sha256"],
        artifact_dir=row["artifact_dir"],
        chat_template=row["chat_template"],
        context_length=row["context_length"],
        default_sampling=SamplingParams.from_dict(json.loads(row["default_sampling"])),
        created_at_unix_ms=row["created_at_unix_ms"],
    )


def _serving_from_row(row: sqlite3.Row) -> ServingRecord:
    return ServingRecord(
        id=row["id"],
        name=row["name"],
        model=row["model"],
        system_prompt=row["system_prompt"],
        default_sampling=SamplingParams.from_dict(json.loads(row["default_sampling"])),
        rag_collection=row["rag_collection"],
        created_at_unix_ms=row["created_at_unix_ms"],
    )
