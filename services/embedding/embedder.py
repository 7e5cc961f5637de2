"""The embedding service's core, without gRPC: models loaded on first use, each behind a
batcher; inputs checked against the model's limit; optional Matryoshka shortening."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from services.common.domain import TokenSpans
from services.common.errors import InvalidArgument
from services.common.lazy_models import LazyModels
from services.common.records import ModelKind, ModelRecord
from services.embedding.batcher import EmbeddingBatcher
from services.embedding.model import EmbeddingModel, ModelInput, normalize

logger = logging.getLogger(__name__)

# Text or the model's own token ids.
EmbedInput = str | list[int]


@dataclass(frozen=True)
class EmbedResult:
    vectors: np.ndarray
    token_counts: list[int]
    truncated: list[bool]


@dataclass(frozen=True)
class BatcherConfig:
    max_batch_size: int = 32
    max_batch_tokens: int = 16384
    max_wait_s: float = 0.002
    # Forward passes run side by side (threads sharing the session).
    workers: int = 1


class Embedder:
    def __init__(
        self,
        lookup: Callable[[str], Awaitable[ModelRecord]],
        providers: list[str],
        intra_op_threads: int = 0,
        batching: BatcherConfig = BatcherConfig(),
        truncate: bool = False,
        matryoshka_models: frozenset[str] = frozenset(),
    ):
        self._lookup = lookup
        self._providers = providers
        self._intra_op_threads = intra_op_threads
        self._batching = batching
        self._truncate = truncate
        self._matryoshka = matryoshka_models
        self._batchers = LazyModels(self._load)

    @property
    def loaded(self) -> dict[str, EmbeddingBatcher]:
        return self._batchers.loaded

    async def get(self, name: str) -> EmbeddingBatcher:
        return await self._batchers.get(name)

    async def _load(self, name: str) -> EmbeddingBatcher:
        record = await self._lookup(name)
        if record.kind is not ModelKind.EMBEDDING:
            raise InvalidArgument(f"The model `{name}` is not an embedding model.", param="model")
        logger.info("loading %s from %s", name, record.artifact_dir)
        model = await asyncio.to_thread(
            EmbeddingModel, record, self._providers, self._intra_op_threads
        )
        logger.info(
            "loaded %s on %s: %d dimensions, %s pooling, normalized=%s, %d tokens",
            name,
            model.provider,
            model.dimensions,
            model.pooling,
            model.normalized,
            model.max_tokens,
        )
        batching = self._batching
        return EmbeddingBatcher(
            model,
            batching.max_batch_size,
            batching.max_batch_tokens,
            batching.max_wait_s,
            batching.workers,
        )

    async def embed(
        self,
        model_name: str,
        inputs: list[EmbedInput],
        dimensions: int = 0,
        truncate: bool | None = None,
    ) -> EmbedResult:
        """`truncate` None applies the configured policy for overlong inputs."""
        if not inputs:
            raise InvalidArgument("`input` must hold at least one item.", param="input")
        batcher = await self.get(model_name)
        model = batcher.model
        self._check_dimensions(model, dimensions)
        truncate = self._truncate if truncate is None else truncate
        prepared = await asyncio.to_thread(self._prepare, model, inputs, truncate)
        vectors = await batcher.embed([p.ids for p in prepared])
        if dimensions and dimensions != model.dimensions:
            vectors = vectors[:, :dimensions]
            if model.normalized:
                vectors = normalize(vectors)
        return EmbedResult(vectors, [len(p.ids) for p in prepared], [p.truncated for p in prepared])

    def _prepare(
        self, model: EmbeddingModel, inputs: list[EmbedInput], truncate: bool
    ) -> list[ModelInput]:
        return [
            model.prepare_text(item, truncate, i)
            if isinstance(item, str)
            else model.prepare_tokens(item, truncate, i)
            for i, item in enumerate(inputs)
        ]

    def _check_dimensions(self, model: EmbeddingModel, dimensions: int) -> None:
        if not dimensions or dimensions == model.dimensions:
            return
        if model.name not in self._matryoshka:
            raise InvalidArgument(
                f"The model `{model.name}` makes {model.dimensions}-dimensional vectors and "
                "does not support other `dimensions`.",
                param="dimensions",
            )
        if dimensions > model.dimensions:
            raise InvalidArgument(
                f"`dimensions` must be at most {model.dimensions} for `{model.name}`.",
                param="dimensions",
            )

    async def tokenize(self, model_name: str, texts: list[str]) -> tuple[list[TokenSpans], int]:
        model = (await self.get(model_name)).model
        return await asyncio.to_thread(model.spans, texts), model.max_content_tokens

    def close(self) -> None:
        for batcher in self.loaded.values():
            batcher.close()
