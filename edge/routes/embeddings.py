"""POST /v1/embeddings: OpenAI embeddings over the embedding service."""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from pydantic import Field, field_validator

from edge.auth import resolve_access
from edge.protocol import MAX_INT32, RequestBody, texts_or_token_ids
from edge.state import EdgeState
from edge.tracking import track_access
from services.common.records import ModelKind

router = APIRouter()
ENDPOINT = "/v1/embeddings"

# OpenAI's own limit on inputs per request.
MAX_INPUTS = 2048


class EmbeddingRequest(RequestBody):
    model: str = Field(min_length=1)
    # Parsed into a list of strings or a list of token-id lists (the model's own vocabulary).
    input: list[str] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1, le=MAX_INT32)] | None = None
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _parse_input(cls, value):
        if isinstance(value, list) and len(value) > MAX_INPUTS:
            raise ValueError(f"must hold at most {MAX_INPUTS} items")
        return texts_or_token_ids(value, empty_texts=False)


def _encode(vector, encoding_format: str):
    if encoding_format == "base64":
        # Little-endian float32 bytes, which the OpenAI SDKs decode.
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


@router.post(ENDPOINT)
async def create_embedding(body: EmbeddingRequest, request: Request) -> dict:
    state: EdgeState = request.app.state.edge
    body.log_ignored_fields()
    access = await resolve_access(request, body.model, ModelKind.EMBEDDING, body.user)
    tracker = await track_access(request, ENDPOINT, access)
    async with tracker.settling():
        result = await state.embedding.embed(
            access.model.name,
            body.input,
            body.dimensions or 0,
            timeout_s=state.settings.request_timeout_s,
        )
        tracker.prompt_tokens = result.prompt_tokens
    data = []
    for index, vector in enumerate(result.vectors):
        item = {
            "object": "embedding",
            "index": index,
            "embedding": _encode(vector, body.encoding_format),
        }
        if result.truncated[index]:
            item["truncated"] = True
        data.append(item)
    return {
        "object": "list",
        "data": data,
        "model": access.model.name,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
