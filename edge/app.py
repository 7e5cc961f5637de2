"""Builds the edge's FastAPI app; tests build it the same way."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI

from edge.auth import authenticate, authenticate_serving
from edge.body_limit import BodyLimitMiddleware
from edge.console.router import console_router, session_router
from edge.errors import install_error_handlers
from edge.metrics import MetricsMiddleware, metrics_router
from edge.routes import (
    admin,
    admin_models,
    chat,
    completions,
    documents,
    embeddings,
    info,
    models,
    retrieval,
    tokenize,
)
from edge.settings import EdgeSettings
from edge.state import EdgeState
from edge.tracing import TracingMiddleware
from services.common import tracing

SERVING_PREFIX = "/api/gateway/rep/serving/{serving_id:int}"


def build_app(settings: EdgeSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.edge = EdgeState.connect(settings)
        try:
            yield
        finally:
            await app.state.edge.close()
            tracing.flush()

    app = FastAPI(title="llmserve", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
    )
    app.add_middleware(MetricsMiddleware)
    if tracing.enabled():
        # Outermost, so its span covers everything the request does.
        app.add_middleware(TracingMiddleware)

    api = APIRouter()
    for routes in (chat, completions, tokenize, models, embeddings, retrieval, documents, info):
        api.include_router(routes.router)
    # Every API route authenticates first, as a router dependency, so none can forget it.
    app.include_router(api, dependencies=[Depends(authenticate)])
    # The enterprise gateway's per-serving routes: the serving decides the chat model.
    app.include_router(api, prefix=SERVING_PREFIX, dependencies=[Depends(authenticate_serving)])
    app.include_router(admin.router)
    app.include_router(admin_models.router)
    app.include_router(metrics_router(public=settings.metrics_public))
    app.include_router(console_router())
    app.include_router(session_router)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    return app
