"""A generation's deltas turned into a reply: what chat and legacy completions share.

`collect` gathers them for a whole (non-streamed) reply. For a stream, the route waits for
the first delta before answering 200, so errors found before generation starts (unknown
model, prompt too long, queue full) keep their HTTP status; after that, moderation, finish
reasons, usage and errors go in-band, and the stream ends with [DONE]. What a chunk looks
like is the route's: a `ChunkFormat`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from fastapi.responses import StreamingResponse

from edge.errors import sse_error
from edge.generation_client import Delta
from edge.moderation import OutputGuard
from edge.tracking import RequestTracker
from services.common.domain import ToolCall

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
CONTENT_FILTER = "content_filter"


class ChunkFormat(Protocol):
    """The `data:` lines of one API's stream."""

    def opening(self) -> list[str]:
        """Before the first delta (chat: the assistant role; completions: an echo)."""

    def content(self, delta: Delta, text: str) -> list[str]:
        """A delta's text (after moderation) and whatever else it carries."""

    def finished(self, index: int, reason: str, usage: dict | None, blocked: bool) -> str:
        """Choice `index` ends; `usage` comes with the last choice to end."""

    def usage(self, usage: dict) -> str:
        """The usage chunk of `stream_options.include_usage`."""


async def first_delta(deltas: AsyncIterator[Delta], tracker: RequestTracker) -> Delta:
    try:
        first = await anext(deltas)
    except BaseException:
        await deltas.aclose()
        raise
    tracker.count(first)
    return first


def stream_response(
    first: Delta,
    deltas: AsyncIterator[Delta],
    chunks: ChunkFormat,
    choices: int,
    include_usage: bool,
    guards: list[OutputGuard] | None,
    tracker: RequestTracker,
    request_id: str,
) -> StreamingResponse:
    async def events() -> AsyncIterator[str]:
        finished = 0
        error: BaseException | None = None
        try:
            for chunk in chunks.opening():
                yield chunk
            delta: Delta | None = first
            while delta is not None:
                index = delta.index
                text = delta.text
                if guards:
                    text = guards[index].push(text, final=delta.finish_reason is not None)
                for chunk in chunks.content(delta, text):
                    yield chunk
                if guards and guards[index].flagged:
                    # Output moderation: stop every choice, report what the policy allows.
                    tracker.blocked = True
                    yield chunks.finished(index, CONTENT_FILTER, tracker.usage(), blocked=True)
                    break
                if delta.finish_reason:
                    finished += 1
                    usage = tracker.usage() if finished == choices else None
                    yield chunks.finished(index, delta.finish_reason, usage, blocked=False)
                delta = await anext(deltas, None)
                if delta is not None:
                    tracker.count(delta)
            if include_usage:
                yield chunks.usage(tracker.usage())
        except Exception as caught:  # noqa: BLE001 - reported in-band once streaming has begun
            error = caught
            yield sse_error(caught)
        except BaseException as caught:  # client gone: record it as cancelled
            error = caught
            raise
        finally:
            await deltas.aclose()
            await tracker.settle(error)
        yield "data: [DONE]\n\n"

    headers = {**SSE_HEADERS, "x-request-id": request_id}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


@dataclass
class Collected:
    """Per choice: its text pieces, logprobs entries, tool calls and finish reason."""

    texts: list[list[str]]
    logprobs: list[list[dict]]
    calls: list[list[ToolCall]]
    finish: list[str | None]


async def collect(
    deltas: AsyncIterator[Delta],
    choices: int,
    guards: list[OutputGuard] | None,
    tracker: RequestTracker,
) -> Collected:
    """Every delta of `choices` completions; output moderation stops them all, and the choices
    it cut (or that had not finished) end with content_filter."""
    got = Collected(
        [[] for _ in range(choices)],
        [[] for _ in range(choices)],
        [[] for _ in range(choices)],
        [None] * choices,
    )
    try:
        async for delta in deltas:
            tracker.count(delta)
            index = delta.index
            got.calls[index].extend(delta.tool_calls)
            text = delta.text
            if guards:
                text = guards[index].push(text, final=delta.finish_reason is not None)
            got.texts[index].append(text)
            got.logprobs[index].extend(delta.logprobs or ())
            if guards and guards[index].flagged:
                tracker.blocked = True
                break
            got.finish[index] = delta.finish_reason
    finally:
        await deltas.aclose()
    if tracker.blocked:
        got.finish = [reason or CONTENT_FILTER for reason in got.finish]
    return got
