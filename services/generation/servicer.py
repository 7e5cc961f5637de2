"""Thin gRPC adapter over the model pool and its engines."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

from llmserve.common.v1 import common_pb2
from llmserve.generation.v1 import generation_pb2, generation_pb2_grpc
from services.common.domain import ChatMessage, OutputConstraint, SamplingParams
from services.common.errors import InvalidArgument
from services.common.rpc import rpc_method
from services.generation.engine import FinishReason
from services.generation.model_pool import LoadedModel, ModelPool
from services.generation.sampler import ResolvedSampling
from services.generation.tools import ToolUse

MAX_N = 16
_FINISH_REASONS = {
    FinishReason.STOP: generation_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: generation_pb2.FINISH_REASON_LENGTH,
}


def constraint_from_pb(pb: generation_pb2.OutputConstraint) -> OutputConstraint:
    kind = pb.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument("The output constraint is empty.", param=pb.origin or None)
    if kind == "json_object":
        spec = ""
    elif kind == "choice":
        if not pb.choice.choices:
            raise InvalidArgument("A choice needs at least one string.", param=pb.origin or None)
        spec = json.dumps(list(pb.choice.choices), ensure_ascii=False)
    else:
        spec = getattr(pb, kind)
    return OutputConstraint(kind, spec, pb.origin or "constraint")


def _messages(request) -> list[ChatMessage]:
    if not request.model:
        raise InvalidArgument("`model` is required.", param="model")
    if not request.messages:
        raise InvalidArgument("`messages` must hold at least one message.", param="messages")
    return [ChatMessage.from_pb(m) for m in request.messages]


_TOOL_MODES = {
    generation_pb2.TOOL_CHOICE_MODE_NONE: "none",
    generation_pb2.TOOL_CHOICE_MODE_AUTO: "auto",
    generation_pb2.TOOL_CHOICE_MODE_REQUIRED: "required",
    generation_pb2.TOOL_CHOICE_MODE_FUNCTION: "function",
}


def _tools(request) -> list[dict]:
    tools: list = []
    if request.tools_json:
        try:
            tools = json.loads(request.tools_json)
        except json.JSONDecodeError as error:
            raise InvalidArgument(f"tools_json is not JSON: {error}", param="tools") from error
        valid = isinstance(tools, list) and all(
            isinstance(t, dict)
            and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str)
            for t in tools
        )
        if not valid:
            raise InvalidArgument("tools must be OpenAI function tools.", param="tools")
    return tools


def tool_use_from_pb(request) -> ToolUse:
    """The request's tools and choice; INVALID_ARGUMENT for what cannot be followed."""
    tools = _tools(request)
    choice = request.tool_choice
    mode = _TOOL_MODES.get(choice.mode, "auto" if tools else "none")
    use = ToolUse(
        tools=tuple(tools),
        mode=mode,
        function_name=choice.function_name,
        parallel=choice.parallel_tool_calls if choice.HasField("parallel_tool_calls") else True,
    )
    if use.forced and not tools:
        raise InvalidArgument(f"tool_choice `{mode}` needs tools.", param="tool_choice")
    if mode == "function" and use.function_name not in use.names:
        raise InvalidArgument(
            f"tool_choice names `{use.function_name}`, which tools does not declare.",
            param="tool_choice",
        )
    if tools and not request.messages:
        raise InvalidArgument("tools need messages, not a raw prompt.", param="tools")
    if use.forced and request.HasField("constraint"):
        raise InvalidArgument(
            "A forced tool call and an output constraint cannot be combined.",
            param="tool_choice",
        )
    return use


def _prompt_ids(
    model: LoadedModel, request, tools: tuple[dict, ...] | None = None
) -> tuple[list[int], str]:
    """The prompt's token ids from exactly one of messages, prompt, prompt_token_ids (blocking:
    tokenization), and the name of the field they came from."""
    given = [
        name
        for name, present in (
            ("messages", bool(request.messages)),
            ("prompt", request.HasField("prompt")),
            ("prompt_token_ids", bool(request.prompt_token_ids)),
        )
        if present
    ]
    if len(given) != 1:
        raise InvalidArgument(
            "Set exactly one of `messages`, `prompt` and `prompt_token_ids`.", param="prompt"
        )
    if request.messages:
        return model.render_prompt(_messages(request), tools)[1], "messages"
    if request.HasField("prompt"):
        ids = model.tokenizer.encode(request.prompt, request.add_special_tokens)
    else:
        ids = list(request.prompt_token_ids)
        model.check_token_ids(ids, "prompt")
    model.check_prompt(ids, "prompt")
    return ids, "prompt"


class GenerationServicer(generation_pb2_grpc.GenerationServiceServicer):
    def __init__(self, pool: ModelPool):
        self._pool = pool

    @rpc_method
    async def Generate(self, request, context):
        if not request.model:
            raise InvalidArgument("`model` is required.", param="model")
        model = await self._pool.get(request.model)
        tool_use = tool_use_from_pb(request)
        prompt_ids, param = await asyncio.to_thread(_prompt_ids, model, request, tool_use.shown)
        sampling = SamplingParams.from_pb(request.sampling).with_defaults(
            model.record.default_sampling
        )
        model.check_sampling(sampling)
        room = model.room_for(prompt_ids, sampling.max_tokens, param)
        base = ResolvedSampling.resolve(sampling, room)
        constraint = None
        if request.HasField("constraint"):
            constraint = constraint_from_pb(request.constraint)
        elif tool_use.forced:
            # tool_choice required or a function: the grammar of the family's call markup.
            grammar_source = tool_use.forcing_grammar(model.tool_format)
            constraint = OutputConstraint("lark", grammar_source, "tool_choice")
        if constraint is not None:
            grammar = await asyncio.to_thread(model.grammars.compile, constraint)
            # The grammar decides where the output ends: a stop string would cut it short.
            base = replace(base, grammar=grammar, stop=(), ignore_eos=False)
        count = request.n or 1
        if count > MAX_N:
            raise InvalidArgument(f"n must be at most {MAX_N}.", param="n")
        # Completion i of a seeded request uses seed + i: reproducible, yet distinct.
        params = [replace(base, seed=base.seed + i) for i in range(count)]
        usage = common_pb2.Usage(prompt_tokens=len(prompt_ids))
        parsers = tool_use.parsers(model.tool_format, count)
        async for event in model.engine.generate(prompt_ids, params):
            text, calls = event.text, []
            if parsers is not None:
                parser = parsers[event.index]
                text, calls = parser.push(text)
                if event.finish_reason is not None:
                    rest, more = parser.finish()
                    text, calls = text + rest, calls + more
            response = generation_pb2.GenerateResponse(
                index=event.index,
                text=text,
                token_ids=event.token_ids,
                usage=usage,
                logprobs=[self._logprob_pb(model, lp) for lp in event.logprobs],
                tool_calls=[call.to_pb() for call in calls],
            )
            if event.finish_reason is not None:
                response.finish_reason = _FINISH_REASONS[event.finish_reason]
                if (
                    event.finish_reason is FinishReason.STOP
                    and parsers
                    and parsers[event.index].calls
                ):
                    response.finish_reason = generation_pb2.FINISH_REASON_TOOL_CALLS
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
        if request.HasField("prompt") == bool(request.messages):
            raise InvalidArgument("Set exactly one of `messages` and `prompt`.", param="prompt")
        if not request.model:
            raise InvalidArgument("`model` is required.", param="model")
        model = await self._pool.get(request.model)

        def tokenize() -> tuple[str, list[int]]:
            if request.HasField("prompt"):
                ids = model.tokenizer.encode(request.prompt, request.add_special_tokens)
                prompt, param = request.prompt, "prompt"
            else:
                prompt, ids = model.tokenize_chat(
                    _messages(request),
                    tools=_tools(request) or None,
                    add_generation_prompt=(
                        request.add_generation_prompt
                        if request.HasField("add_generation_prompt")
                        else True
                    ),
                    add_special_tokens=request.add_special_tokens,
                )
                param = "messages"
            if request.check_context_length:
                model.check_prompt(ids, param)
            return prompt, ids

        prompt, prompt_ids = await asyncio.to_thread(tokenize)
        return generation_pb2.TokenizeResponse(
            token_ids=prompt_ids,
            prompt=prompt,
            token_strs=model.tokenizer.token_strs(prompt_ids),
            max_model_len=model.record.context_length,
        )

    @rpc_method
    async def Detokenize(self, request, context):
        if not request.model:
            raise InvalidArgument("`model` is required.", param="model")
        model = await self._pool.get(request.model)
        ids = list(request.token_ids)
        model.check_token_ids(ids, "tokens")
        text = await asyncio.to_thread(model.tokenizer.decode, ids, request.skip_special_tokens)
        return generation_pb2.DetokenizeResponse(text=text)

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
