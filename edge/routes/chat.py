"""POST /v1/chat/completions: OpenAI chat over the generation service's gRPC stream."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from edge.auth import Access, resolve_access
from edge.disconnect import cancel_on_disconnect
from edge.generation_client import Delta
from edge.moderation import Moderator, OutputGuard, TermListModerator
from edge.protocol import ChatCompletionRequest, usage_dict
from edge.sse import CONTENT_FILTER, SSE_HEADERS, collect, first_delta, stream_response
from edge.state import EdgeState
from edge.tracking import RequestTracker, track_access
from services.common.domain import ChatMessage, SamplingParams, ToolCall
from services.common.records import ModelKind, ModerationAction

router = APIRouter()

ENDPOINT = "/v1/chat/completions"


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


class _Completion:
    """Shapes one completion's chunks and final body; every chunk shares the id."""

    def __init__(self, completion_id: str, model: str):
        self.id = completion_id
        self.model = model
        self.created = int(time.time())

    def chunk(self, choices: list[dict], usage: dict | None = None, blocked: bool = False) -> str:
        payload = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            payload["usage"] = usage
        if blocked:
            payload["blocked"] = True
        return _sse(payload)

    @staticmethod
    def choice_delta(
        index: int, delta: dict, finish_reason: str | None = None, logprobs: list | None = None
    ) -> dict:
        return {
            "index": index,
            "delta": delta,
            "logprobs": {"content": logprobs, "refusal": None} if logprobs else None,
            "finish_reason": finish_reason,
        }

    def body(
        self,
        texts: list[str],
        finish_reasons: list[str | None],
        logprobs: list[list[dict] | None],
        usage: dict,
        blocked: bool,
        tool_calls: list[list[ToolCall]] | None = None,
    ) -> dict:
        body = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": i,
                    "message": _message(text, tool_calls[i] if tool_calls else []),
                    "logprobs": (
                        {"content": logprobs[i], "refusal": None}
                        if logprobs[i] is not None
                        else None
                    ),
                    "finish_reason": finish_reasons[i],
                }
                for i, text in enumerate(texts)
            ],
            "usage": usage,
        }
        if blocked:
            body["blocked"] = True
        return body


def _message(text: str, calls: list[ToolCall]) -> dict:
    message: dict = {"role": "assistant", "content": text}
    if calls:
        # OpenAI: content is null when the reply is only calls.
        message["content"] = text or None
        message["tool_calls"] = [_tool_call_json(call) for call in calls]
    return message


def _tool_call_json(call: ToolCall) -> dict:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def _tool_call_deltas(first_index: int, calls: tuple[ToolCall, ...]) -> list[dict]:
    """A whole call as OpenAI streams one: its index, id, type and name with empty arguments,
    then the arguments (here in one fragment, so they are never broken or repeated)."""
    deltas = []
    for offset, call in enumerate(calls):
        index = first_index + offset
        opening = {**_tool_call_json(call), "index": index}
        opening["function"] = {"name": call.name, "arguments": ""}
        deltas.append({"tool_calls": [opening]})
        deltas.append({"tool_calls": [{"index": index, "function": {"arguments": call.arguments}}]})
    return deltas


def moderator_of(access: Access, default_terms: str) -> Moderator | None:
    policy = access.serving.moderation if access.serving else None
    if policy is None or not policy.enabled:
        return None
    terms = policy.blocked_terms or tuple(default_terms.split(","))
    return TermListModerator(terms)


def _with_serving_settings(
    access: Access, messages: list[ChatMessage], sampling: SamplingParams
) -> tuple[list[ChatMessage], SamplingParams]:
    serving = access.serving
    if serving is None:
        return messages, sampling
    if serving.system_prompt and not any(m.role in ("system", "developer") for m in messages):
        messages = [ChatMessage("system", serving.system_prompt), *messages]
    return messages, sampling.with_defaults(serving.default_sampling)


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    state: EdgeState = request.app.state.edge
    body.log_ignored_fields()
    messages = body.to_messages()
    access = await resolve_access(request, body.model, ModelKind.CHAT, body.user)
    completion = _Completion(f"chatcmpl-{uuid.uuid4().hex}", access.model.name)
    tracker = await track_access(request, ENDPOINT, access, completion.id)
    try:
        messages, sampling = _with_serving_settings(access, messages, body.to_sampling_params())
        moderator = moderator_of(access, state.settings.moderation_default_terms)
        if moderator and any(moderator.find(m.content) for m in messages):
            tracker.blocked = True
            await tracker.settle()
            return _blocked_before_generation(completion, body)
        messages = await state.grounding.ground(body, access, messages)
        deltas = state.generation.generate(
            access.model.name,
            messages,
            sampling,
            body.n,
            state.settings.request_timeout_s,
            constraint=body.output_constraint,
            tool_use=body.tool_use(),
        )
        guards = [OutputGuard(moderator) for _ in range(body.n)] if moderator else None
        if body.stream:
            # From here the stream's generator settles the tracker when it ends.
            return await _stream(completion, deltas, body, guards, tracker)
        action = access.serving.moderation.action if access.serving else ModerationAction.CUT
        response = await cancel_on_disconnect(
            request, _collect(completion, deltas, body, guards, action, tracker)
        )
    except BaseException as error:
        await tracker.settle(error)
        raise
    await tracker.settle()
    return response


def _blocked_before_generation(completion: _Completion, body: ChatCompletionRequest):
    usage = usage_dict(0, 0)
    if not body.stream:
        return JSONResponse(
            completion.body(
                [""] * body.n, [CONTENT_FILTER] * body.n, [None] * body.n, usage, blocked=True
            )
        )

    async def events() -> AsyncIterator[str]:
        choices = range(body.n)
        yield completion.chunk([completion.choice_delta(i, {"role": "assistant"}) for i in choices])
        yield completion.chunk(
            [completion.choice_delta(i, {}, CONTENT_FILTER) for i in choices], usage, blocked=True
        )
        if body.include_usage:
            yield completion.chunk([], usage)
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


async def _collect(
    completion: _Completion,
    deltas: AsyncIterator[Delta],
    body: ChatCompletionRequest,
    guards: list[OutputGuard] | None,
    action: ModerationAction,
    tracker: RequestTracker,
) -> JSONResponse:
    got = await collect(deltas, body.n, guards, tracker)
    texts = got.texts
    if tracker.blocked and action is ModerationAction.WITHHOLD:
        texts = [[] for _ in range(body.n)]
    logprobs = got.logprobs if body.logprobs else [None] * body.n
    payload = completion.body(
        ["".join(parts) for parts in texts],
        got.finish,
        logprobs,
        tracker.usage(),
        tracker.blocked,
        got.calls,
    )
    return JSONResponse(payload, headers={"x-request-id": completion.id})


class _ChatChunks:
    """chat.completion.chunk lines (sse.ChunkFormat): the role first, then content and
    tool-call deltas."""

    def __init__(self, completion: _Completion, n: int):
        self.completion = completion
        self.n = n
        self.calls_sent = [0] * n

    def opening(self) -> list[str]:
        c = self.completion
        return [c.chunk([c.choice_delta(i, {"role": "assistant"}) for i in range(self.n)])]

    def content(self, delta: Delta, text: str) -> list[str]:
        c, index = self.completion, delta.index
        chunks = []
        if text or delta.logprobs:
            content = {"content": text} if text else {}
            chunks.append(c.chunk([c.choice_delta(index, content, logprobs=delta.logprobs)]))
        for call_delta in _tool_call_deltas(self.calls_sent[index], delta.tool_calls):
            chunks.append(c.chunk([c.choice_delta(index, call_delta)]))
        self.calls_sent[index] += len(delta.tool_calls)
        return chunks

    def finished(self, index: int, reason: str, usage: dict | None, blocked: bool) -> str:
        c = self.completion
        return c.chunk([c.choice_delta(index, {}, reason)], usage, blocked=blocked)

    def usage(self, usage: dict) -> str:
        return self.completion.chunk([], usage)


async def _stream(
    completion: _Completion,
    deltas: AsyncIterator[Delta],
    body: ChatCompletionRequest,
    guards: list[OutputGuard] | None,
    tracker: RequestTracker,
) -> StreamingResponse:
    first = await first_delta(deltas, tracker)
    chunks = _ChatChunks(completion, body.n)
    return stream_response(
        first, deltas, chunks, body.n, body.include_usage, guards, tracker, completion.id
    )
