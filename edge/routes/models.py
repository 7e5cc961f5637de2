"""GET|POST /v1/models: the models a caller may name (POST as the node API's docs use it)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from edge.auth import serving_id_of
from edge.state import EdgeState
from services.common.errors import PermissionDenied
from services.common.records import ModelKind, ModelRecord

router = APIRouter()


async def _visible_models(request: Request) -> list[ModelRecord]:
    """A serving route shows its model; a key shows its serving's model; no auth shows all.
    Embedding models, shared by every serving, are always shown."""
    state: EdgeState = request.app.state.edge
    serving_id = serving_id_of(request)
    key = request.state.api_key
    if serving_id is None and key is not None:
        serving_id = key.serving_id
    models = await state.catalog.models()
    if serving_id is None:
        return models
    serving = await state.catalog.serving(serving_id)
    if key is not None and key.serving_id != serving.id:
        raise PermissionDenied(f"This API key is not valid for serving {serving.id}.")
    # Embedding models are shared by every serving.
    return [m for m in models if m.name == serving.model or m.kind is ModelKind.EMBEDDING]


@router.api_route("/v1/models", methods=["GET", "POST"])
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
