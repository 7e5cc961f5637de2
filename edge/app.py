"""Builds the edge's FastAPI app; tests build it the same way."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from edge.errors import install_error_handlers
from edge.routes import chat, documents, embeddings, info, models, retrieval
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
    app.include_router(retrieval.router)
    app.include_router(documents.router)
    app.include_router(info.router)
    # Grounded chat reads the serving's RAG collection here; issue 5 serves every route
    # under this prefix with the serving's auth and model.
    app.include_router(chat.router, prefix="/api/gateway/rep/serving/{serving_id}")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    return app
