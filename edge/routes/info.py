"""GET|POST /v1/info: version, served models with their prompt template, context size and
default sampling, and the vector store configuration, as the node API reports them.
Never secrets: the store reports a location without credentials."""

from __future__ import annotations

import importlib.metadata
import logging

from fastapi import APIRouter, Request

from edge.state import EdgeState
from services.common.errors import ServiceError

logger = logging.getLogger(__name__)
router = APIRouter()


@router.api_route("/v1/info", methods=["GET", "POST"])
async def get_info(request: Request) -> dict:
    state: EdgeState = request.app.state.edge
    models = await state.catalog.models()
    try:
        store = await state.retrieval.store_info()
        vector_store = {
            "kind": store.kind,
            "location": store.location,
            "collection": store.default_collection,
            "limit": store.default_limit,
            "score_threshold": round(store.default_score_threshold, 6),
            "embedding_model": store.embedding_model,
            "chunk_tokens": store.default_chunking.chunk_tokens,
            "overlap_tokens": store.default_chunking.overlap_tokens,
        }
    except ServiceError as error:
        # The rest of the node's description is still worth answering with.
        logger.warning("vector store info unavailable: %s", error.message)
        vector_store = None
    return {
        "version": importlib.metadata.version("llmserve"),
        "models": [
            {
                "name": model.name,
                "kind": model.kind.name.lower(),
                "prompt_template": model.chat_template,
                "context_size": model.context_length,
                "default_sampling": model.default_sampling.to_dict(),
            }
            for model in models
        ],
        "vector_store": vector_store,
    }
