"""Who is calling: Bearer API keys (verified by the registry, cached briefly) and the
serving and model a request is allowed to use."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Path, Request

from edge.protocol import MAX_INT64
from services.common.errors import PermissionDenied, Unauthenticated, Unavailable
from services.common.records import ApiKeyRecord, ModelKind, ModelRecord, ServingRecord
from services.common.registry_client import RegistryClient

USER_ID_HEADER = "x-genos-user-id"


@dataclass(frozen=True)
class Caller:
    """Who is calling and which serving (the tenant) it acts for, resolved once per request."""

    # The API key; None for the admin token or with auth switched off.
    key: ApiKeyRecord | None
    admin: bool
    # The route's serving, else the key's; None when acting for no serving (the admin token or
    # auth off on a plain route), which works in the shared namespace.
    serving_id: int | None

    @property
    def tenant(self) -> int:
        """The namespace of its collections and files: the serving id, 0 for the shared one."""
        return self.serving_id or 0


@dataclass(frozen=True)
class Access:
    """What a request may use: its serving (None only without a key), model and caller."""

    model: ModelRecord
    serving: ServingRecord | None
    caller: Caller
    user_id: str


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


def is_admin_token(token: str, admin_token: str | None) -> bool:
    return bool(admin_token) and hmac.compare_digest(token.encode(), admin_token.encode())


def check_admin(request: Request, admin_token: str | None) -> None:
    if not admin_token:
        raise PermissionDenied("The admin API is disabled: no admin token is configured.")
    if not is_admin_token(bearer_token(request), admin_token):
        raise Unauthenticated("Incorrect admin token.", code="invalid_api_key")


def serving_id_of(request: Request) -> int | None:
    raw = request.path_params.get("serving_id")
    return None if raw is None else int(raw)


def user_id_of(request: Request, body_user: str | None = None) -> str:
    return request.headers.get(USER_ID_HEADER) or body_user or ""


def caller_of(request: Request) -> Caller:
    return request.state.caller


async def authenticate(request: Request) -> None:
    """Router dependency of every API route: who calls, and for which serving.

    Runs before the body is validated, so a bad key is 401 and another serving's key on a
    serving route is 403 whatever the body, before anything is done. A key acts only for its
    own serving; the admin token may act for any serving (on its route) or for none."""
    state = request.app.state.edge
    settings = state.settings
    key, admin = None, False
    if settings.auth_enabled:
        token = bearer_token(request)
        admin_token = settings.admin_token.get_secret_value() if settings.admin_token else None
        admin = is_admin_token(token, admin_token)
        if not admin:
            key = await state.keys.verify(token)
    serving_id = serving_id_of(request)
    if serving_id is not None:
        if key is not None and key.serving_id != serving_id:
            raise PermissionDenied(f"This API key is not valid for serving {serving_id}.")
        await state.catalog.serving(serving_id)
    elif key is not None:
        serving_id = key.serving_id
    request.state.caller = Caller(key, admin, serving_id)


async def authenticate_serving(
    request: Request,
    serving_id: Annotated[int, Path(ge=0, le=MAX_INT64, description="The serving to act for.")],
) -> None:
    """`authenticate` for the routes under a serving's prefix (declares its path parameter)."""
    await authenticate(request)


async def resolve_access(
    request: Request, requested_model: str | None, kind: ModelKind, body_user: str | None = None
) -> Access:
    """Chat on serving routes: the serving decides the model. Chat on plain routes: the named
    model, which the key's serving must serve. Embeddings: the named model, for any caller
    (embedding models are shared by every serving), accounted to the caller's serving."""
    state = request.app.state.edge
    caller = caller_of(request)
    serving = await state.catalog.serving_or_none(caller.serving_id)
    if kind is ModelKind.EMBEDDING:
        model = await state.catalog.model(requested_model or "", kind)
    elif serving_id_of(request) is not None:
        model = await state.catalog.model(serving.model, kind)
    else:
        model = await state.catalog.model(requested_model or "", kind)
        if serving is not None:
            if serving.model != model.name:
                raise PermissionDenied(
                    f"This API key is not valid for the model `{model.name}`.", param="model"
                )
        else:
            # No serving to act for (admin token, auth off): the model's first serving's settings.
            servings = await state.catalog.servings_of(model.name)
            serving = servings[0] if servings else None
    return Access(model, serving, caller, user_id_of(request, body_user))
