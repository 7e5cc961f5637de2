"""OpenAI request models: the one place where requests are validated and bounded.

Bounds mirror OpenAI's documented ranges (and vLLM's for its extensions) and the integer
widths of the protos behind them, so the services trust what the edge lets through. Types are
strict, as OpenAI's are: `"stream": "yes"` or `"max_tokens": "5"` is a 400, not a guess.
Unknown fields are accepted and reported, as OpenAI clients expect; a known field the server
cannot honour (structured output, tools) is refused with 400, never silently ignored.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edge.generation_client import ToolUse
from services.common.domain import ChatMessage, OutputConstraint, SamplingParams, ToolCall
from services.common.schemas import closed_objects

logger = logging.getLogger(__name__)

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
MAX_STOP_SEQUENCES = 4
# Token ids and token counts travel as 32-bit integers; ids of stored rows are 64-bit.
MAX_INT32 = 2**31 - 1
MAX_INT64 = 2**63 - 1
# Unix seconds up to the year 5138: any time a client means, and still an int64 in ms.
MAX_UNIX_S = 10**11
TokenId = Annotated[int, Field(ge=0, le=MAX_INT32)]
TokenCount = Annotated[int, Field(ge=1, le=MAX_INT32)]
# OpenAI documents seed as a 64-bit integer; the sampler takes it modulo 2**64.
Seed = Annotated[int, Field(ge=-(2**63), le=2**64 - 1)]
FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"


_TEXTS_OR_TOKEN_IDS = "a string, a list of strings, token ids or a list of token-id lists"


def _is_token_ids(value) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= MAX_INT32 for t in value
        )
    )


def texts_or_token_ids(value, empty_texts: bool) -> list[str] | list[list[int]]:
    """OpenAI's `prompt` / `input`: a string, strings, token ids or lists of them, as a list
    of texts or of token-id lists (the model's own vocabulary). Checked by hand: a pydantic
    union would report errors under each member's name."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ValueError(f"must be {_TEXTS_OR_TOKEN_IDS}, not empty")
    if all(isinstance(item, str) and (empty_texts or item) for item in items):
        return items
    if _is_token_ids(items):
        return [items]
    if all(_is_token_ids(item) for item in items):
        return items
    empty = "token-id lists" if empty_texts else "items"
    raise ValueError(
        f"must be {_TEXTS_OR_TOKEN_IDS}, with no empty {empty} and ids in 0..{MAX_INT32}"
    )


def lone_surrogate_at(value: Any, path: str = "") -> str | None:
    """Where `value` holds a lone UTF-16 surrogate (JSON lets "\\ud800" through; it is not
    Unicode and cannot be encoded), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
    elif isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            found = lone_surrogate_at(key, where) or lone_surrogate_at(item, where)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = lone_surrogate_at(item, f"{path}.{index}" if path else str(index))
            if found:
                return found
    return None


class ValidUnicode(BaseModel):
    """Mixin of whole request bodies: text anywhere in them must be valid Unicode."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        where = lone_surrogate_at(data)
        if where:
            raise ValueError(f"{where} holds a lone UTF-16 surrogate, which is not valid Unicode")
        return data


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    @property
    def ignored_fields(self) -> list[str]:
        return sorted(self.model_extra or {})


class RequestBody(ValidUnicode, OpenAIModel):
    """A whole OpenAI-style request body."""

    def log_ignored_fields(self) -> None:
        if self.ignored_fields:
            logger.info("ignoring unsupported request fields: %s", ", ".join(self.ignored_fields))


class ContentPart(OpenAIModel):
    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _check(self) -> ContentPart:
        if self.type != "text":
            raise ValueError(
                f"content of type `{self.type}` is not supported; this model reads text"
            )
        if self.text is None:
            raise ValueError("a content part of type `text` needs `text`")
        return self


class FunctionCallIn(OpenAIModel):
    name: Annotated[str, Field(pattern=FUNCTION_NAME)]
    # A JSON object as text, as OpenAI sends it back.
    arguments: str


class ToolCallIn(OpenAIModel):
    id: Annotated[str, Field(min_length=1, max_length=256)]
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(OpenAIModel):
    # Checked field by field (defaults too), so an error names the field it is about; the
    # calls come before the content, which an assistant message with calls may leave out.
    role: str
    tool_calls: list[ToolCallIn] | None = None
    content: str | list[ContentPart] | None = Field(default=None, validate_default=True)
    name: str | None = Field(default=None, validate_default=True)
    tool_call_id: str | None = Field(default=None, validate_default=True)
    function_call: dict | None = None

    @field_validator("role")
    @classmethod
    def _known_role(cls, role: str) -> str:
        if role not in ROLES:
            raise ValueError(f"invalid role `{role}`; expected one of {', '.join(ROLES)}")
        return role

    @field_validator("content")
    @classmethod
    def _has_content(cls, content, info: ValidationInfo):
        calls = info.data.get("tool_calls")
        if calls and info.data.get("role") != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if content is None and "role" in info.data and not calls:
            raise ValueError(f"a message with role `{info.data['role']}` needs `content`")
        return content

    @field_validator("name")
    @classmethod
    def _function_has_name(cls, name, info: ValidationInfo):
        if not name and info.data.get("role") == "function":
            raise ValueError("a message with role `function` needs `name`")
        return name

    @field_validator("tool_call_id")
    @classmethod
    def _tool_has_call_id(cls, tool_call_id, info: ValidationInfo):
        if not tool_call_id and info.data.get("role") == "tool":
            raise ValueError("a message with role `tool` needs `tool_call_id`")
        return tool_call_id

    @field_validator("function_call")
    @classmethod
    def _no_function_call(cls, call):
        if call:
            raise ValueError("the legacy function_call is not supported; send tool_calls")
        return call

    def to_domain(self) -> ChatMessage:
        if isinstance(self.content, list):
            content = "".join(part.text or "" for part in self.content)
        else:
            content = self.content or ""
        return ChatMessage(
            role=self.role,
            content=content,
            name=self.name or "",
            tool_call_id=self.tool_call_id or "",
            tool_calls=tuple(
                ToolCall(c.id, c.function.name, c.function.arguments) for c in self.tool_calls or ()
            ),
        )


class StreamOptions(OpenAIModel):
    include_usage: bool = False


class JsonSchemaFormat(OpenAIModel):
    name: Annotated[str, Field(pattern=FUNCTION_NAME)]
    description: str | None = None
    schema_: dict | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _check(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("`json_schema` is required when type is `json_schema`")
        return self


class StructuredOutputs(OpenAIModel):
    """vLLM's `structured_outputs`: one of a JSON schema, a regex or a choice of strings."""

    json_: dict | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: Annotated[list[str], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _one(self) -> StructuredOutputs:
        if sum(v is not None for v in (self.json_, self.regex, self.choice)) != 1:
            raise ValueError("set exactly one of `json`, `regex` and `choice`")
        return self


def _schema_constraint(schema: dict | str, origin: str) -> OutputConstraint:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as error:
            raise ValueError(f"{origin} is not a JSON schema: {error}") from error
    if not isinstance(schema, dict):
        raise ValueError(f"{origin} must be a JSON schema object")
    # Nothing beyond the declared properties where a schema leaves it open (OpenAI's strict
    # mode requires it said); the output still validates against the schema as given.
    schema = closed_objects(schema)
    return OutputConstraint("json_schema", json.dumps(schema, ensure_ascii=False), origin)


class FunctionDefinition(OpenAIModel):
    name: Annotated[str, Field(pattern=FUNCTION_NAME)]
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None


class Tool(OpenAIModel):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(OpenAIModel):
    name: str


class NamedToolChoice(OpenAIModel):
    type: Literal["function"]
    function: FunctionName


class GenerationRequest(RequestBody):
    """What chat and legacy completions share: the model, streaming and sampling, bounded."""

    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    # Not in OpenAI's API; accepted as vLLM does (-1 or 0 disables).
    top_k: Annotated[int, Field(ge=-1, le=MAX_INT32)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=10)] | None = None
    max_tokens: TokenCount | None = None
    stop: str | list[str] | None = None
    seed: Seed | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    n: Annotated[int, Field(ge=1, le=16)] = 1
    user: str | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    # Not in OpenAI's API; accepted as vLLM does.
    stop_token_ids: list[TokenId] | None = None
    ignore_eos: bool = False
    # Structured output: OpenAI's response_format, and vLLM's extensions (at most one of them).
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict | str | None = None
    guided_regex: str | None = None
    guided_choice: Annotated[list[str], Field(min_length=1)] | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop):
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"takes at most {MAX_STOP_SEQUENCES} sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stop

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, logit_bias):
        for token in logit_bias or {}:
            if not token.isdigit() or int(token) > MAX_INT32:
                raise ValueError(f"keys must be token ids, got {token!r}")
        return logit_bias

    @model_validator(mode="after")
    def _check_stream_options(self) -> GenerationRequest:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        constraint = self.output_constraint
        if constraint is not None and self.stop:
            raise ValueError(
                f"stop cannot be combined with {constraint.origin}: the grammar decides where "
                "the output ends, and a stop string would cut it short"
            )
        return self

    @property
    def output_constraint(self) -> OutputConstraint | None:
        """The grammar the output must follow, from whichever field asked for one."""
        found: list[OutputConstraint] = []
        rf = self.response_format
        if rf is not None and rf.type == "json_object":
            found.append(OutputConstraint("json_object", "", "response_format"))
        elif rf is not None and rf.type == "json_schema":
            schema = rf.json_schema.schema_ if rf.json_schema else None
            found.append(
                _schema_constraint(schema, "response_format")
                if schema is not None
                else OutputConstraint("json_object", "", "response_format")
            )
        so = self.structured_outputs
        if so is not None:
            if so.json_ is not None:
                found.append(_schema_constraint(so.json_, "structured_outputs"))
            elif so.regex is not None:
                found.append(OutputConstraint("regex", so.regex, "structured_outputs"))
            else:
                choices = json.dumps(so.choice, ensure_ascii=False)
                found.append(OutputConstraint("choice", choices, "structured_outputs"))
        if self.guided_json is not None:
            found.append(_schema_constraint(self.guided_json, "guided_json"))
        if self.guided_regex is not None:
            found.append(OutputConstraint("regex", self.guided_regex, "guided_regex"))
        if self.guided_choice is not None:
            choices = json.dumps(self.guided_choice, ensure_ascii=False)
            found.append(OutputConstraint("choice", choices, "guided_choice"))
        if len(found) > 1:
            names = ", ".join(c.origin for c in found)
            raise ValueError(f"only one output constraint may be given, not {names}")
        return found[0] if found else None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def _sampling_params(
        self, max_tokens: int | None, logprobs: bool, top_logprobs: int
    ) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=max(self.top_k, 0) if self.top_k is not None else None,
            max_tokens=max_tokens,
            stop=tuple(stop),
            seed=self.seed % 2**64 if self.seed is not None else None,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty,
            logit_bias=tuple(sorted((int(k), v) for k, v in (self.logit_bias or {}).items())),
            stop_token_ids=tuple(self.stop_token_ids or ()),
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            ignore_eos=self.ignore_eos,
        )


class ChatCompletionRequest(GenerationRequest):
    messages: Annotated[list[ChatMessageIn], Field(min_length=1)]
    max_completion_tokens: TokenCount | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    # Tools: shown to the model as its chat template does; calls parsed from its output, or
    # forced by constrained decoding for `required` and a named function.
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDefinition] | None = None
    # Retrieval overrides as the node API names them (one value, or one per collection).
    vdb_collection_name: list[str] | None = None
    limit: list[Annotated[int, Field(ge=1, le=100)]] | None = None
    score_threshold: list[Annotated[float, Field(ge=-1, le=1)]] | None = None

    @field_validator("vdb_collection_name", "limit", "score_threshold", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return value if value is None or isinstance(value, list) else [value]

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        self._check_unsupported()
        return self

    def _check_unsupported(self) -> None:
        """Refuses, with the reason, tool use that cannot be followed."""
        if self.tools and self.functions:
            raise ValueError("send tools or the legacy functions, not both")
        declared = {tool.function.name for tool in self.all_tools}
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice) and choice.function.name not in declared:
            raise ValueError(
                f"tool_choice names `{choice.function.name}`, which tools does not declare"
            )
        if choice == "required" and not declared:
            raise ValueError("tool_choice `required` needs tools")
        forced = declared and (choice == "required" or isinstance(choice, NamedToolChoice))
        if forced and self.output_constraint is not None:
            raise ValueError(
                "a forced tool call (tool_choice) cannot be combined with "
                f"{self.output_constraint.origin}"
            )
        if forced and self.stop:
            raise ValueError(
                "stop cannot be combined with a forced tool call: the call's grammar decides "
                "where the output ends"
            )

    @property
    def all_tools(self) -> list[Tool]:
        """`tools`, or the legacy `functions` as tools."""
        if self.functions:
            return [Tool(type="function", function=f) for f in self.functions]
        return list(self.tools or ())

    def tool_use(self) -> ToolUse | None:
        """The tools and tool choice for the generation service; None without tools."""
        tools_json = self.tools_json()
        if not tools_json:
            return None
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice):
            return ToolUse(tools_json, "function", choice.function.name, self.parallel_tool_calls)
        return ToolUse(tools_json, choice or "auto", "", self.parallel_tool_calls)

    def tools_json(self) -> str:
        """The declared tools as the generation service takes them (a JSON list)."""
        tools = [tool.model_dump(exclude_none=True, by_alias=True) for tool in self.all_tools]
        return json.dumps(tools, ensure_ascii=False) if tools else ""

    def to_messages(self) -> list[ChatMessage]:
        return [message.to_domain() for message in self.messages]

    def to_sampling_params(self) -> SamplingParams:
        return self._sampling_params(
            self.max_completion_tokens or self.max_tokens, self.logprobs, self.top_logprobs or 0
        )

    def log_ignored_fields(self) -> None:
        ignored = self.ignored_fields + [
            f"messages.{i}.{name}" for i, m in enumerate(self.messages) for name in m.ignored_fields
        ]
        if ignored:
            logger.info("ignoring unsupported request fields: %s", ", ".join(ignored))


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
