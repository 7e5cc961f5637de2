"""Thin gRPC adapter over the embedder."""

from __future__ import annotations

from llmserve.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from services.common.errors import InvalidArgument
from services.common.rpc import rpc_method
from services.embedding.embedder import Embedder, EmbedInput

_TRUNCATE = {
    embedding_pb2.OVERLONG_POLICY_UNSPECIFIED: None,
    embedding_pb2.OVERLONG_POLICY_REJECT: False,
    embedding_pb2.OVERLONG_POLICY_TRUNCATE: True,
}


def _inputs(request: embedding_pb2.EmbedRequest) -> list[EmbedInput]:
    inputs: list[EmbedInput] = []
    for index, item in enumerate(request.inputs):
        kind = item.WhichOneof("kind")
        if kind is None:
            raise InvalidArgument(f"inputs[{index}] is empty.", param="input")
        inputs.append(item.text if kind == "text" else list(item.tokens.ids))
    return inputs


class EmbeddingServicer(embedding_pb2_grpc.EmbeddingServiceServicer):
    def __init__(self, embedder: Embedder):
        self._embedder = embedder

    @rpc_method
    async def Embed(self, request, context):
        if not request.model:
            raise InvalidArgument("`model` is required.", param="model")
        result = await self._embedder.embed(
            request.model, _inputs(request), request.dimensions, _TRUNCATE[request.overlong]
        )
        return embedding_pb2.EmbedResponse(
            embeddings=[
                embedding_pb2.Embedding(values=vector, token_count=count, truncated=truncated)
                for vector, count, truncated in zip(
                    result.vectors.tolist(), result.token_counts, result.truncated, strict=True
                )
            ],
            prompt_tokens=sum(result.token_counts),
        )

    @rpc_method
    async def Tokenize(self, request, context):
        if not request.model:
            raise InvalidArgument("`model` is required.", param="model")
        spans, max_content = await self._embedder.tokenize(request.model, list(request.texts))
        return embedding_pb2.TokenizeResponse(
            texts=[
                embedding_pb2.TokenizedText(ids=s.ids, char_starts=s.starts, char_ends=s.ends)
                for s in spans
            ],
            max_content_tokens=max_content,
        )

    @rpc_method
    async def ListLoadedModels(self, request, context):
        return embedding_pb2.ListLoadedModelsResponse(
            models=[
                embedding_pb2.LoadedModel(
                    name=name,
                    dimensions=batcher.model.dimensions,
                    max_tokens=batcher.model.max_tokens,
                    execution_provider=batcher.model.provider,
                    pooling=batcher.model.pooling,
                    normalized=batcher.model.normalized,
                )
                for name, batcher in sorted(self._embedder.loaded.items())
            ]
        )
