"""The admin API's models: list, import (progress streamed as SSE), delete, and the engine's
metrics at a glance. Admin token only, like the rest of /admin/v1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import PurePath
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import StreamingResponse
from pydantic import Field

from edge.engine_metrics import engine_summary
from edge.errors import sse_error
from edge.protocol import MAX_INT32, ValidUnicode
from edge.routes.admin import AdminModel, DefaultSamplingIn, require_admin
from edge.sse import SSE_HEADERS
from edge.state import EdgeState
from llmserve.registry.v1 import registry_pb2
from services.common.records import ImportProgress, ModelKind, ModelRecord, SourceFormat

router = APIRouter(prefix="/admin/v1", dependencies=[Depends(require_admin)])

# An export takes minutes (about one for the default 135M model here).
IMPORT_TIMEOUT_S = 3600.0
ModelName = Annotated[str, Path(min_length=1, max_length=256)]


class ModelImportIn(ValidUnicode, AdminModel):
    name: str = Field(min_length=1, max_length=256)
    kind: Literal["chat", "embedding"]
    # A .gguf file or checkpoint directory on the registry's machine.
    source: str = Field(min_length=1, max_length=4096)
    # Inferred from the path when left out.
    source_format: Literal["gguf", "hf_directory"] | None = None
    context_length: Annotated[int, Field(ge=0, le=MAX_INT32)] = 0
    chat_template: str = ""
    default_sampling: DefaultSamplingIn = DefaultSamplingIn()

    def to_pb(self) -> registry_pb2.ImportModelRequest:
        source_format = SourceFormat[self.source_format.upper()] if self.source_format else 0
        return registry_pb2.ImportModelRequest(
            name=self.name,
            kind=int(ModelKind[self.kind.upper()]),
            source=self.source,
            source_format=int(source_format),
            context_length=self.context_length,
            chat_template=self.chat_template,
            default_sampling=self.default_sampling.to_domain().to_pb(),
        )


def model_json(model: ModelRecord) -> dict:
    return {
        "name": model.name,
        "kind": model.kind.name.lower(),
        # The file or directory name only: no server path leaves the edge.
        "source": PurePath(model.source).name,
        "source_format": model.source_format.name.lower(),
        "source_sha256": model.source_sha256,
        "context_length": model.context_length,
        "default_sampling": model.default_sampling.to_dict(),
        "graph": model.graph.name.lower(),
        "has_chat_template": bool(model.chat_template),
        "created_at": model.created_at_unix_ms // 1000,
    }


def _progress_event(step: ImportProgress) -> str:
    event = {"stage": step.stage, "progress": round(step.fraction, 4)}
    if step.model is not None:
        event["model"] = model_json(step.model)
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"


def _state(request: Request) -> EdgeState:
    return request.app.state.edge


@router.get("/models")
async def list_models(request: Request) -> dict:
    models = await _state(request).registry.list_models()
    return {"object": "list", "data": [model_json(m) for m in models]}


@router.post("/models")
async def import_model(body: ModelImportIn, request: Request) -> StreamingResponse:
    """SSE: `data: {stage, progress}` per step, the last with `model`, then `data: [DONE]`.
    Refusals found before the export starts (name taken, bad source) keep their HTTP status;
    a client that disconnects cancels the export."""
    steps = _state(request).registry.import_model(body.to_pb(), IMPORT_TIMEOUT_S)
    try:
        first = await anext(steps)
    except BaseException:
        await steps.aclose()
        raise

    async def events() -> AsyncIterator[str]:
        try:
            yield _progress_event(first)
            async for step in steps:
                yield _progress_event(step)
        except Exception as error:
            yield sse_error(error)
        finally:
            await steps.aclose()
        _state(request).catalog.invalidate()
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


@router.delete("/models/{name}")
async def delete_model(name: ModelName, request: Request) -> dict:
    await _state(request).registry.delete_model(name)
    _state(request).catalog.invalidate()
    return {"name": name, "deleted": True}


@router.get("/engine/metrics")
async def engine_metrics(request: Request) -> dict:
    settings = _state(request).settings
    urls = [u.strip() for u in settings.generation_metrics_urls.split(",") if u.strip()]
    return await engine_summary(urls)
