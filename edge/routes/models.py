"""GET|POST /v1/models: the models a caller may name (POST as the node API's docs use it)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from edge.auth import caller_of
from edge.state import EdgeState
from services.common.records import ModelKind, ModelRecord

router = APIRouter()


async def _visible_models(request: Request) -> list[ModelRecord]:
    """The caller's serving's model, or every model for a caller acting for no serving (the
    admin token, auth off). Embedding models, shared by every serving, are always shown."""
    state: EdgeState = request.app.state.edge
    serving = await state.catalog.serving_or_none(caller_of(request).serving_id)
    models = await state.catalog.models()
    if serving is None:
        return models
    return [m for m in models if m.name == serving.model or m.kind is ModelKind.EMBEDDING]


# POST too, as the node API's docs call it; one route per method keeps operation ids unique.
@router.get("/v1/models")
@router.post("/v1/models")
async def list_models(request: Request) -> dict:
    return {
        "object": "list",
        "data": [
            {
                "id": model.name,
                "object": "model",
                "created": model.created_at_unix_ms // 1000,
                "owned_by": "llmserve",
                "kind": model.kind.name.lower(),
                "context_length": model.context_length,
            }
            for model in await _visible_models(request)
        ],
    }
