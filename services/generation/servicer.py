"""Thin gRPC adapter over the model pool and its engines."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from llmserve.common.v1 import common_pb2
from llmserve.generation.v1 import generation_pb2, generation_pb2_grpc
from services.common.domain import ChatMessage, SamplingParams
from services.common.errors import InvalidArgument
from services.common.rpc import rpc_method
from services.generation.engine import FinishReason
from services.generation.model_pool import ModelPool
from services.generation.sampler import ResolvedSampling

MAX_N = 16
_FINISH_REASONS = {
    FinishReason.STOP: generation_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: generation_pb2.FINISH_REASON_LENGTH,
}


def _messages(request) -> list[ChatMessage]:
    if not request.model:
        raise InvalidArgument("`model` is required.", param="model")
    if not request.messages:
        raise InvalidArgument("`messages` must hold at least one message.", param="messages")
    return [ChatMessage.from_pb(m) for m in request.messages]


class GenerationServicer(generation_pb2_grpc.GenerationServiceServicer):
    def __init__(self, pool: ModelPool):
        self._pool = pool

    @rpc_method
    async def Generate(self, request, context):
        messages = _messages(request)
        model = await self._pool.get(request.model)
        _, prompt_ids = await asyncio.to_thread(model.render_prompt, messages)
        sampling = SamplingParams.from_pb(request.sampling).with_defaults(
            model.record.default_sampling
        )
        model.check_sampling(sampling)
        room = model.room_for(prompt_ids, sampling.max_tokens)
        base = ResolvedSampling.resolve(sampling, room)
        count = request.n or 1
        if count > MAX_N:
            raise InvalidArgument(f"n must be at most {MAX_N}.", param="n")
        # Completion i of a seeded request uses seed + i: reproducible, yet distinct.
        params = [replace(base, seed=base.seed + i) for i in range(count)]
        usage = common_pb2.Usage(prompt_tokens=len(prompt_ids))
        async for event in model.engine.generate(prompt_ids, params):
            response = generation_pb2.GenerateResponse(
                index=event.index,
                text=event.text,
                token_ids=event.token_ids,
                usage=usage,
                logprobs=[self._logprob_pb(model, lp) for lp in event.logprobs],
            )
            if event.finish_reason is not None:
                response.finish_reason = _FINISH_REASONS[event.finish_reason]
                response.usage.completion_tokens = event.completion_tokens
            yield response

    @staticmethod
    def _logprob_pb(model, logprob) -> generation_pb2.TokenLogprob:
        def text(token_id: int) -> tuple[str, bytes]:
            piece = model.tokenizer.token_bytes(token_id)
            return piece.decode("utf-8", errors="replace"), piece

        token, raw = text(logprob.token_id)
        top = []
        for token_id, value in logprob.top:
            alt, alt_raw = text(token_id)
            top.append(generation_pb2.TopLogprob(token=alt, logprob=value, bytes=alt_raw))
        return generation_pb2.TokenLogprob(
            token=token, logprob=logprob.logprob, bytes=raw, top_logprobs=top
        )

    @rpc_method
    async def Tokenize(self, request, context):
        messages = _messages(request)
        model = await self._pool.get(request.model)
        prompt, prompt_ids = await asyncio.to_thread(model.render_prompt, messages)
        return generation_pb2.TokenizeResponse(token_ids=prompt_ids, prompt=prompt)

    @rpc_method
    async def ListLoadedModels(self, request, context):
        return generation_pb2.ListLoadedModelsResponse(
            models=[
                generation_pb2.LoadedModel(
                    name=name,
                    execution_provider=model.engine.model.provider,
                    running_sequences=model.engine.running,
                    waiting_sequences=model.engine.waiting,
                )
                for name, model in sorted(self._pool.loaded.items())
            ]
        )
