"""OpenAI request models. Unknown fields are accepted and reported, as OpenAI clients expect."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.common.domain import ChatMessage, SamplingParams
from services.common.errors import InvalidArgument

logger = logging.getLogger(__name__)

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
MAX_STOP_SEQUENCES = 4


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="allow")

    @property
    def ignored_fields(self) -> list[str]:
        return sorted(self.model_extra or {})


class ContentPart(OpenAIModel):
    type: str
    text: str | None = None


class ChatMessageIn(OpenAIModel):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None

    def to_domain(self, index: int) -> ChatMessage:
        if self.role not in ROLES:
            raise InvalidArgument(
                f"Invalid role `{self.role}` in messages[{index}]; expected one of "
                f"{', '.join(ROLES)}.",
                param=f"messages.{index}.role",
            )
        if isinstance(self.content, list):
            unsupported = [p.type for p in self.content if p.type != "text"]
            if unsupported:
                raise InvalidArgument(
                    f"messages[{index}] has content of type {unsupported[0]}; this model reads "
                    "text only.",
                    param=f"messages.{index}.content",
                )
            content = "".join(p.text or "" for p in self.content)
        else:
            content = self.content or ""
        return ChatMessage(
            role=self.role,
            content=content,
            name=self.name or "",
            tool_call_id=self.tool_call_id or "",
        )


class StreamOptions(OpenAIModel):
    include_usage: bool = False


class ChatCompletionRequest(OpenAIModel):
    model: str = Field(min_length=1)
    messages: Annotated[list[ChatMessageIn], Field(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    # Not in OpenAI's API; accepted as vLLM does.
    top_k: Annotated[int, Field(ge=0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    n: Annotated[int, Field(ge=1, le=16)] = 1
    user: str | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    # Not in OpenAI's API; accepted as vLLM does.
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    ignore_eos: bool = False
    # Retrieval overrides as the node API names them (one value, or one per collection).
    vdb_collection_name: list[str] | None = None
    limit: list[Annotated[int, Field(ge=1, le=100)]] | None = None
    score_threshold: list[Annotated[float, Field(ge=-1, le=1)]] | None = None

    @field_validator("vdb_collection_name", "limit", "score_threshold", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return value if value is None or isinstance(value, list) else [value]

    @model_validator(mode="after")
    def _check_stop(self) -> ChatCompletionRequest:
        if isinstance(self.stop, list) and len(self.stop) > MAX_STOP_SEQUENCES:
            raise ValueError(f"stop takes at most {MAX_STOP_SEQUENCES} sequences")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        for token in self.logit_bias or {}:
            if not token.isdigit():
                raise ValueError(f"logit_bias keys must be token ids, got {token!r}")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def to_messages(self) -> list[ChatMessage]:
        return [message.to_domain(i) for i, message in enumerate(self.messages)]

    def to_sampling_params(self) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_tokens=self.max_completion_tokens or self.max_tokens,
            stop=tuple(stop),
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty,
            logit_bias=tuple(sorted((int(k), v) for k, v in (self.logit_bias or {}).items())),
            stop_token_ids=tuple(self.stop_token_ids or ()),
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs or 0,
            ignore_eos=self.ignore_eos,
        )

    def log_ignored_fields(self) -> None:
        ignored = self.ignored_fields + [
            f"messages.{i}.{name}" for i, m in enumerate(self.messages) for name in m.ignored_fields
        ]
        if ignored:
            logger.info("ignoring unsupported request fields: %s", ", ".join(ignored))


FinishReason = Literal["stop", "length"]


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
