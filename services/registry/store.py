"""SQLite persistence of the registry. Every write commits (WAL, synchronous=FULL) before returning.

Opening a database upgrades its schema in place (services/registry/migrations).

Blocking: callers on an event loop run these methods in a worker thread.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import sqlalchemy as sa

from services.common.domain import SamplingParams, now_ms
from services.common.errors import AlreadyExists, FailedPrecondition, NotFound, Unauthenticated
from services.common.records import (
    ApiKeyRecord,
    EndpointUsage,
    GraphKind,
    Limits,
    ModelKind,
    ModelRecord,
    ModerationPolicy,
    ServingRecord,
    SourceFormat,
    TimeUsage,
    UsageQuery,
    UsageRecord,
    UsageStatus,
    UsageSummary,
    UserUsage,
)
from services.registry.migrations import upgrade_schema

# Secrets look like OpenAI keys; the prefix lets scanners recognise leaked ones.
SECRET_PREFIX = "sk-llms-"
# Random characters of a secret kept in clear to tell keys apart (of 43: 24 bits of 256).
SECRET_PREFIX_SHOWN = 4
_MODEL_COLUMNS = (
    "name",
    "kind",
    "source",
    "source_format",
    "source_sha256",
    "artifact_dir",
    "chat_template",
    "context_length",
    "default_sampling",
    "created_at_unix_ms",
    "graph",
)
_USAGE_COLUMNS = (
    "request_id",
    "created_at_unix_ms",
    "serving_id",
    "model",
    "api_key_id",
    "user_id",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "ttft_ms",
    "status",
    "blocked",
    "endpoint",
)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class RegistryStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # Before the store's own connection exists: a failed upgrade leaves nothing open.
        upgrade_schema(sa.URL.create("sqlite", database=str(path)))
        # One connection guarded by a lock: writes are tiny and rare next to inference.
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _write(self, sql: str, args: tuple) -> sqlite3.Cursor:
        return self._write_many(sql, [args])

    def _write_many(self, sql: str, rows: list[tuple]) -> sqlite3.Cursor:
        """One transaction; committed (and fsynced) before it returns."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                if len(rows) == 1:
                    cursor = self._conn.execute(sql, rows[0])
                else:
                    cursor = self._conn.executemany(sql, rows)
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
                f"INSERT INTO models ({','.join(_MODEL_COLUMNS)})"
                f" VALUES ({','.join('?' * len(_MODEL_COLUMNS))})",
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
                    int(model.graph),
                ),
            )
        except sqlite3.IntegrityError as error:
            raise _name_taken(model.name) from error
        return model

    def check_model_name_free(self, name: str) -> None:
        """Before an import's minutes of export: a taken name fails at once (add_model still
        guards the race with another import of the same name)."""
        if self._read("SELECT 1 FROM models WHERE name = ?", (name,)):
            raise _name_taken(name)

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
            " moderation, limits, created_at_unix_ms) VALUES (?,?,?,?,?,?,?,?)",
            (*_serving_settings(serving), serving.created_at_unix_ms),
        )
        return self.get_serving(cursor.lastrowid)

    def update_serving(self, serving: ServingRecord) -> ServingRecord:
        self.get_model(serving.model)
        cursor = self._write(
            "UPDATE servings SET name=?, model=?, system_prompt=?, default_sampling=?,"
            " rag_collection=?, moderation=?, limits=? WHERE id=?",
            (*_serving_settings(serving), serving.id),
        )
        if cursor.rowcount == 0:
            raise NotFound(f"The serving {serving.id} does not exist.", code="serving_not_found")
        return self.get_serving(serving.id)

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

    # API keys: only a hash of the secret is stored.

    def create_key(
        self, serving_id: int, name: str = "", expires_at_unix_ms: int = 0
    ) -> tuple[ApiKeyRecord, str]:
        self.get_serving(serving_id)
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        key = ApiKeyRecord(
            id="key_" + secrets.token_hex(8),
            serving_id=serving_id,
            name=name,
            created_at_unix_ms=now_ms(),
            expires_at_unix_ms=expires_at_unix_ms,
            secret_prefix=secret[: len(SECRET_PREFIX) + SECRET_PREFIX_SHOWN],
        )
        self._write(
            "INSERT INTO api_keys (id, serving_id, name, secret_sha256, created_at_unix_ms,"
            " expires_at_unix_ms, revoked_at_unix_ms, secret_prefix) VALUES (?,?,?,?,?,?,?,?)",
            (
                key.id,
                key.serving_id,
                key.name,
                hash_secret(secret),
                key.created_at_unix_ms,
                key.expires_at_unix_ms,
                0,
                key.secret_prefix,
            ),
        )
        return key, secret

    def list_keys(self, serving_id: int) -> list[ApiKeyRecord]:
        # Last use from the usage log (index usage_by_key), so a request writes nothing more.
        rows = self._read(
            "SELECT k.*, (SELECT MAX(u.created_at_unix_ms) FROM usage u"
            " WHERE u.api_key_id = k.id) AS last_used_at_unix_ms"
            " FROM api_keys k WHERE k.serving_id = ? ORDER BY k.created_at_unix_ms DESC",
            (serving_id,),
        )
        return [
            replace(_key_from_row(row), last_used_at_unix_ms=row["last_used_at_unix_ms"] or 0)
            for row in rows
        ]

    def revoke_key(self, key_id: str) -> None:
        cursor = self._write(
            "UPDATE api_keys SET revoked_at_unix_ms = ? WHERE id = ? AND revoked_at_unix_ms = 0",
            (now_ms(), key_id),
        )
        if cursor.rowcount == 0 and not self._read("SELECT 1 FROM api_keys WHERE id=?", (key_id,)):
            raise NotFound(f"The API key {key_id} does not exist.")

    def verify_key(self, secret: str) -> ApiKeyRecord:
        digest = hash_secret(secret)
        rows = self._read("SELECT * FROM api_keys WHERE secret_sha256 = ?", (digest,))
        # The lookup is by hash; compare in constant time anyway.
        if not rows or not hmac.compare_digest(rows[0]["secret_sha256"], digest):
            raise Unauthenticated("Incorrect API key provided.", code="invalid_api_key")
        key = _key_from_row(rows[0])
        if not key.usable_at(now_ms()):
            raise Unauthenticated("The API key is revoked or expired.", code="invalid_api_key")
        return key

    # Usage

    def record_usage(self, records: list[UsageRecord]) -> None:
        """Appends records in one durable transaction; a replayed request id is ignored."""
        if not records:
            return
        placeholders = ",".join("?" * len(_USAGE_COLUMNS))
        self._write_many(
            f"INSERT OR IGNORE INTO usage ({','.join(_USAGE_COLUMNS)}) VALUES ({placeholders})",
            [
                (
                    r.request_id,
                    r.created_at_unix_ms,
                    r.serving_id,
                    r.model,
                    r.api_key_id,
                    r.user_id,
                    r.prompt_tokens,
                    r.completion_tokens,
                    r.latency_ms,
                    r.ttft_ms,
                    int(r.status),
                    int(r.blocked),
                    r.endpoint,
                )
                for r in records
            ],
        )

    def query_usage(self, query: UsageQuery) -> UsageSummary:
        clauses, args = [], []
        for column, value in (
            ("serving_id", query.serving_id),
            ("api_key_id", query.api_key_id),
            ("user_id", query.user_id),
            ("endpoint", query.endpoint),
        ):
            if value:
                clauses.append(f"{column} = ?")
                args.append(value)
        if query.since_unix_ms:
            clauses.append("created_at_unix_ms >= ?")
            args.append(query.since_unix_ms)
        if query.until_unix_ms:
            clauses.append("created_at_unix_ms < ?")
            args.append(query.until_unix_ms)
        if query.status is not None:
            clauses.append("status = ?")
            args.append(int(query.status))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sums = "COUNT(*), SUM(prompt_tokens), SUM(completion_tokens)"
        by_endpoint = [
            EndpointUsage(*row)
            for row in self._read(
                f"SELECT endpoint, {sums} FROM usage {where} GROUP BY endpoint ORDER BY endpoint",
                tuple(args),
            )
        ]
        by_time = []
        if query.bucket_ms:
            # The newest buckets, put back in time order.
            by_time = [
                TimeUsage(*row)
                for row in self._read(
                    f"SELECT (created_at_unix_ms / ?) * ? AS bucket, {sums} FROM usage {where}"
                    " GROUP BY bucket ORDER BY bucket DESC LIMIT 1000",
                    (query.bucket_ms, query.bucket_ms, *args),
                )
            ][::-1]
        by_user = [
            UserUsage(*row)
            for row in self._read(
                f"SELECT user_id, {sums} FROM usage {where}"
                " GROUP BY user_id ORDER BY COUNT(*) DESC, user_id LIMIT 100",
                tuple(args),
            )
        ]
        rows = self._read(
            f"SELECT * FROM usage {where} ORDER BY created_at_unix_ms DESC LIMIT ?",
            (*args, query.limit or 100),
        )
        # The routes partition the matches, so their totals add up to the overall ones.
        return UsageSummary(
            records=[_usage_from_row(row) for row in rows],
            total_requests=sum(e.requests for e in by_endpoint),
            prompt_tokens=sum(e.prompt_tokens for e in by_endpoint),
            completion_tokens=sum(e.completion_tokens for e in by_endpoint),
            by_endpoint=by_endpoint,
            by_time=by_time,
            by_user=by_user,
        )


def _name_taken(name: str) -> AlreadyExists:
    return AlreadyExists(f"A model named `{name}` already exists.", param="name")


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
        graph=GraphKind(row["graph"]),
    )


def _serving_settings(serving: ServingRecord) -> tuple:
    """Column values of a serving's settings, in schema order (name .. limits)."""
    return (
        serving.name,
        serving.model,
        serving.system_prompt,
        json.dumps(serving.default_sampling.to_dict()),
        serving.rag_collection,
        json.dumps(serving.moderation.to_dict()),
        json.dumps(dataclasses.asdict(serving.limits)),
    )


def _key_from_row(row: sqlite3.Row) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row["id"],
        serving_id=row["serving_id"],
        name=row["name"],
        created_at_unix_ms=row["created_at_unix_ms"],
        expires_at_unix_ms=row["expires_at_unix_ms"],
        revoked_at_unix_ms=row["revoked_at_unix_ms"],
        secret_prefix=row["secret_prefix"],
    )


def _usage_from_row(row: sqlite3.Row) -> UsageRecord:
    values = {column: row[column] for column in _USAGE_COLUMNS}
    values["status"] = UsageStatus(values["status"])
    values["blocked"] = bool(values["blocked"])
    return UsageRecord(**values)


def _serving_from_row(row: sqlite3.Row) -> ServingRecord:
    return ServingRecord(
        id=row["id"],
        name=row["name"],
        model=row["model"],
        system_prompt=row["system_prompt"],
        default_sampling=SamplingParams.from_dict(json.loads(row["default_sampling"])),
        rag_collection=row["rag_collection"],
        created_at_unix_ms=row["created_at_unix_ms"],
        moderation=ModerationPolicy.from_dict(json.loads(row["moderation"])),
        limits=Limits(**json.loads(row["limits"])),
    )
