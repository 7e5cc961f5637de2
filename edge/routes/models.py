"""GET|POST /v1/models: the models a client may name (POST as the node API's docs use it)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from edge.state import EdgeState

router = APIRouter()


@router.api_route("/v1/models", methods=["GET", "POST"])
async def list_models(request: Request) -> dict:
    state: EdgeState = request.app.state.edge
    models = await state.catalog.models()
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
            for model in models
        ],
    }
