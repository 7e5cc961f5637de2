"""Domain types shared by several services, with their proto converters."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from llmserve.common.v1 import common_pb2


def now_ms() -> int:
    """Unix time in milliseconds, the unit of every stored timestamp."""
    return int(time.time() * 1000)


_SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "n_predict",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
)


def _float32_digits(value: float) -> float:
    return float(f"{value:.7g}")


@dataclass(frozen=True)
class ToolCall:
    """A function call: its id, the function's name, the arguments as JSON object text."""

    id: str
    name: str
    arguments: str

    @classmethod
    def from_pb(cls, pb: common_pb2.ToolCall) -> ToolCall:
        return cls(id=pb.id, name=pb.name, arguments=pb.arguments)

    def to_pb(self) -> common_pb2.ToolCall:
        return common_pb2.ToolCall(id=self.id, name=self.name, arguments=self.arguments)


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str
    name: str = ""
    tool_call_id: str = ""
    # An assistant message's function calls.
    tool_calls: tuple[ToolCall, ...] = ()

    @classmethod
    def from_pb(cls, pb: common_pb2.ChatMessage) -> ChatMessage:
        return cls(
            role=pb.role,
            content=pb.content,
            name=pb.name,
            tool_call_id=pb.tool_call_id,
            tool_calls=tuple(ToolCall.from_pb(c) for c in pb.tool_calls),
        )

    def to_pb(self) -> common_pb2.ChatMessage:
        return common_pb2.ChatMessage(
            role=self.role,
            content=self.content,
            name=self.name,
            tool_call_id=self.tool_call_id,
            tool_calls=[c.to_pb() for c in self.tool_calls],
        )


@dataclass(frozen=True)
class SamplingParams:
    """Sampling controls; None means "not set here", so layers of defaults can be merged."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    # Bound on generated tokens when max_tokens is unset (the node API's name for it).
    n_predict: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    # Per-request only (never defaults): (token id, bias) pairs, stop tokens, logprobs.
    logit_bias: tuple[tuple[int, float], ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False

    def with_defaults(self, defaults: SamplingParams) -> SamplingParams:
        """Fills every unset field from `defaults`."""
        merged = {
            name: getattr(defaults, name) if getattr(self, name) is None else getattr(self, name)
            for name in _SAMPLING_FIELDS
        }
        return dataclasses.replace(self, stop=self.stop or defaults.stop, **merged)

    def to_dict(self) -> dict:
        """JSON-friendly form of the fields a default may set, unset ones left out. Floats keep
        the 7 significant digits a float32 holds (0.3, not 0.30000001192092896)."""
        data = {
            k: _float32_digits(v) if isinstance(v, float) else v
            for k in _SAMPLING_FIELDS
            if (v := getattr(self, k)) is not None
        }
        if self.stop:
            data["stop"] = list(self.stop)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> SamplingParams:
        values = {k: data[k] for k in _SAMPLING_FIELDS if data.get(k) is not None}
        return cls(stop=tuple(data.get("stop") or ()), **values)

    @classmethod
    def from_pb(cls, pb: common_pb2.SamplingParams) -> SamplingParams:
        values = {name: getattr(pb, name) for name in _SAMPLING_FIELDS if pb.HasField(name)}
        return cls(
            stop=tuple(pb.stop),
            logit_bias=tuple(sorted(pb.logit_bias.items())),
            stop_token_ids=tuple(pb.stop_token_ids),
            logprobs=pb.logprobs,
            top_logprobs=pb.top_logprobs,
            ignore_eos=pb.ignore_eos,
            **values,
        )

    def to_pb(self) -> common_pb2.SamplingParams:
        values = {name: getattr(self, name) for name in _SAMPLING_FIELDS}
        return common_pb2.SamplingParams(
            stop=list(self.stop),
            logit_bias=dict(self.logit_bias),
            stop_token_ids=list(self.stop_token_ids),
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs,
            ignore_eos=self.ignore_eos,
            **{k: v for k, v in values.items() if v is not None},
        )


CONSTRAINT_KINDS = ("json_object", "json_schema", "regex", "choice", "lark")
_CONSTRAINT_NAMES = {
    "json_object": "JSON object format",
    "json_schema": "JSON schema",
    "regex": "regular expression",
    "choice": "choice",
    "lark": "grammar",
}


@dataclass(frozen=True)
class OutputConstraint:
    """A grammar the output must follow (structured output).

    `spec`: the JSON schema (serialized), the regex, the Lark grammar, or the choices as a JSON
    list; empty for json_object. `origin` is the request field it came from, for errors."""

    kind: str
    spec: str = ""
    origin: str = "response_format"

    @property
    def description(self) -> str:
        return _CONSTRAINT_NAMES.get(self.kind, self.kind)

    @property
    def param(self) -> str:
        return self.origin


DEFAULT_N_PREDICT = 1024
# Where neither the request, the serving nor the model sets a value (OpenAI's defaults, and a
# bounded completion: a request without max_tokens never runs to the end of the context).
PLATFORM_SAMPLING = SamplingParams(
    temperature=1.0,
    top_p=1.0,
    top_k=0,
    n_predict=DEFAULT_N_PREDICT,
    presence_penalty=0.0,
    frequency_penalty=0.0,
    repetition_penalty=1.0,
)


@dataclass(frozen=True)
class TokenSpans:
    """Content tokens of a text (no special tokens) and the characters each covers."""

    ids: list[int]
    starts: list[int]
    ends: list[int]
