"""Documents for retrieval: POST|GET /v1/files, DELETE /v1/files/{id} (OpenAI's file objects),
POST /v1/create/rag (upload + chunk + embed + store in one call, as the node API offers) and
/v1/collections (list, create, delete)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, UploadFile
from pydantic import Field

from edge.protocol import OpenAIModel
from edge.state import EdgeState
from services.common.errors import InvalidArgument

router = APIRouter()

ChunkTokens = Annotated[int, Field(ge=1, le=8192)]
OverlapTokens = Annotated[int, Field(ge=0, le=8191)]


def _state(request: Request) -> EdgeState:
    return request.app.state.edge


async def _read(file: UploadFile) -> bytes:
    content = await file.read()
    if not content:
        raise InvalidArgument("The uploaded file is empty.", param="file")
    return content


@router.post("/v1/files")
async def create_file(
    request: Request, file: UploadFile, purpose: Annotated[str, Form()] = "assistants"
) -> dict:
    content = await _read(file)
    return await _state(request).retrieval.upload_file(file.filename or "", content, purpose)


@router.get("/v1/files")
async def list_files(
    request: Request,
    after: str = "",
    limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
    purpose: str = "",
) -> dict:
    """Newest first, with OpenAI's cursor (`after`, `has_more`), which the SDKs follow."""
    files = await _state(request).retrieval.list_files()
    if purpose:
        files = [f for f in files if f["purpose"] == purpose]
    if after:
        ids = [f["id"] for f in files]
        files = files[ids.index(after) + 1 :] if after in ids else []
    page = files[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(files) > limit,
    }


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, request: Request) -> dict:
    await _state(request).retrieval.delete_file(file_id)
    return {"id": file_id, "object": "file", "deleted": True}


@router.post("/v1/create/rag")
async def create_rag(
    request: Request,
    file: UploadFile | None = None,
    file_id: Annotated[str, Form()] = "",
    vdb_collection_name: Annotated[str, Form()] = "",
    chunk_capacity: Annotated[ChunkTokens | None, Form()] = None,
    chunk_overlap: Annotated[OverlapTokens | None, Form()] = None,
) -> dict:
    """Ingests an uploaded `file` (or a stored `file_id`) into a collection, created with
    `chunk_capacity`/`chunk_overlap` tokens if new. Ingesting the same content twice adds
    nothing (`created: false`)."""
    state = _state(request)
    if (file is None) == (not file_id):
        raise InvalidArgument("Give either `file` or `file_id`.", param="file")
    content = await _read(file) if file is not None else None
    result = await state.retrieval.ingest(
        vdb_collection_name,
        file.filename or "" if file is not None else "",
        file.content_type or "" if file is not None else "",
        content,
        file_id,
        chunk_capacity,
        chunk_overlap,
        state.settings.request_timeout_s,
    )
    document = result.document
    return {
        "object": "rag.document",
        "collection": result.collection,
        "created": result.created,
        "id": document.id,
        "filename": document.filename,
        "media_type": document.media_type,
        "chunks": document.chunk_count,
        "usage": {"prompt_tokens": result.embedded_tokens, "total_tokens": result.embedded_tokens},
    }


class CreateCollectionRequest(OpenAIModel):
    name: str = Field(min_length=1, max_length=64)
    chunk_tokens: ChunkTokens | None = None
    overlap_tokens: OverlapTokens | None = None


@router.get("/v1/collections")
async def list_collections(request: Request) -> dict:
    return {"object": "list", "data": await _state(request).retrieval.list_collections()}


@router.post("/v1/collections")
async def create_collection(body: CreateCollectionRequest, request: Request) -> dict:
    return await _state(request).retrieval.create_collection(
        body.name, body.chunk_tokens, body.overlap_tokens
    )


@router.delete("/v1/collections/{name}")
async def delete_collection(name: str, request: Request) -> dict:
    await _state(request).retrieval.delete_collection(name)
    return {"name": name, "object": "collection", "deleted": True}
