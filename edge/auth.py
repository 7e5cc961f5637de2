"""Who is calling: Bearer API keys (verified by the registry, cached briefly) and the
serving and model a request is allowed to use."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from fastapi import Request

from services.common.errors import PermissionDenied, Unauthenticated, Unavailable
from services.common.records import ApiKeyRecord, ModelKind, ModelRecord, ServingRecord
from services.common.registry_client import RegistryClient

USER_ID_HEADER = "x-genos-user-id"


@dataclass(frozen=True)
class Access:
    """What a request may use: its serving (None only with auth off), model and caller."""

    model: ModelRecord
    serving: ServingRecord | None
    key: ApiKeyRecord | None
    user_id: str

    @property
    def serving_id(self) -> int:
        return self.serving.id if self.serving else 0


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise Unauthenticated(
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
            code="missing_api_key",
        )
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "Malformed Authorization header; expected 'Bearer YOUR_KEY'.", code="invalid_api_key"
        )
    return token.strip()


class KeyVerifier:
    """Verifies secrets with the registry; results live `ttl_s`, so revocation takes at most that.

    The cache is keyed by a hash of the secret, so secrets are never held as dict keys or logged.
    """

    def __init__(self, registry: RegistryClient, ttl_s: float):
        self._registry = registry
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[float, ApiKeyRecord]] = {}

    async def verify(self, secret: str) -> ApiKeyRecord:
        digest = hashlib.sha256(secret.encode()).hexdigest()
        cached = self._cache.get(digest)
        if cached and time.monotonic() - cached[0] < self._ttl_s:
            return cached[1]
        try:
            key = await self._registry.verify_key(secret)
        except Unavailable:
            # Registry down: keep serving keys verified before (nothing can be revoked meanwhile).
            if cached:
                return cached[1]
            raise
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (time.monotonic(), key)
        return key


def check_admin(request: Request, admin_token: str | None) -> None:
    if not admin_token:
        raise PermissionDenied("The admin API is disabled: no admin token is configured.")
    if not hmac.compare_digest(bearer_token(request).encode(), admin_token.encode()):
        raise Unauthenticated("Incorrect admin token.", code="invalid_api_key")


def serving_id_of(request: Request) -> int | None:
    raw = request.path_params.get("serving_id")
    return None if raw is None else int(raw)


def user_id_of(request: Request, body_user: str | None = None) -> str:
    return request.headers.get(USER_ID_HEADER) or body_user or ""


async def resolve_access(
    request: Request, requested_model: str | None, kind: ModelKind, body_user: str | None = None
) -> Access:
    """Chat on serving routes: the serving decides the model. Chat on plain routes: the named
    model, which the key's serving must serve. Embeddings: the named model, for any key."""
    state = request.app.state.edge
    key: ApiKeyRecord | None = request.state.api_key
    serving_id = serving_id_of(request)
    if kind is ModelKind.EMBEDDING:
        # Embedding models are shared by every serving: any valid key may use them, and the
        # request is accounted to the key's (or the route's) serving.
        model = await state.catalog.model(requested_model or "", kind)
        owner = serving_id if serving_id is not None else (key.serving_id if key else None)
        serving = await state.catalog.serving(owner) if owner is not None else None
        if key is not None and serving is not None and key.serving_id != serving.id:
            raise PermissionDenied(f"This API key is not valid for serving {serving.id}.")
        return Access(model, serving, key, user_id_of(request, body_user))
    if serving_id is not None:
        serving = await state.catalog.serving(serving_id)
        if key is not None and key.serving_id != serving.id:
            raise PermissionDenied(f"This API key is not valid for serving {serving.id}.")
        model = await state.catalog.model(serving.model, kind)
    else:
        model = await state.catalog.model(requested_model or "", kind)
        if key is not None:
            serving = await state.catalog.serving(key.serving_id)
            if serving.model != model.name:
                raise PermissionDenied(
                    f"This API key is not valid for the model `{model.name}`.", param="model"
                )
        else:
            servings = await state.catalog.servings_of(model.name)
            serving = servings[0] if servings else None
    return Access(model=model, serving=serving, key=key, user_id=user_id_of(request, body_user))


async def authenticate(request: Request) -> None:
    """Router dependency: runs before body validation, so a bad key is 401 whatever the body."""
    state = request.app.state.edge
    request.state.api_key = None
    if state.settings.auth_enabled:
        request.state.api_key = await state.keys.verify(bearer_token(request))
