"""Async client of the embedding service, shared by the retrieval service and the edge."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmserve.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from services.common.client import ServiceClient
from services.common.domain import TokenSpans


@dataclass(frozen=True)
class Embeddings:
    # [inputs, dimensions], float32.
    vectors: np.ndarray
    token_counts: list[int]
    truncated: list[bool]

    @property
    def prompt_tokens(self) -> int:
        return sum(self.token_counts)


_OVERLONG = {
    None: embedding_pb2.OVERLONG_POLICY_UNSPECIFIED,
    False: embedding_pb2.OVERLONG_POLICY_REJECT,
    True: embedding_pb2.OVERLONG_POLICY_TRUNCATE,
}


def _input(item: str | list[int]) -> embedding_pb2.EmbedInput:
    if isinstance(item, str):
        return embedding_pb2.EmbedInput(text=item)
    return embedding_pb2.EmbedInput(tokens=embedding_pb2.TokenIds(ids=item))


class EmbeddingClient(ServiceClient):
    def __init__(self, address: str, timeout_s: float = 60.0):
        super().__init__(address, embedding_pb2_grpc.EmbeddingServiceStub, timeout_s)

    async def embed(
        self,
        model: str,
        inputs: list[str] | list[list[int]],
        dimensions: int = 0,
        truncate: bool | None = None,
        timeout_s: float | None = None,
    ) -> Embeddings:
        """`truncate` None leaves overlong inputs to the service's configured policy."""
        request = embedding_pb2.EmbedRequest(
            model=model,
            inputs=[_input(item) for item in inputs],
            dimensions=dimensions,
            overlong=_OVERLONG[truncate],
        )
        response = await self._unary(self._stub.Embed, request, timeout_s)
        return Embeddings(
            vectors=np.array([e.values for e in response.embeddings], dtype=np.float32),
            token_counts=[e.token_count for e in response.embeddings],
            truncated=[e.truncated for e in response.embeddings],
        )

    async def tokenize(self, model: str, texts: list[str]) -> tuple[list[TokenSpans], int]:
        """Tokens of each text, and the most content tokens one input to the model may hold."""
        request = embedding_pb2.TokenizeRequest(model=model, texts=texts)
        response = await self._unary(self._stub.Tokenize, request)
        spans = [
            TokenSpans(list(t.ids), list(t.char_starts), list(t.char_ends)) for t in response.texts
        ]
        return spans, response.max_content_tokens
