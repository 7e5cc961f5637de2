"""POST /v1/completions: OpenAI's legacy completions (a raw prompt, no chat template).

The prompt is a string, a list of strings, token ids or a list of token-id lists; each prompt
is one Generate call and its n completions are choices `prompt_index * n + i`, as in OpenAI.
Serves base models (no chat template) as well as chat models.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import Field, field_validator, model_validator

from edge.auth import resolve_access
from edge.disconnect import cancel_on_disconnect
from edge.generation_client import Delta
from edge.moderation import OutputGuard
from edge.protocol import GenerationRequest, texts_or_token_ids, usage_dict
from edge.routes.chat import moderator_of
from edge.sse import CONTENT_FILTER, SSE_HEADERS, collect, first_delta, stream_response
from edge.state import EdgeState
from edge.tracking import RequestTracker, track_access
from services.common.records import ModelKind

router = APIRouter()

ENDPOINT = "/v1/completions"
# Prompts of one request, and sequences (prompts x n) it may start.
MAX_PROMPTS = 64
MAX_CHOICES = 64


class CompletionRequest(GenerationRequest):
    # Parsed into a list of strings or a list of token-id lists (the model's own vocabulary).
    prompt: list[str] | list[list[int]]
    echo: bool = False
    # Legacy logprobs: the number of likeliest alternatives per token (0 = the token's only).
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    best_of: Annotated[int, Field(ge=1, le=16)] | None = None
    suffix: str | None = None
    # vLLM's: let the tokenizer add its special tokens (a BOS) to text prompts.
    add_special_tokens: bool = True

    @field_validator("prompt", mode="before")
    @classmethod
    def _parse_prompt(cls, value):
        prompts = texts_or_token_ids(value, empty_texts=True)
        if len(prompts) > MAX_PROMPTS:
            raise ValueError(f"must hold at most {MAX_PROMPTS} prompts")
        return prompts

    @model_validator(mode="after")
    def _check(self) -> CompletionRequest:
        if self.suffix:
            raise ValueError("suffix is not supported: no served model is trained to fill in")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of other than n is not supported")
        if self.echo and self.logprobs is not None:
            raise ValueError(
                "echo with logprobs needs the prompt's log probabilities, "
                "which this server does not compute"
            )
        if len(self.prompt) * self.n > MAX_CHOICES:
            raise ValueError(f"prompts times n must be at most {MAX_CHOICES}")
        return self

    @property
    def choices(self) -> int:
        return len(self.prompt) * self.n

    def to_sampling_params(self):
        logprobs = self.logprobs is not None
        return self._sampling_params(self.max_tokens, logprobs, self.logprobs or 0)


class _LegacyLogprobs:
    """OpenAI's legacy logprobs of one choice: parallel lists, offsets into the choice's text."""

    def __init__(self, offset: int):
        self._offset = offset

    def shape(self, entries: list[dict]) -> dict:
        tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
        for entry in entries:
            tokens.append(entry["token"])
            token_logprobs.append(entry["logprob"])
            # As vLLM does: the sampled token is listed among the alternatives.
            top = {alt["token"]: alt["logprob"] for alt in entry["top_logprobs"]}
            top.setdefault(entry["token"], entry["logprob"])
            top_logprobs.append(top)
            text_offset.append(self._offset)
            self._offset += len(entry["token"])
        return {
            "tokens": tokens,
            "token_logprobs": token_logprobs,
            "top_logprobs": top_logprobs,
            "text_offset": text_offset,
        }


class _Completion:
    def __init__(self, completion_id: str, model: str):
        self.id = completion_id
        self.model = model
        self.created = int(time.time())

    def payload(self, choices: list[dict], usage: dict | None) -> dict:
        payload = {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "system_fingerprint": None,
        }
        if usage is not None:
            payload["usage"] = usage
        return payload

    def chunk(self, choices: list[dict], usage: dict | None = None, blocked: bool = False) -> str:
        payload = self.payload(choices, usage)
        if blocked:
            payload["blocked"] = True
        return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"

    @staticmethod
    def choice(
        index: int, text: str, logprobs: dict | None = None, finish_reason: str | None = None
    ) -> dict:
        return {
            "index": index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": finish_reason,
        }


async def merged(streams: list[AsyncIterator[Delta]], n: int) -> AsyncIterator[Delta]:
    """The deltas of one Generate stream per prompt, interleaved as they come, renumbered to
    choice `prompt_index * n + i`; `prompt_tokens` is the sum over the prompts. Every stream's
    first delta is awaited before any is yielded, so a refused prompt fails the whole request
    before a response starts. Closing it closes every stream."""
    queue: asyncio.Queue[tuple[int, Delta | BaseException | None]] = asyncio.Queue()

    async def pump(prompt: int, stream: AsyncIterator[Delta]) -> None:
        try:
            async for delta in stream:
                queue.put_nowait((prompt, delta))
            queue.put_nowait((prompt, None))
        except Exception as error:  # noqa: BLE001 - handed to the consumer
            queue.put_nowait((prompt, error))
        finally:
            await stream.aclose()

    prompt_tokens: dict[int, int] = {}

    def renumber(prompt: int, delta: Delta) -> Delta:
        prompt_tokens[prompt] = delta.prompt_tokens
        return dataclasses.replace(
            delta, index=prompt * n + delta.index, prompt_tokens=sum(prompt_tokens.values())
        )

    tasks: list[asyncio.Future] = [asyncio.ensure_future(anext(s, None)) for s in streams]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done() and task.exception() is not None:
                raise task.exception()
        firsts = [task.result() for task in tasks]
        for prompt, delta in enumerate(firsts):
            if delta is not None:
                prompt_tokens[prompt] = delta.prompt_tokens
        for prompt, delta in enumerate(firsts):
            if delta is not None:
                yield renumber(prompt, delta)
        tasks = [asyncio.ensure_future(pump(p, s)) for p, s in enumerate(streams)]
        running = len(tasks)
        while running:
            prompt, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield renumber(prompt, item)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in streams:
            await stream.aclose()


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request):
    state: EdgeState = request.app.state.edge
    body.log_ignored_fields()
    access = await resolve_access(request, body.model, ModelKind.CHAT, body.user)
    completion = _Completion(f"cmpl-{uuid.uuid4().hex}", access.model.name)
    tracker = await track_access(request, ENDPOINT, access, completion.id)
    try:
        sampling = body.to_sampling_params()
        if access.serving is not None:
            sampling = sampling.with_defaults(access.serving.default_sampling)
        moderator = moderator_of(access, state.settings.moderation_default_terms)
        texts = [p for p in body.prompt if isinstance(p, str)]
        if moderator and any(moderator.find(text) for text in texts):
            tracker.blocked = True
            await tracker.settle()
            return _blocked_before_generation(completion, body)
        echoes = await _echoes(state, access.model.name, body) if body.echo else None
        streams = [
            state.generation.complete(
                access.model.name,
                prompt,
                sampling,
                body.n,
                state.settings.request_timeout_s,
                add_special_tokens=body.add_special_tokens,
                constraint=body.output_constraint,
            )
            for prompt in body.prompt
        ]
        deltas = merged(streams, body.n)
        guards = [OutputGuard(moderator) for _ in range(body.choices)] if moderator else None
        if body.stream:
            return await _stream(completion, deltas, body, echoes, guards, tracker)
        response = await cancel_on_disconnect(
            request, _collect(completion, deltas, body, echoes, guards, tracker)
        )
    except BaseException as error:
        await tracker.settle(error)
        raise
    await tracker.settle()
    return response


async def _echoes(state: EdgeState, model: str, body: CompletionRequest) -> list[str]:
    """Each prompt's text, for `echo` (token-id prompts decoded, special tokens kept)."""
    decoded = await asyncio.gather(
        *(state.generation.detokenize(model, p) for p in body.prompt if not isinstance(p, str))
    )
    texts = iter(decoded)
    return [p if isinstance(p, str) else next(texts) for p in body.prompt]


def _blocked_before_generation(completion: _Completion, body: CompletionRequest):
    usage = usage_dict(0, 0)
    choices = [completion.choice(i, "", None, CONTENT_FILTER) for i in range(body.choices)]
    if not body.stream:
        return JSONResponse({**completion.payload(choices, usage), "blocked": True})

    async def events() -> AsyncIterator[str]:
        yield completion.chunk(choices, usage, blocked=True)
        if body.include_usage:
            yield completion.chunk([], usage)
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


def _logprob_shapers(body: CompletionRequest, echoes: list[str] | None) -> list[_LegacyLogprobs]:
    n = body.n
    return [_LegacyLogprobs(len(echoes[i // n]) if echoes else 0) for i in range(body.choices)]


async def _collect(
    completion: _Completion,
    deltas: AsyncIterator[Delta],
    body: CompletionRequest,
    echoes: list[str] | None,
    guards: list[OutputGuard] | None,
    tracker: RequestTracker,
) -> JSONResponse:
    got = await collect(deltas, body.choices, guards, tracker)
    shapers = _logprob_shapers(body, echoes)
    choices = [
        completion.choice(
            i,
            (echoes[i // body.n] if echoes else "") + "".join(got.texts[i]),
            shapers[i].shape(got.logprobs[i]) if body.logprobs is not None else None,
            got.finish[i],
        )
        for i in range(body.choices)
    ]
    payload = completion.payload(choices, tracker.usage())
    if tracker.blocked:
        payload["blocked"] = True
    return JSONResponse(payload, headers={"x-request-id": completion.id})


class _CompletionChunks:
    """text_completion lines (sse.ChunkFormat): echoed prompts first, then text with legacy
    log probabilities."""

    def __init__(self, completion: _Completion, body: CompletionRequest, echoes: list[str] | None):
        self.completion = completion
        self.body = body
        self.echoes = echoes
        self.shapers = _logprob_shapers(body, echoes)

    def opening(self) -> list[str]:
        if not self.echoes:
            return []
        c, n = self.completion, self.body.n
        return [c.chunk([c.choice(i, self.echoes[i // n]) for i in range(self.body.choices)])]

    def content(self, delta: Delta, text: str) -> list[str]:
        index = delta.index
        logprobs = self.shapers[index].shape(delta.logprobs or []) if delta.logprobs else None
        if not (text or logprobs):
            return []
        return [self.completion.chunk([self.completion.choice(index, text, logprobs)])]

    def finished(self, index: int, reason: str, usage: dict | None, blocked: bool) -> str:
        c = self.completion
        return c.chunk([c.choice(index, "", None, reason)], usage, blocked=blocked)

    def usage(self, usage: dict) -> str:
        return self.completion.chunk([], usage)


async def _stream(
    completion: _Completion,
    deltas: AsyncIterator[Delta],
    body: CompletionRequest,
    echoes: list[str] | None,
    guards: list[OutputGuard] | None,
    tracker: RequestTracker,
) -> StreamingResponse:
    first = await first_delta(deltas, tracker)
    chunks = _CompletionChunks(completion, body, echoes)
    return stream_response(
        first, deltas, chunks, body.choices, body.include_usage, guards, tracker, completion.id
    )
