"""The admin API under /admin/v1: servings, their API keys and the usage log.

Protected by the admin token (EDGE_ADMIN_TOKEN), never by serving keys.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from edge.auth import check_admin
from edge.protocol import MAX_INT32, MAX_INT64, MAX_UNIX_S, TokenCount, ValidUnicode
from edge.state import EdgeState
from services.common.domain import SamplingParams
from services.common.records import (
    ApiKeyRecord,
    Limits,
    ModerationAction,
    ModerationPolicy,
    ServingRecord,
    UsageQuery,
    UsageStatus,
)


async def require_admin(request: Request) -> None:
    settings = request.app.state.edge.settings
    check_admin(request, settings.admin_token.get_secret_value() if settings.admin_token else None)


router = APIRouter(prefix="/admin/v1", dependencies=[Depends(require_admin)])


class AdminModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class DefaultSamplingIn(AdminModel):
    """A serving's defaults, used where a request sets nothing; bounded as requests are."""

    n_predict: TokenCount | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0, le=MAX_INT32)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=10)] | None = None
    stop: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=4)] = []

    def to_domain(self) -> SamplingParams:
        return SamplingParams.from_dict(self.model_dump())


class ModerationIn(AdminModel):
    enabled: bool = False
    blocked_terms: list[str] = []
    action: Literal["cut", "withhold"] = "cut"

    def to_domain(self) -> ModerationPolicy:
        action = ModerationAction[self.action.upper()]
        return ModerationPolicy(self.enabled, tuple(self.blocked_terms), action)


Count = Annotated[int, Field(ge=0, le=MAX_INT32)]
ServingId = Annotated[int, Path(ge=0, le=MAX_INT64)]


class LimitsIn(AdminModel):
    requests_per_minute: Count = 0
    tokens_per_minute: Count = 0
    max_concurrent_requests: Count = 0
    key_requests_per_minute: Count = 0
    key_tokens_per_minute: Count = 0
    key_max_concurrent_requests: Count = 0


class ServingIn(ValidUnicode, AdminModel):
    name: str = ""
    model: str = Field(min_length=1)
    system_prompt: str = ""
    default_sampling: DefaultSamplingIn = DefaultSamplingIn()
    rag_collection: str = ""
    moderation: ModerationIn = ModerationIn()
    limits: LimitsIn = LimitsIn()

    def to_domain(self, serving_id: int = 0) -> ServingRecord:
        return ServingRecord(
            id=serving_id,
            name=self.name or self.model,
            model=self.model,
            system_prompt=self.system_prompt,
            default_sampling=self.default_sampling.to_domain(),
            rag_collection=self.rag_collection,
            moderation=self.moderation.to_domain(),
            limits=Limits(**self.limits.model_dump()),
        )


class KeyIn(ValidUnicode, AdminModel):
    name: str = ""
    # Expiry as Unix seconds; omitted never expires.
    expires_at: Annotated[int, Field(ge=0, le=MAX_UNIX_S)] = 0


def serving_json(serving: ServingRecord) -> dict:
    return {
        "id": serving.id,
        "name": serving.name,
        "model": serving.model,
        "system_prompt": serving.system_prompt,
        "default_sampling": serving.default_sampling.to_dict(),
        "rag_collection": serving.rag_collection,
        "moderation": serving.moderation.to_dict(),
        "limits": dataclasses.asdict(serving.limits),
        "created_at": serving.created_at_unix_ms // 1000,
    }


def key_json(key: ApiKeyRecord) -> dict:
    return {
        "id": key.id,
        "serving_id": key.serving_id,
        "name": key.name,
        "prefix": key.secret_prefix,
        "created_at": key.created_at_unix_ms // 1000,
        "expires_at": key.expires_at_unix_ms // 1000 or None,
        "revoked_at": key.revoked_at_unix_ms // 1000 or None,
        "last_used_at": key.last_used_at_unix_ms // 1000 or None,
    }


def _state(request: Request) -> EdgeState:
    return request.app.state.edge


@router.post("/servings", status_code=201)
async def create_serving(body: ServingIn, request: Request) -> dict:
    serving = await _state(request).registry.create_serving(body.to_domain())
    _state(request).catalog.invalidate()
    return serving_json(serving)


@router.get("/servings")
async def list_servings(request: Request) -> dict:
    servings = await _state(request).registry.list_servings()
    return {"object": "list", "data": [serving_json(s) for s in servings]}


@router.get("/servings/{serving_id:int}")
async def get_serving(serving_id: ServingId, request: Request) -> dict:
    return serving_json(await _state(request).registry.get_serving(serving_id))


@router.put("/servings/{serving_id:int}")
async def update_serving(serving_id: ServingId, body: ServingIn, request: Request) -> dict:
    serving = await _state(request).registry.update_serving(body.to_domain(serving_id))
    _state(request).catalog.invalidate()
    return serving_json(serving)


@router.delete("/servings/{serving_id:int}")
async def delete_serving(serving_id: ServingId, request: Request) -> dict:
    await _state(request).registry.delete_serving(serving_id)
    _state(request).catalog.invalidate()
    return {"id": serving_id, "deleted": True}


@router.post("/servings/{serving_id:int}/keys", status_code=201)
async def create_key(serving_id: ServingId, body: KeyIn, request: Request) -> dict:
    key, secret = await _state(request).registry.create_key(
        serving_id, body.name, body.expires_at * 1000
    )
    # The only time the secret is ever shown.
    return {**key_json(key), "secret": secret}


@router.get("/servings/{serving_id:int}/keys")
async def list_keys(serving_id: ServingId, request: Request) -> dict:
    await _state(request).registry.get_serving(serving_id)
    keys = await _state(request).registry.list_keys(serving_id)
    return {"object": "list", "data": [key_json(k) for k in keys]}


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: str, request: Request) -> dict:
    await _state(request).registry.revoke_key(key_id)
    return {"id": key_id, "revoked": True}


@router.get("/usage")
async def query_usage(
    request: Request,
    serving_id: Annotated[int, Query(ge=0, le=MAX_INT64)] = 0,
    api_key_id: str = "",
    user_id: str = "",
    route: Annotated[str, Query(description="HTTP route, e.g. /v1/embeddings")] = "",
    since: Annotated[int, Query(ge=0, le=MAX_UNIX_S, description="Unix seconds, inclusive")] = 0,
    until: Annotated[int, Query(ge=0, le=MAX_UNIX_S, description="Unix seconds, exclusive")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    status: Literal["ok", "client_error", "server_error", "cancelled"] | None = None,
    bucket: Annotated[
        int, Query(ge=1, le=366 * 86400, description="Width of `by_time` buckets, seconds")
    ]
    | None = None,
) -> dict:
    summary = await _state(request).registry.query_usage(
        UsageQuery(
            serving_id=serving_id,
            api_key_id=api_key_id,
            user_id=user_id,
            endpoint=route,
            since_unix_ms=since * 1000,
            until_unix_ms=until * 1000,
            limit=limit,
            status=UsageStatus[status.upper()] if status else None,
            bucket_ms=(bucket or 0) * 1000,
        )
    )
    return {
        "object": "list",
        "data": [r.to_dict() for r in summary.records],
        "total_requests": summary.total_requests,
        "total_prompt_tokens": summary.prompt_tokens,
        "total_completion_tokens": summary.completion_tokens,
        # Over every match, like the totals above.
        "by_route": [
            {
                "route": e.endpoint,
                "requests": e.requests,
                "prompt_tokens": e.prompt_tokens,
                "completion_tokens": e.completion_tokens,
            }
            for e in summary.by_endpoint
        ],
        # With `bucket`: the newest 1000 non-empty buckets, oldest first.
        "by_time": [
            {
                "start": t.start_unix_ms // 1000,
                "requests": t.requests,
                "prompt_tokens": t.prompt_tokens,
                "completion_tokens": t.completion_tokens,
            }
            for t in summary.by_time
        ],
        # The 100 users with most requests.
        "by_user": [
            {
                "user_id": u.user_id,
                "requests": u.requests,
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
            }
            for u in summary.by_user
        ],
    }
