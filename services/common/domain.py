"""Domain types shared by several services, with their proto converters."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from llmserve.common.v1 import common_pb2

_SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
)


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str
    name: str = ""
    tool_call_id: str = ""

    @classmethod
    def from_pb(cls, pb: common_pb2.ChatMessage) -> ChatMessage:
        return cls(role=pb.role, content=pb.content, name=pb.name, tool_call_id=pb.tool_call_id)

    def to_pb(self) -> common_pb2.ChatMessage:
        return common_pb2.ChatMessage(
            role=self.role, content=self.content, name=self.name, tool_call_id=self.tool_call_id
        )


@dataclass(frozen=True)
class SamplingParams:
    """Sampling controls; None means "not set here", so layers of defaults can be merged."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None

    def with_defaults(self, defaults: SamplingParams) -> SamplingParams:
        """Fills every unset field from `defaults`."""
        merged = {
            name: getattr(defaults, name) if getattr(self, name) is None else getattr(self, name)
            for name in _SAMPLING_FIELDS
        }
        return SamplingParams(stop=self.stop or defaults.stop, **merged)

    def to_dict(self) -> dict:
        """JSON-friendly form with unset fields left out."""
        data = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        data["stop"] = list(self.stop)
        if not data["stop"]:
            del data["stop"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> SamplingParams:
        values = {k: data[k] for k in _SAMPLING_FIELDS if data.get(k) is not None}
        return cls(stop=tuple(data.get("stop") or ()), **values)

    @classmethod
    def from_pb(cls, pb: common_pb2.SamplingParams) -> SamplingParams:
        values = {name: getattr(pb, name) for name in _SAMPLING_FIELDS if pb.HasField(name)}
        return cls(stop=tuple(pb.stop), **values)

    def to_pb(self) -> common_pb2.SamplingParams:
        values = {name: getattr(self, name) for name in _SAMPLING_FIELDS}
        return common_pb2.SamplingParams(
            stop=list(self.stop), **{k: v for k, v in values.items() if v is not None}
        )


@dataclass(frozen=True)
class TokenSpans:
    """Content tokens of a text (no special tokens) and the characters each covers."""

    ids: list[int]
    starts: list[int]
    ends: list[int]
