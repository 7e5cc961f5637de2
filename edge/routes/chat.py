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

from edge.auth import Access, resolve_access
from edge.errors import sse_error
from edge.generation_client import Delta
from edge.moderation import Moderator, OutputGuard, TermListModerator
from edge.protocol import ChatCompletionRequest, usage_dict
from edge.state import EdgeState
from edge.streams import cancel_on_disconnect, merge_indexed
from edge.tracking import RequestTracker
from services.common.domain import ChatMessage, SamplingParams
from services.common.logs import request_id_var
from services.common.records import Limits, ModelKind, ModerationAction

logger = logging.getLogger(__name__)
router = APIRouter()

ENDPOINT = "/v1/chat/completions"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
CONTENT_FILTER = "content_filter"


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
    def choice_delta(index: int, delta: dict, finish_reason: str | None = None) -> dict:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    def body(
        self, texts: list[str], finish_reasons: list[str | None], usage: dict, blocked: bool
    ) -> dict:
        body = {
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
        if blocked:
            body["blocked"] = True
        return body


def _moderator(access: Access, default_terms: str) -> Moderator | None:
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


def _choice_sampling(sampling: SamplingParams, index: int) -> SamplingParams:
    # Distinct seeds keep n seeded choices reproducible but different from each other.
    return replace(sampling, seed=sampling.seed + index) if sampling.seed is not None else sampling


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    state: EdgeState = request.app.state.edge
    body.log_ignored_fields()
    messages = body.to_messages()
    access = await resolve_access(request, body.model, ModelKind.CHAT, body.user)
    completion = _Completion(f"chatcmpl-{uuid.uuid4().hex}", access.model.name)
    request_id_var.set(completion.id)
    limits = access.serving.limits if access.serving else Limits()
    permit = state.limiter.acquire(limits, access.serving_id, access.key.id if access.key else None)
    tracker = RequestTracker(state.usage, permit, access, completion.id, ENDPOINT)
    try:
        messages, sampling = _with_serving_settings(access, messages, body.to_sampling_params())
        moderator = _moderator(access, state.settings.moderation_default_terms)
        if moderator and any(moderator.find(m.content) for m in messages):
            tracker.blocked = True
            tracker.settle()
            return _blocked_before_generation(completion, body)
        streams = [
            state.generation.generate(
                access.model.name,
                messages,
                _choice_sampling(sampling, i),
                completion.id,
                state.settings.request_timeout_s,
            )
            for i in range(body.n)
        ]
        guards = [OutputGuard(moderator) for _ in streams] if moderator else None
        if body.stream:
            # From here the stream's generator settles the tracker when it ends.
            return await _stream(completion, streams, guards, body.include_usage, tracker)
        action = access.serving.moderation.action if access.serving else ModerationAction.CUT
        response = await cancel_on_disconnect(
            request, _collect(completion, streams, guards, action, tracker)
        )
    except BaseException as error:
        tracker.settle(error)
        raise
    tracker.settle()
    return response


def _blocked_before_generation(completion: _Completion, body: ChatCompletionRequest):
    usage = usage_dict(0, 0)
    if not body.stream:
        return JSONResponse(
            completion.body([""] * body.n, [CONTENT_FILTER] * body.n, usage, blocked=True)
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
    streams: list[AsyncIterator[Delta]],
    guards: list[OutputGuard] | None,
    action: ModerationAction,
    tracker: RequestTracker,
) -> JSONResponse:
    texts = [[] for _ in streams]
    finish: list[str | None] = [None] * len(streams)
    merged = merge_indexed(streams)
    try:
        async for index, delta in merged:
            tracker.count(delta)
            text = delta.text
            if guards:
                text = guards[index].push(text, final=delta.finish_reason is not None)
            texts[index].append(text)
            if guards and guards[index].flagged:
                # Output moderation: stop every choice, report what the policy allows.
                tracker.blocked = True
                break
            finish[index] = delta.finish_reason
    finally:
        await merged.aclose()
    if tracker.blocked:
        finish = [reason or CONTENT_FILTER for reason in finish]
        if action is ModerationAction.WITHHOLD:
            texts = [[] for _ in streams]
    body = completion.body(
        ["".join(parts) for parts in texts],
        finish,
        tracker.usage(),
        tracker.blocked,
    )
    return JSONResponse(body, headers={"x-request-id": completion.id})


async def _stream(
    completion: _Completion,
    streams: list[AsyncIterator[Delta]],
    guards: list[OutputGuard] | None,
    include_usage: bool,
    tracker: RequestTracker,
) -> StreamingResponse:
    merged = merge_indexed(streams)
    # Wait for the first token of some choice before answering 200, so that errors found
    # before generation starts (unknown model, prompt too long) keep their HTTP status.
    try:
        first = await anext(merged)
    except BaseException:
        await merged.aclose()
        raise
    tracker.count(first[1])

    async def events() -> AsyncIterator[str]:
        finished = 0
        error: BaseException | None = None
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
                    tracker.count(delta)
                text = delta.text
                if guards:
                    text = guards[index].push(text, final=delta.finish_reason is not None)
                if text:
                    yield completion.chunk([completion.choice_delta(index, {"content": text})])
                if guards and guards[index].flagged:
                    tracker.blocked = True
                    yield completion.chunk(
                        [completion.choice_delta(index, {}, CONTENT_FILTER)],
                        tracker.usage(),
                        blocked=True,
                    )
                    break
                if delta.finish_reason:
                    finished += 1
                    usage = None
                    if finished == len(streams):
                        usage = tracker.usage()
                    yield completion.chunk(
                        [completion.choice_delta(index, {}, delta.finish_reason)], usage
                    )
            if include_usage:
                yield completion.chunk([], tracker.usage())
        except Exception as caught:  # noqa: BLE001 - reported in-band once streaming has begun
            error = caught
            yield sse_error(caught)
        except BaseException as caught:  # client gone: record it as cancelled
            error = caught
            raise
        finally:
            await merged.aclose()
            tracker.settle(error)
        yield "data: [DONE]\n\n"

    headers = {**SSE_HEADERS, "x-request-id": completion.id}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
