"""Grounded chat: context retrieved for the last user message, added to the prompt.

The collection comes from the request (`vdb_collection_name`, as the node API names it) or
from the serving the request was made against; `limit` and `score_threshold` may be set per
request. Context goes into the system prompt, or into the user message when the model's chat
template has no system role (found once per model by rendering a probe).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from edge.auth import Access
from edge.generation_client import GenerationClient
from edge.protocol import ChatCompletionRequest
from edge.retrieval_client import Point, RetrievalClient, Retrieved
from services.common.domain import ChatMessage
from services.common.errors import InvalidArgument, NotFound

logger = logging.getLogger(__name__)

CONTEXT_PREAMBLE = (
    "Use the following pieces of context to answer the user's question. If they do not "
    "hold the answer, say that you don't know.\n----------------\n"
)
_PROBE = "rag-system-role-probe"


@dataclass(frozen=True)
class RagQuery:
    collection: str
    limit: int | None
    score_threshold: float | None


def _pick(values: list | None, index: int):
    """The value for the index-th collection: its own, else the last one given."""
    if not values:
        return None
    return values[min(index, len(values) - 1)]


def rag_queries(body: ChatCompletionRequest, default_collection: str | None) -> list[RagQuery]:
    """What to search: the request's collections, else `default_collection` (None: nothing;
    "": the retrieval service's default)."""
    default = [] if default_collection is None else [default_collection]
    collections = body.vdb_collection_name or default
    return [
        RagQuery(name, _pick(body.limit, i), _pick(body.score_threshold, i))
        for i, name in enumerate(collections)
    ]


def last_user_message(messages: list[ChatMessage]) -> str:
    for message in reversed(messages):
        if message.role == "user" and message.content.strip():
            return message.content
    raise InvalidArgument("`messages` holds no user message to search with.", param="messages")


async def retrieve_each(
    retrieval: RetrievalClient, tenant: int, queries: list[RagQuery], text: str, timeout_s: float
) -> list[Retrieved]:
    """What each of the tenant's collections in `queries` holds for `text`, in query order."""
    return [
        await retrieval.retrieve(
            tenant, query.collection, text, query.limit, query.score_threshold, timeout_s
        )
        for query in queries
    ]


def best_first(results: list[Retrieved]) -> list[Point]:
    return sorted((point for result in results for point in result.points), key=lambda p: -p.score)


class Grounding:
    def __init__(self, retrieval: RetrievalClient, generation: GenerationClient, timeout_s: float):
        self._retrieval = retrieval
        self._generation = generation
        self._timeout_s = timeout_s
        self._system_role: dict[str, bool] = {}

    async def ground(
        self, body: ChatCompletionRequest, access: Access, messages: list[ChatMessage]
    ) -> list[ChatMessage]:
        """`messages` with retrieved context added, or unchanged when no collection applies.

        Only the caller's own collections are searched: another serving's collection is
        unknown, exactly as a missing one."""
        serving = access.serving
        from_request = bool(body.vdb_collection_name)
        serving_collection = serving.rag_collection if serving and serving.rag_collection else None
        queries = rag_queries(body, serving_collection)
        if not queries:
            return messages
        try:
            results = await retrieve_each(
                self._retrieval,
                access.caller.tenant,
                queries,
                last_user_message(messages),
                self._timeout_s,
            )
        except NotFound:
            if from_request:
                raise
            # A serving's collection with nothing ingested yet: answer ungrounded.
            logger.warning("collection %s not found; answering ungrounded", serving_collection)
            return messages
        points = best_first(results)
        if not points:
            return messages
        context = CONTEXT_PREAMBLE + "\n\n".join(p.source for p in points)
        if await self._has_system_role(access.model.name):
            return _into_system_prompt(messages, context)
        return _into_last_user_message(messages, context)

    async def _has_system_role(self, model: str) -> bool:
        if model not in self._system_role:
            probe = [ChatMessage("system", _PROBE), ChatMessage("user", "hi")]
            try:
                prompt = await self._generation.render_prompt(model, probe)
            except InvalidArgument:
                prompt = ""
            self._system_role[model] = _PROBE in prompt
        return self._system_role[model]


def _into_system_prompt(messages: list[ChatMessage], context: str) -> list[ChatMessage]:
    if messages[0].role in ("system", "developer"):
        first = messages[0]
        return [replace(first, content=f"{first.content}\n\n{context}"), *messages[1:]]
    return [ChatMessage("system", context), *messages]


def _into_last_user_message(messages: list[ChatMessage], context: str) -> list[ChatMessage]:
    index = max(i for i, m in enumerate(messages) if m.role == "user")
    message = messages[index]
    grounded = replace(message, content=f"{context}\n\n{message.content}")
    return [*messages[:index], grounded, *messages[index + 1 :]]
