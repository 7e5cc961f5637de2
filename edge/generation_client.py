"""Async client of the generation service: chat in, streamed domain events out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from llmserve.generation.v1 import generation_pb2, generation_pb2_grpc
from services.common.domain import ChatMessage, SamplingParams
from services.common.errors import from_rpc_error
from services.common.logs import REQUEST_ID_METADATA_KEY
from services.common.rpc import insecure_channel

_FINISH_REASONS = {
    generation_pb2.FINISH_REASON_STOP: "stop",
    generation_pb2.FINISH_REASON_LENGTH: "length",
}


@dataclass(frozen=True)
class Delta:
    # Which of the n completions it belongs to.
    index: int
    text: str
    # Tokens this delta adds to the completion.
    token_count: int
    prompt_tokens: int
    finish_reason: str | None = None
    # OpenAI-shaped logprobs entries, one per token, when requested.
    logprobs: list[dict] | None = None


def _logprobs_json(entries) -> list[dict] | None:
    if not entries:
        return None
    return [
        {
            "token": entry.token,
            "logprob": entry.logprob,
            "bytes": list(entry.bytes),
            "top_logprobs": [
                {"token": top.token, "logprob": top.logprob, "bytes": list(top.bytes)}
                for top in entry.top_logprobs
            ],
        }
        for entry in entries
    ]


class GenerationClient:
    def __init__(self, address: str):
        self._channel = insecure_channel(address)
        self._stub = generation_pb2_grpc.GenerationServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def render_prompt(
        self, model: str, messages: list[ChatMessage], timeout_s: float = 30.0
    ) -> str:
        """The prompt the model's chat template makes of `messages`."""
        try:
            response = await self._stub.Tokenize(
                generation_pb2.TokenizeRequest(model=model, messages=[m.to_pb() for m in messages]),
                timeout=timeout_s,
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error
        return response.prompt

    async def generate(
        self,
        model: str,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        n: int,
        request_id: str,
        timeout_s: float,
    ) -> AsyncIterator[Delta]:
        """Streams the n completions' deltas, interleaved; closing the iterator early cancels
        the RPC (and its sequences)."""
        call = self._stub.Generate(
            generation_pb2.GenerateRequest(
                model=model,
                messages=[m.to_pb() for m in messages],
                sampling=sampling.to_pb(),
                n=n,
            ),
            timeout=timeout_s,
            metadata=((REQUEST_ID_METADATA_KEY, request_id),),
        )
        try:
            async for response in call:
                yield Delta(
                    index=response.index,
                    text=response.text,
                    token_count=len(response.token_ids),
                    prompt_tokens=response.usage.prompt_tokens,
                    finish_reason=_FINISH_REASONS.get(response.finish_reason),
                    logprobs=_logprobs_json(response.logprobs),
                )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error
        finally:
            call.cancel()
