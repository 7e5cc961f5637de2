"""POST /v1/retrieve in the node API's shape: the body is a chat request, the last user
message is the query, and the answer is `points[{source, score}]`, `limit`, `score_threshold`."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request

from edge.auth import caller_of, user_id_of
from edge.protocol import ChatCompletionRequest
from edge.rag import best_first, last_user_message, rag_queries, retrieve_each
from edge.state import EdgeState
from edge.tracking import track

logger = logging.getLogger(__name__)
router = APIRouter()
ENDPOINT = "/v1/retrieve"


class RetrieveRequest(ChatCompletionRequest):
    # Node API clients send the embedding model's name here; the collection decides the model.
    model: str | None = None


@router.post(ENDPOINT)
async def retrieve(body: RetrieveRequest, request: Request) -> dict:
    """Searches the caller's own collections only; billed as the query's embedded tokens."""
    state: EdgeState = request.app.state.edge
    body.log_ignored_fields()
    query = last_user_message(body.to_messages())
    caller = caller_of(request)
    serving = await state.catalog.serving_or_none(caller.serving_id)
    tracker = await track(
        request, ENDPOINT, serving=serving, user_id=user_id_of(request, body.user)
    )
    async with tracker.settling():
        # Without vdb_collection_name, "" lets the retrieval service use its default collection.
        results = await retrieve_each(
            state.retrieval,
            caller.tenant,
            rag_queries(body, ""),
            query,
            state.settings.rag_timeout_s,
        )
        tracker.model = results[-1].embedding_model
        tracker.prompt_tokens += sum(result.query_tokens for result in results)
    points = best_first(results)
    return {
        "points": [{"source": p.source, "score": round(p.score, 6)} for p in points],
        "limit": results[0].limit,
        "score_threshold": round(results[0].score_threshold, 6),
    }
