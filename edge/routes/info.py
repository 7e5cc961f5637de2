"""GET|POST /v1/info: version, served models with their prompt template, context size and
default sampling, and the vector store configuration, as the node API reports them.
Never secrets; where the store lives is an operator's detail, shown to the admin token only."""

from __future__ import annotations

import importlib.metadata
import logging

from fastapi import APIRouter, Request

from edge.auth import caller_of
from edge.state import EdgeState
from services.common.domain import PLATFORM_SAMPLING
from services.common.errors import ServiceError
from services.common.records import ModelKind, ModelRecord

logger = logging.getLogger(__name__)
router = APIRouter()


def _default_sampling(model: ModelRecord) -> dict:
    """What a request that sets nothing gets: the model's defaults, then the platform's."""
    if model.kind is not ModelKind.CHAT:
        return {}
    return model.default_sampling.with_defaults(PLATFORM_SAMPLING).to_dict()


# POST too, as the node API's docs call it; one route per method keeps operation ids unique.
@router.get("/v1/info")
@router.post("/v1/info")
async def get_info(request: Request) -> dict:
    state: EdgeState = request.app.state.edge
    models = await state.catalog.models()
    try:
        store = await state.retrieval.store_info()
        vector_store = {
            "kind": store.kind,
            "collection": store.default_collection,
            "limit": store.default_limit,
            "score_threshold": round(store.default_score_threshold, 6),
            "embedding_model": store.embedding_model,
            "chunk_tokens": store.chunk_tokens,
            "overlap_tokens": store.overlap_tokens,
        }
        if caller_of(request).admin:
            vector_store["location"] = store.location
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
                "default_sampling": _default_sampling(model),
            }
            for model in models
        ],
        "vector_store": vector_store,
    }
