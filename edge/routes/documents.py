"""Documents for retrieval: POST|GET /v1/files, DELETE /v1/files/{id} (OpenAI's file objects),
POST /v1/create/rag (upload + chunk + embed + store in one call, as the node API offers) and
/v1/collections (list, create, delete, and a collection's chunks).

Everything acts in the caller's namespace (its serving's): another serving's collections and
files do not exist for it. The admin token on a plain route lists every serving's."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, UploadFile
from pydantic import Field

from edge.auth import Caller, caller_of, user_id_of
from edge.protocol import MAX_INT32, RequestBody
from edge.retrieval_client import Collection, StoredFile
from edge.state import EdgeState
from edge.tracking import track
from services.common.errors import InvalidArgument

router = APIRouter()

ChunkTokens = Annotated[int, Field(ge=1, le=8192)]
OverlapTokens = Annotated[int, Field(ge=0, le=8191)]
CREATE_RAG = "/v1/create/rag"


def _state(request: Request) -> EdgeState:
    return request.app.state.edge


def _sees_all(caller: Caller) -> bool:
    return caller.admin and caller.serving_id is None


def _owner(tenant: int, caller: Caller) -> dict:
    """The owning serving, shown only in the admin's view of every serving."""
    return {"serving_id": tenant or None} if _sees_all(caller) else {}


def file_json(stored: StoredFile, caller: Caller) -> dict:
    """OpenAI's file object."""
    return {
        "id": stored.id,
        "object": "file",
        "bytes": stored.bytes,
        "created_at": stored.created_at_unix_ms // 1000,
        "filename": stored.filename,
        "purpose": stored.purpose,
        "status": "processed",
        **_owner(stored.tenant, caller),
    }


def collection_json(collection: Collection, caller: Caller) -> dict:
    return {
        "name": collection.name,
        "object": "collection",
        "embedding_model": collection.embedding_model,
        "dimensions": collection.dimensions,
        "chunk_tokens": collection.chunk_tokens,
        "overlap_tokens": collection.overlap_tokens,
        "documents": collection.documents,
        "chunks": collection.chunks,
        "created_at": collection.created_at_unix_ms // 1000,
        **_owner(collection.tenant, caller),
    }


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
    caller = caller_of(request)
    stored = await _state(request).retrieval.upload_file(
        caller.tenant, file.filename or "", content, purpose
    )
    return file_json(stored, caller)


@router.get("/v1/files")
async def list_files(
    request: Request,
    after: str = "",
    limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
    purpose: str = "",
) -> dict:
    """Newest first, with OpenAI's cursor (`after`, `has_more`), which the SDKs follow."""
    caller = caller_of(request)
    files = await _state(request).retrieval.list_files(caller.tenant, _sees_all(caller))
    if purpose:
        files = [f for f in files if f.purpose == purpose]
    if after:
        ids = [f.id for f in files]
        files = files[ids.index(after) + 1 :] if after in ids else []
    page = [file_json(f, caller) for f in files[:limit]]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(files) > limit,
    }


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, request: Request) -> dict:
    await _state(request).retrieval.delete_file(caller_of(request).tenant, file_id)
    return {"id": file_id, "object": "file", "deleted": True}


@router.post(CREATE_RAG)
async def create_rag(
    request: Request,
    file: UploadFile | None = None,
    file_id: Annotated[str, Form()] = "",
    vdb_collection_name: Annotated[str, Form()] = "",
    chunk_capacity: Annotated[ChunkTokens | None, Form()] = None,
    chunk_overlap: Annotated[OverlapTokens | None, Form()] = None,
    user: Annotated[str, Form()] = "",
) -> dict:
    """Ingests an uploaded `file` (or a stored `file_id`) into a collection, created with
    `chunk_capacity`/`chunk_overlap` tokens if new. Ingesting the same content twice adds
    nothing (`created: false`). Billed as the tokens embedded."""
    state = _state(request)
    if (file is None) == (not file_id):
        raise InvalidArgument("Give either `file` or `file_id`.", param="file")
    content = await _read(file) if file is not None else None
    caller = caller_of(request)
    serving = await state.catalog.serving_or_none(caller.serving_id)
    tracker = await track(request, CREATE_RAG, serving=serving, user_id=user_id_of(request, user))
    async with tracker.settling():
        result = await state.retrieval.ingest(
            caller.tenant,
            vdb_collection_name,
            file.filename or "" if file is not None else "",
            file.content_type or "" if file is not None else "",
            content,
            file_id,
            chunk_capacity,
            chunk_overlap,
            state.settings.request_timeout_s,
        )
        tracker.model = result.embedding_model
        tracker.prompt_tokens = result.embedded_tokens
    return {
        "object": "rag.document",
        "collection": result.collection,
        "created": result.created,
        "id": result.document_id,
        "filename": result.filename,
        "media_type": result.media_type,
        "chunks": result.chunks,
        "usage": {"prompt_tokens": result.embedded_tokens, "total_tokens": result.embedded_tokens},
    }


class CreateCollectionRequest(RequestBody):
    name: str = Field(min_length=1, max_length=64)
    chunk_tokens: ChunkTokens | None = None
    overlap_tokens: OverlapTokens | None = None


@router.get("/v1/collections")
async def list_collections(request: Request) -> dict:
    caller = caller_of(request)
    collections = await _state(request).retrieval.list_collections(caller.tenant, _sees_all(caller))
    return {"object": "list", "data": [collection_json(c, caller) for c in collections]}


@router.post("/v1/collections")
async def create_collection(body: CreateCollectionRequest, request: Request) -> dict:
    caller = caller_of(request)
    collection = await _state(request).retrieval.create_collection(
        caller.tenant, body.name, body.chunk_tokens, body.overlap_tokens
    )
    return collection_json(collection, caller)


@router.get("/v1/collections/{name}/chunks")
async def list_chunks(
    name: str,
    request: Request,
    offset: Annotated[int, Query(ge=0, le=MAX_INT32)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict:
    """A page of the collection's chunks in the order they were stored."""
    page = await _state(request).retrieval.list_chunks(
        caller_of(request).tenant, name, offset, limit
    )
    return {
        "object": "list",
        "data": [
            {
                "text": c.text,
                "document_id": c.document_id,
                "filename": c.filename,
                "index": c.index,
            }
            for c in page.chunks
        ],
        "total": page.total,
        "offset": offset,
        "limit": limit,
    }


@router.delete("/v1/collections/{name}")
async def delete_collection(name: str, request: Request) -> dict:
    await _state(request).retrieval.delete_collection(caller_of(request).tenant, name)
    return {"name": name, "object": "collection", "deleted": True}
