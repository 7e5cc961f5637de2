"""POST /v1/retrieve in the node API's shape: the body is a chat request, the last user
message is the query, and the answer is `points[{source, score}]`, `limit`, `score_threshold`."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request

from edge.protocol import ChatCompletionRequest
from edge.rag import last_user_message, rag_queries
from edge.state import EdgeState

logger = logging.getLogger(__name__)
router = APIRouter()


class RetrieveRequest(ChatCompletionRequest):
    # Node API clients send the embedding model's name here; the collection decides the model.
    model: str | None = None


@router.post("/v1/retrieve")
async def retrieve(body: RetrieveRequest, request: Request) -> dict:
    state: EdgeState = request.app.state.edge
    body.log_ignored_fields()
    query = last_user_message(body.to_messages())
    # Without vdb_collection_name, "" lets the retrieval service use its default collection.
    results = [
        await state.retrieval.retrieve(
            q.collection, query, q.limit, q.score_threshold, state.settings.rag_timeout_s
        )
        for q in rag_queries(body, "")
    ]
    points = sorted((p for r in results for p in r.points), key=lambda p: -p.score)
    return {
        "points": [{"source": p.source, "score": p.score} for p in points],
        "limit": results[0].limit,
        "score_threshold": results[0].score_threshold,
    }
