"""POST /v1/chat/completions: OpenAI chat over the generation service's gRPC stream."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from edge.errors import sse_error
from edge.generation_client import Delta
from edge.protocol import ChatCompletionRequest, usage_dict
from edge.state import EdgeState
from edge.streams import cancel_on_disconnect, merge_indexed
from services.common.logs import request_id_var
from services.common.records import ModelKind

logger = logging.getLogger(__name__)
router = APIRouter()

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


class _Completion:
    """Shapes one completion's chunks and final body; every chunk shares the id."""

    def __init__(self, completion_id: str, model: str):
        self.id = completion_id
        self.model = model
        self.created = int(time.time())

    def chunk(self, choices: list[dict], usage: dict | None = None) -> str:
        payload = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            payload["usage"] = usage
        return _sse(payload)

    @staticmethod
    def choice_delta(index: int, delta: dict, finish_reason: str | None = None) -> dict:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    def body(self, texts: list[str], finish_reasons: list[str | None], usage: dict) -> dict:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish_reasons[i],
                }
                for i, text in enumerate(texts)
            ],
            "usage": usage,
        }


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    state: EdgeState = request.app.state.edge
    body.log_ignored_fields()
    messages = body.to_messages()
    model = await state.catalog.resolve(body.model, ModelKind.CHAT)
    completion = _Completion(f"chatcmpl-{uuid.uuid4().hex}", model.name)
    request_id_var.set(completion.id)
    messages = await state.grounding.ground(
        body, model.name, messages, request.path_params.get("serving_id")
    )
    sampling = body.to_sampling_params()
    streams = [
        state.generation.generate(
            model.name,
            messages,
            # Distinct seeds keep n seeded choices reproducible but different from each other.
            replace(sampling, seed=sampling.seed + i) if sampling.seed is not None else sampling,
            completion.id,
            state.settings.request_timeout_s,
        )
        for i in range(body.n)
    ]
    if body.stream:
        return await _stream(completion, streams, body.include_usage)
    return await cancel_on_disconnect(request, _collect(completion, streams))


async def _collect(completion: _Completion, streams: list[AsyncIterator[Delta]]) -> JSONResponse:
    texts = [[] for _ in streams]
    finish: list[str | None] = [None] * len(streams)
    prompt_tokens = completion_tokens = 0
    async for index, delta in merge_indexed(streams):
        texts[index].append(delta.text)
        if delta.finish_reason:
            finish[index] = delta.finish_reason
            prompt_tokens = delta.prompt_tokens
            completion_tokens += delta.completion_tokens
    body = completion.body(
        ["".join(parts) for parts in texts], finish, usage_dict(prompt_tokens, completion_tokens)
    )
    return JSONResponse(body, headers={"x-request-id": completion.id})


async def _stream(
    completion: _Completion, streams: list[AsyncIterator[Delta]], include_usage: bool
) -> StreamingResponse:
    merged = merge_indexed(streams)
    # Wait for the first token of some choice before answering 200, so that errors found
    # before generation starts (unknown model, prompt too long) keep their HTTP status.
    try:
        first = await anext(merged)
    except BaseException:
        await merged.aclose()
        raise

    async def events() -> AsyncIterator[str]:
        finished = prompt_tokens = completion_tokens = 0
        try:
            yield completion.chunk(
                [completion.choice_delta(i, {"role": "assistant"}) for i in range(len(streams))]
            )
            pending = [first]
            while True:
                if pending:
                    index, delta = pending.pop()
                else:
                    try:
                        index, delta = await anext(merged)
                    except StopAsyncIteration:
                        break
                if delta.text:
                    yield completion.chunk(
                        [completion.choice_delta(index, {"content": delta.text})]
                    )
                if delta.finish_reason:
                    finished += 1
                    prompt_tokens = delta.prompt_tokens
                    completion_tokens += delta.completion_tokens
                    usage = (
                        usage_dict(prompt_tokens, completion_tokens)
                        if finished == len(streams)
                        else None
                    )
                    yield completion.chunk(
                        [completion.choice_delta(index, {}, delta.finish_reason)], usage
                    )
            if include_usage:
                yield completion.chunk([], usage_dict(prompt_tokens, completion_tokens))
        except Exception as error:  # noqa: BLE001 - reported in-band once streaming has begun
            yield sse_error(error)
        finally:
            await merged.aclose()
        yield "data: [DONE]\n\n"

    headers = {**SSE_HEADERS, "x-request-id": completion.id}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
