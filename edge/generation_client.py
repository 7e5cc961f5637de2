"""Async client of the generation service: chat or a raw prompt in, streamed domain events
out; tokenization both ways."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from llmserve.generation.v1 import generation_pb2, generation_pb2_grpc
from services.common.client import ServiceClient
from services.common.domain import ChatMessage, OutputConstraint, SamplingParams, ToolCall

_FINISH_REASONS = {
    generation_pb2.FINISH_REASON_STOP: "stop",
    generation_pb2.FINISH_REASON_LENGTH: "length",
    generation_pb2.FINISH_REASON_TOOL_CALLS: "tool_calls",
}
_TOOL_MODES = {
    "none": generation_pb2.TOOL_CHOICE_MODE_NONE,
    "auto": generation_pb2.TOOL_CHOICE_MODE_AUTO,
    "required": generation_pb2.TOOL_CHOICE_MODE_REQUIRED,
    "function": generation_pb2.TOOL_CHOICE_MODE_FUNCTION,
}


@dataclass(frozen=True)
class ToolUse:
    """What a chat declares of tools: a JSON list of OpenAI tools, and how they may be used."""

    tools_json: str = ""
    # none, auto, required or function (then function_name); "" lets the service decide.
    mode: str = ""
    function_name: str = ""
    parallel_tool_calls: bool | None = None

    def to_pb(self) -> generation_pb2.ToolChoice:
        choice = generation_pb2.ToolChoice(
            mode=_TOOL_MODES.get(self.mode, generation_pb2.TOOL_CHOICE_MODE_UNSPECIFIED),
            function_name=self.function_name,
        )
        if self.parallel_tool_calls is not None:
            choice.parallel_tool_calls = self.parallel_tool_calls
        return choice


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
    # Tool calls this delta completes, each whole.
    tool_calls: tuple[ToolCall, ...] = ()


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


@dataclass(frozen=True)
class Tokenized:
    token_ids: list[int]
    # Each token as the vocabulary spells it.
    token_strs: list[str]
    # The rendered prompt (the text itself for a raw prompt).
    prompt: str
    max_model_len: int


def constraint_to_pb(constraint: OutputConstraint) -> generation_pb2.OutputConstraint:
    pb = generation_pb2.OutputConstraint(origin=constraint.origin)
    if constraint.kind == "json_object":
        pb.json_object = True
    elif constraint.kind == "choice":
        pb.choice.choices.extend(json.loads(constraint.spec))
    else:
        setattr(pb, constraint.kind, constraint.spec)
    return pb


class GenerationClient(ServiceClient):
    def __init__(self, address: str, timeout_s: float = 30.0):
        super().__init__(address, generation_pb2_grpc.GenerationServiceStub, timeout_s)

    async def render_prompt(self, model: str, messages: list[ChatMessage]) -> str:
        """The prompt the model's chat template makes of `messages`."""
        request = generation_pb2.TokenizeRequest(
            model=model, messages=[m.to_pb() for m in messages]
        )
        return (await self._unary(self._stub.Tokenize, request)).prompt

    async def tokenize(
        self,
        model: str,
        *,
        messages: list[ChatMessage] | None = None,
        prompt: str | None = None,
        add_special_tokens: bool = False,
        add_generation_prompt: bool = True,
        tools_json: str = "",
    ) -> Tokenized:
        """Token ids of `messages` (and tools) rendered by the chat template, or of a raw
        `prompt`."""
        request = generation_pb2.TokenizeRequest(
            model=model,
            messages=[m.to_pb() for m in messages or ()],
            add_special_tokens=add_special_tokens,
            add_generation_prompt=add_generation_prompt,
            tools_json=tools_json,
        )
        if prompt is not None:
            request.prompt = prompt
        response = await self._unary(self._stub.Tokenize, request)
        return Tokenized(
            list(response.token_ids),
            list(response.token_strs),
            response.prompt,
            response.max_model_len,
        )

    async def detokenize(
        self, model: str, token_ids: list[int], skip_special_tokens: bool = False
    ) -> str:
        request = generation_pb2.DetokenizeRequest(
            model=model, token_ids=token_ids, skip_special_tokens=skip_special_tokens
        )
        return (await self._unary(self._stub.Detokenize, request)).text

    def generate(
        self,
        model: str,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        n: int,
        timeout_s: float,
        constraint: OutputConstraint | None = None,
        tool_use: ToolUse | None = None,
    ) -> AsyncIterator[Delta]:
        """Streams the n completions' deltas of a chat, interleaved; closing the iterator early
        cancels the RPC (and its sequences). With a constraint, each follows its grammar; with
        tools, calls arrive parsed in `tool_calls`."""
        request = generation_pb2.GenerateRequest(
            model=model, messages=[m.to_pb() for m in messages], sampling=sampling.to_pb(), n=n
        )
        if tool_use is not None and tool_use.tools_json:
            request.tools_json = tool_use.tools_json
            request.tool_choice.CopyFrom(tool_use.to_pb())
        if constraint is not None:
            request.constraint.CopyFrom(constraint_to_pb(constraint))
        return self._deltas(request, timeout_s)

    def complete(
        self,
        model: str,
        prompt: str | list[int],
        sampling: SamplingParams,
        n: int,
        timeout_s: float,
        add_special_tokens: bool = True,
        constraint: OutputConstraint | None = None,
    ) -> AsyncIterator[Delta]:
        """`generate` for a raw prompt (text or token ids), continued without a chat template."""
        request = generation_pb2.GenerateRequest(
            model=model, sampling=sampling.to_pb(), n=n, add_special_tokens=add_special_tokens
        )
        if constraint is not None:
            request.constraint.CopyFrom(constraint_to_pb(constraint))
        if isinstance(prompt, str):
            request.prompt = prompt
        else:
            request.prompt_token_ids.extend(prompt)
        return self._deltas(request, timeout_s)

    async def _deltas(
        self, request: generation_pb2.GenerateRequest, timeout_s: float
    ) -> AsyncIterator[Delta]:
        async for response in self._stream(self._stub.Generate, request, timeout_s):
            yield Delta(
                index=response.index,
                text=response.text,
                token_count=len(response.token_ids),
                prompt_tokens=response.usage.prompt_tokens,
                finish_reason=_FINISH_REASONS.get(response.finish_reason),
                logprobs=_logprobs_json(response.logprobs),
                tool_calls=tuple(ToolCall.from_pb(c) for c in response.tool_calls),
            )
