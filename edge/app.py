"""Builds the edge's FastAPI app; tests build it the same way."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from edge.errors import install_error_handlers
from edge.routes import chat, embeddings, models
from edge.settings import EdgeSettings
from edge.state import EdgeState


def build_app(settings: EdgeSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.edge = EdgeState.connect(settings)
        try:
            yield
        finally:
            await app.state.edge.close()

    app = FastAPI(title="llmserve", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(chat.router)
    app.include_router(models.router)
    app.include_router(embeddings.router)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    return app
