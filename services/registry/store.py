"""The registry's persistence (models, servings, API keys, usage) on SQLite or PostgreSQL, one
code path over SQLAlchemy Core (services/registry/database.py picks the engine). Every write
commits before returning: acknowledged means committed.

Several processes may share one database (registry replicas on PostgreSQL, the CLI beside a
server on SQLite): every write is one statement or one transaction that stays correct when
another process writes at the same time, and opening a database upgrades its schema in place
(services/registry/migrations), once, whoever opens it first.

Blocking: callers on an event loop run these methods in a worker thread.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from services.common.database import database_url
from services.common.domain import SamplingParams, now_ms
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    Unauthenticated,
    Unavailable,
)
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
from services.registry.database import create_engine
from services.registry.migrations import upgrade_schema
from services.registry.tables import api_keys, models, servings, usage

# Secrets look like OpenAI keys; the prefix lets scanners recognise leaked ones.
SECRET_PREFIX = "sk-llms-"
# Random characters of a secret kept in clear to tell keys apart (of 43: 24 bits of 256).
SECRET_PREFIX_SHOWN = 4
# INSERT ... ON CONFLICT DO NOTHING, spelled by each dialect's own insert().
_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class RegistryStore:
    def __init__(self, database: Path | str | sa.URL):
        """`database`: a SQLite file path, or a URL (sqlite:///..., postgresql://...)."""
        url = database_url(database)
        # Before the store's own engine exists: a failed upgrade leaves nothing open.
        upgrade_schema(url)
        self._engine = create_engine(url)
        self._insert = _INSERTS[self._engine.dialect.name]

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _transaction(self) -> Iterator[sa.Connection]:
        """One transaction, committed on leaving. A database that cannot be reached (or a
        SQLite file locked past its timeout) is Unavailable: 503 at the edge, and a read that
        Envoy retries on another replica, rather than an internal error."""
        try:
            with self._engine.begin() as connection:
                yield connection
        except sa.exc.OperationalError as error:
            raise Unavailable("The registry's database is unavailable.") from error

    def _write(self, statement: sa.Executable, rows: list[dict] | None = None) -> sa.CursorResult:
        """Committed before it returns."""
        with self._transaction() as connection:
            return connection.execute(statement, rows)

    def _read(self, statement: sa.Executable) -> list[sa.Row]:
        with self._transaction() as connection:
            return connection.execute(statement).all()

    # Models

    def add_model(self, model: ModelRecord) -> ModelRecord:
        model = _with_created(model)
        try:
            self._write(models.insert().values(_model_values(model)))
        except sa.exc.IntegrityError as error:
            raise _name_taken(model.name) from error
        return model

    def check_model_name_free(self, name: str) -> None:
        """Before an import's minutes of export: a taken name fails at once (add_model still
        guards the race with another import of the same name)."""
        if self._read(sa.select(models.c.name).where(models.c.name == name)):
            raise _name_taken(name)

    def get_model(self, name: str) -> ModelRecord:
        rows = self._read(models.select().where(models.c.name == name))
        if not rows:
            raise NotFound(f"The model `{name}` does not exist.", code="model_not_found")
        return _model_from_row(rows[0])

    def list_models(self, kind: ModelKind | None = None) -> list[ModelRecord]:
        query = models.select().order_by(models.c.name)
        if kind is not None:
            query = query.where(models.c.kind == int(kind))
        return [_model_from_row(row) for row in self._read(query)]

    def delete_model(self, name: str) -> None:
        try:
            deleted = self._write(models.delete().where(models.c.name == name)).rowcount
        except sa.exc.IntegrityError as error:
            # The foreign key from servings decides, so a serving created meanwhile counts too.
            users = self._read(servings.select().where(servings.c.model == name))
            ids = ", ".join(str(row.id) for row in users)
            raise FailedPrecondition(f"The model `{name}` is used by servings {ids}.") from error
        if deleted == 0:
            raise NotFound(f"The model `{name}` does not exist.", code="model_not_found")

    # Servings

    def add_serving(self, serving: ServingRecord) -> ServingRecord:
        serving = _with_created(serving)
        values = {**_serving_settings(serving), "created_at_unix_ms": serving.created_at_unix_ms}
        try:
            result = self._write(servings.insert().values(values))
        except sa.exc.IntegrityError as error:
            raise _model_not_found(serving.model) from error
        return self.get_serving(result.inserted_primary_key[0])

    def serving_for_model(self, serving: ServingRecord) -> ServingRecord:
        """The lowest-numbered serving of `serving.model`, created as `serving` if it has none.

        Atomic, so replicas bootstrapping one database at once make one serving: the model's row
        is locked first (FOR UPDATE on PostgreSQL; SQLite's BEGIN IMMEDIATE locks everything)."""
        serving = _with_created(serving)
        with self._transaction() as connection:
            locked = connection.execute(
                sa.select(models.c.name).where(models.c.name == serving.model).with_for_update()
            ).all()
            if not locked:
                raise _model_not_found(serving.model)
            existing = connection.execute(
                sa.select(servings.c.id)
                .where(servings.c.model == serving.model)
                .order_by(servings.c.id)
                .limit(1)
            ).scalar()
            if existing is None:
                values = {
                    **_serving_settings(serving),
                    "created_at_unix_ms": serving.created_at_unix_ms,
                }
                result = connection.execute(servings.insert().values(values))
                existing = result.inserted_primary_key[0]
        return self.get_serving(existing)

    def update_serving(self, serving: ServingRecord) -> ServingRecord:
        try:
            result = self._write(
                servings.update()
                .where(servings.c.id == serving.id)
                .values(_serving_settings(serving))
            )
        except sa.exc.IntegrityError as error:
            raise _model_not_found(serving.model) from error
        if result.rowcount == 0:
            raise NotFound(f"The serving {serving.id} does not exist.", code="serving_not_found")
        return self.get_serving(serving.id)

    def get_serving(self, serving_id: int) -> ServingRecord:
        rows = self._read(servings.select().where(servings.c.id == serving_id))
        if not rows:
            raise NotFound(f"The serving {serving_id} does not exist.", code="serving_not_found")
        return _serving_from_row(rows[0])

    def list_servings(self) -> list[ServingRecord]:
        return [_serving_from_row(row) for row in self._read(servings.select().order_by("id"))]

    def delete_serving(self, serving_id: int) -> None:
        if self._write(servings.delete().where(servings.c.id == serving_id)).rowcount == 0:
            raise NotFound(f"The serving {serving_id} does not exist.", code="serving_not_found")

    # API keys: only a hash of the secret is stored.

    def create_key(
        self, serving_id: int, name: str = "", expires_at_unix_ms: int = 0
    ) -> tuple[ApiKeyRecord, str]:
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        key = ApiKeyRecord(
            id="key_" + secrets.token_hex(8),
            serving_id=serving_id,
            name=name,
            created_at_unix_ms=now_ms(),
            expires_at_unix_ms=expires_at_unix_ms,
            secret_prefix=secret[: len(SECRET_PREFIX) + SECRET_PREFIX_SHOWN],
        )
        values = dataclasses.asdict(key)
        del values["last_used_at_unix_ms"]  # from the usage log, never stored
        try:
            self._write(api_keys.insert().values(**values, secret_sha256=hash_secret(secret)))
        except sa.exc.IntegrityError as error:
            # The foreign key: the serving does not exist (or was deleted meanwhile).
            raise NotFound(
                f"The serving {serving_id} does not exist.", code="serving_not_found"
            ) from error
        return key, secret

    def list_keys(self, serving_id: int) -> list[ApiKeyRecord]:
        # Last use from the usage log (index usage_by_key), so a request writes nothing more.
        last_used = (
            sa.select(sa.func.max(usage.c.created_at_unix_ms))
            .where(usage.c.api_key_id == api_keys.c.id)
            .scalar_subquery()
        )
        rows = self._read(
            sa.select(api_keys, last_used.label("last_used_at_unix_ms"))
            .where(api_keys.c.serving_id == serving_id)
            .order_by(api_keys.c.created_at_unix_ms.desc())
        )
        return [_key_from_row(row) for row in rows]

    def revoke_key(self, key_id: str) -> None:
        result = self._write(
            api_keys.update()
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at_unix_ms == 0)
            .values(revoked_at_unix_ms=now_ms())
        )
        if result.rowcount == 0 and not self._read(
            sa.select(api_keys.c.id).where(api_keys.c.id == key_id)
        ):
            raise NotFound(f"The API key {key_id} does not exist.")

    def verify_key(self, secret: str) -> ApiKeyRecord:
        digest = hash_secret(secret)
        rows = self._read(api_keys.select().where(api_keys.c.secret_sha256 == digest))
        # The lookup is by hash; compare in constant time anyway.
        if not rows or not hmac.compare_digest(rows[0].secret_sha256, digest):
            raise Unauthenticated("Incorrect API key provided.", code="invalid_api_key")
        key = _key_from_row(rows[0])
        if not key.usable_at(now_ms()):
            raise Unauthenticated("The API key is revoked or expired.", code="invalid_api_key")
        return key

    # Usage

    def record_usage(self, records: list[UsageRecord]) -> None:
        """Appends records in one durable transaction; a replayed request id is ignored, even
        when another replica writes the same one at the same time."""
        if not records:
            return
        rows = [
            {
                **dataclasses.asdict(r),
                "status": int(r.status),
                "blocked": int(r.blocked),
            }
            for r in records
        ]
        self._write(self._insert(usage).on_conflict_do_nothing(), rows)

    def query_usage(self, query: UsageQuery) -> UsageSummary:
        where = [
            getattr(usage.c, column) == value
            for column, value in (
                ("serving_id", query.serving_id),
                ("api_key_id", query.api_key_id),
                ("user_id", query.user_id),
                ("endpoint", query.endpoint),
            )
            if value
        ]
        if query.since_unix_ms:
            where.append(usage.c.created_at_unix_ms >= query.since_unix_ms)
        if query.until_unix_ms:
            where.append(usage.c.created_at_unix_ms < query.until_unix_ms)
        if query.status is not None:
            where.append(usage.c.status == int(query.status))
        sums = (
            sa.func.count(),
            sa.func.sum(usage.c.prompt_tokens),
            sa.func.sum(usage.c.completion_tokens),
        )

        def totals(kind, key, order, limit=None) -> list:
            rows = self._read(
                sa.select(key, *sums).where(*where).group_by(key).order_by(*order).limit(limit)
            )
            return [kind(row[0], *map(int, row[1:])) for row in rows]

        by_endpoint = totals(EndpointUsage, usage.c.endpoint, [usage.c.endpoint])
        by_time = []
        if query.bucket_ms:
            # Floor division (`//`) on both engines; the newest buckets, back in time order.
            width = query.bucket_ms
            start = (usage.c.created_at_unix_ms // width * width).label("bucket")
            by_time = totals(TimeUsage, start, [start.desc()], 1000)[::-1]
        by_user = totals(UserUsage, usage.c.user_id, [sa.func.count().desc(), usage.c.user_id], 100)
        rows = self._read(
            usage.select()
            .where(*where)
            .order_by(usage.c.created_at_unix_ms.desc())
            .limit(query.limit or 100)
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


def _model_not_found(name: str) -> NotFound:
    return NotFound(f"The model `{name}` does not exist.", code="model_not_found")


def _model_values(model: ModelRecord) -> dict:
    return {
        **dataclasses.asdict(model),
        "kind": int(model.kind),
        "source_format": int(model.source_format),
        "default_sampling": json.dumps(model.default_sampling.to_dict()),
        "graph": int(model.graph),
    }


def _model_from_row(row: sa.Row) -> ModelRecord:
    values = dict(row._mapping)
    return ModelRecord(
        **values
        | {
            "kind": ModelKind(values["kind"]),
            "source_format": SourceFormat(values["source_format"]),
            "default_sampling": SamplingParams.from_dict(json.loads(values["default_sampling"])),
            "graph": GraphKind(values["graph"]),
        }
    )


def _serving_settings(serving: ServingRecord) -> dict:
    """Column values of a serving's settings: all but its id and creation time."""
    return {
        "name": serving.name,
        "model": serving.model,
        "system_prompt": serving.system_prompt,
        "default_sampling": json.dumps(serving.default_sampling.to_dict()),
        "rag_collection": serving.rag_collection,
        "moderation": json.dumps(serving.moderation.to_dict()),
        "limits": json.dumps(dataclasses.asdict(serving.limits)),
    }


def _serving_from_row(row: sa.Row) -> ServingRecord:
    values = dict(row._mapping)
    return ServingRecord(
        **values
        | {
            "default_sampling": SamplingParams.from_dict(json.loads(values["default_sampling"])),
            "moderation": ModerationPolicy.from_dict(json.loads(values["moderation"])),
            "limits": Limits(**json.loads(values["limits"])),
        }
    )


def _key_from_row(row: sa.Row) -> ApiKeyRecord:
    values = dict(row._mapping)
    del values["secret_sha256"]
    values["last_used_at_unix_ms"] = values.get("last_used_at_unix_ms") or 0
    return ApiKeyRecord(**values)


def _usage_from_row(row: sa.Row) -> UsageRecord:
    values = dict(row._mapping)
    values["status"] = UsageStatus(values["status"])
    values["blocked"] = bool(values["blocked"])
    return UsageRecord(**values)
