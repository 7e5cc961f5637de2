"""Tool calls: how a chat template family shows tools to the model, how its calls look in the
output, and the grammar that forces a call.

A family is chosen from the template's source (`tool_format_for`): Hermes/Qwen
(`<tool_call>{json}</tool_call>`), Mistral (`[TOOL_CALLS][...]`), Llama 3 (a bare
`{"name", "parameters"}` object), or generic JSON (a bare `{"name", "arguments"}` object or a
list of them) for a template that takes `tools` in a format not known here. A template that
does not take `tools` at all gets them in a generic system message (GENERIC_INSTRUCTIONS) and
answers in the Hermes format, which is also how its history's calls are written back.

Parsers read a completion's text as it streams, pass content through (holding back what
could still be a call's opening), and hand out each call whole once it is complete. A call
that does not parse, or names an undeclared function, stays content.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from services.common.domain import ChatMessage, ToolCall
from services.common.schemas import closed_objects

# Compact JSON with OpenAI's separators, as structured output (services/generation/constrained).
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

GENERIC_INSTRUCTIONS = """You can call functions to answer. The functions, as JSON Schema:
<tools>
{tools}
</tools>
To call functions, reply with one block per call and nothing else:
<tool_call>
{{"name": "<function name>", "arguments": <its arguments as a JSON object>}}
</tool_call>"""


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _function(tool: dict) -> dict:
    return tool.get("function", tool)


def _arguments_text(arguments) -> str | None:
    """Arguments as JSON object text, or None when they are not an object."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return json.dumps(arguments, ensure_ascii=False)


@dataclass(frozen=True)
class ToolFormat:
    """One family's way of writing calls."""

    name: str
    # The call markup: a tagged block per call, or a whole-output JSON value after a prefix.
    start: str = ""
    end: str = ""
    prefix: str = ""
    arguments_key: str = "arguments"
    # Whole-output formats: the calls as a JSON list (else one object).
    as_list: bool = False

    @property
    def tagged(self) -> bool:
        return bool(self.start)

    def parser(self, declared: Sequence[str], parallel: bool) -> ToolCallParser:
        return ToolCallParser(self, frozenset(declared), parallel)

    def call_text(self, call: ToolCall) -> str:
        """A call as this family writes it (for history in the generic format)."""
        arguments = json.loads(call.arguments) if _arguments_text(call.arguments) else {}
        body = json.dumps({"name": call.name, self.arguments_key: arguments}, ensure_ascii=False)
        return f"{self.start}\n{body}\n{self.end}" if self.tagged else self.prefix + body

    def forcing_grammar(self, tools: Sequence[dict], only: str | None, parallel: bool) -> str:
        """A Lark grammar (llguidance's dialect) of one call, or one or more when parallel, of
        the declared functions (only `only` when given), arguments per their parameters."""
        options = []
        for tool in tools:
            function = _function(tool)
            if only is not None and function["name"] != only:
                continue
            parameters = function.get("parameters") or {
                "type": "object",
                "properties": {},
            }
            # Closed objects: what the model may add beyond the declared properties is left
            # out (the arguments still validate against the schema as given).
            parameters = closed_objects(parameters)
            options.append(
                {
                    "type": "object",
                    "properties": {
                        "name": {"const": function["name"]},
                        self.arguments_key: parameters,
                    },
                    "required": ["name", self.arguments_key],
                    "additionalProperties": False,
                }
            )
        call = options[0] if len(options) == 1 else {"anyOf": options}
        # Parallel calls: at most one per declared function (a named choice: one call). Small
        # models otherwise repeat the same call until max_tokens.
        most = len(options) if parallel and only is None else 1
        if self.tagged:
            body = json.dumps({**call, "x-guidance": _JSON_OPTIONS})
            sequences = [' "\\n" '.join(["call"] * count) for count in range(1, most + 1)]
            lines = [
                "start: " + " | ".join(sequences),
                f"call: {json.dumps(self.start + chr(10))} body {json.dumps(chr(10) + self.end)}",
                f"body: %json {body}",
            ]
            return "\n".join(lines)
        if self.as_list or most > 1:
            schema = {"type": "array", "items": call, "minItems": 1, "maxItems": most}
        else:
            schema = call
        schema = {**schema, "x-guidance": _JSON_OPTIONS}
        prefix = f"{json.dumps(self.prefix)} " if self.prefix else ""
        return f"start: {prefix}body\nbody: %json {json.dumps(schema)}"


HERMES = ToolFormat("hermes", start="<tool_call>", end="</tool_call>")
MISTRAL = ToolFormat("mistral", prefix="[TOOL_CALLS]", as_list=True)
LLAMA3 = ToolFormat("llama3", arguments_key="parameters")
GENERIC_JSON = ToolFormat("json")


def tool_format_for(template_source: str) -> ToolFormat:
    if "<tool_call>" in template_source:
        return HERMES
    if "[TOOL_CALLS]" in template_source:
        return MISTRAL
    if "<|python_tag|>" in template_source or "ipython" in template_source:
        return LLAMA3
    if "tools" in template_source:
        return GENERIC_JSON
    # No tools in the template: the generic system message asks for Hermes' format.
    return HERMES


def template_renders_tools(template_source: str) -> bool:
    return "tools" in template_source


def generic_messages(
    messages: Sequence[ChatMessage], tools: Sequence[dict], tool_format: ToolFormat
) -> list[ChatMessage]:
    """The conversation for a template without tools: the tools in a system message, past
    calls written into the assistant's text, tool results as user turns."""
    converted = []
    for message in messages:
        if message.role == "assistant" and message.tool_calls:
            calls = "\n".join(tool_format.call_text(call) for call in message.tool_calls)
            content = f"{message.content}\n{calls}" if message.content else calls
            converted.append(ChatMessage("assistant", content, message.name))
        elif message.role == "tool":
            content = f"<tool_response>\n{message.content}\n</tool_response>"
            converted.append(ChatMessage("user", content))
        else:
            converted.append(message)
    if tools:
        listing = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
        instructions = GENERIC_INSTRUCTIONS.format(tools=listing)
        first = converted[0] if converted else None
        if first is not None and first.role in ("system", "developer"):
            converted[0] = ChatMessage(first.role, f"{first.content}\n\n{instructions}")
        else:
            converted.insert(0, ChatMessage("system", instructions))
    return converted


class ToolCallParser:
    """Splits one completion's streamed text into content and whole tool calls."""

    def __init__(self, tool_format: ToolFormat, declared: frozenset[str], parallel: bool):
        self._format = tool_format
        self._declared = declared
        self._parallel = parallel
        self._pending = ""
        self._in_call = False
        # Whole-output formats: None until the first visible characters decide.
        self._whole_output: bool | None = None if not tool_format.tagged else False
        self.calls: list[ToolCall] = []

    def push(self, text: str) -> tuple[str, list[ToolCall]]:
        """New text -> (content safe to emit, calls completed by it)."""
        self._pending += text
        if self._format.tagged:
            return self._tagged(final=False)
        return self._whole(final=False)

    def finish(self) -> tuple[str, list[ToolCall]]:
        """The end of the completion: what was held back, and a last unterminated call."""
        if self._format.tagged:
            return self._tagged(final=True)
        return self._whole(final=True)

    def _call(self, body: str) -> ToolCall | None:
        try:
            value = json.loads(body)
        except json.JSONDecodeError:
            return None
        return self._call_of(value)

    def _call_of(self, value) -> ToolCall | None:
        if not isinstance(value, dict) or value.get("name") not in self._declared:
            return None
        key = self._format.arguments_key
        arguments = _arguments_text(value.get(key, value.get("arguments", {})))
        if arguments is None:
            return None
        return ToolCall(new_call_id(), value["name"], arguments)

    def _accept(self, calls: list[ToolCall]) -> list[ToolCall]:
        accepted = []
        for call in calls:
            seen = [(c.name, c.arguments) for c in self.calls + accepted]
            # A repeated identical call adds nothing (small models repeat themselves).
            if (call.name, call.arguments) in seen:
                continue
            if not self._parallel and self.calls + accepted:
                continue
            accepted.append(call)
        self.calls.extend(accepted)
        return accepted

    def _tagged(self, final: bool) -> tuple[str, list[ToolCall]]:
        start, end = self._format.start, self._format.end
        content: list[str] = []
        calls: list[ToolCall] = []

        def emit(piece: str) -> None:
            # Whitespace between and after calls is markup, not content.
            if piece.strip() or not (calls or self.calls):
                content.append(piece)

        while True:
            if self._in_call:
                close = self._pending.find(end)
                if close < 0:
                    if final:
                        call = self._call(self._pending.strip())
                        if call is not None:
                            calls.append(call)
                        else:
                            emit(start + self._pending)
                        self._pending, self._in_call = "", False
                    break
                body, self._pending = self._pending[:close], self._pending[close + len(end) :]
                self._in_call = False
                call = self._call(body.strip())
                if call is not None:
                    calls.append(call)
                else:
                    emit(start + body + end)
                continue
            opening = self._pending.find(start)
            if opening >= 0:
                emit(self._pending[:opening])
                self._pending = self._pending[opening + len(start) :]
                self._in_call = True
                continue
            if final:
                emit(self._pending)
                self._pending = ""
                break
            held = _held_prefix(self._pending, start)
            cut = len(self._pending) - held
            emit(self._pending[:cut])
            self._pending = self._pending[cut:]
            break
        return "".join(content), self._accept(calls)

    def _decide_whole(self, final: bool) -> bool | None:
        """Whether the output is a whole-output call (None: not known yet)."""
        visible = self._pending.lstrip()
        prefix = self._format.prefix
        if not visible:
            return False if final else None
        if prefix:
            if visible.startswith(prefix):
                return True
            if prefix.startswith(visible):
                return False if final else None
            return False
        return visible[0] in "{["

    def _whole(self, final: bool) -> tuple[str, list[ToolCall]]:
        if self._whole_output is None:
            self._whole_output = self._decide_whole(final)
            if self._whole_output is None:
                return "", []
        if not self._whole_output:
            text, self._pending = self._pending, ""
            return text, []
        if not final:
            return "", []
        body = self._pending.strip()
        if self._format.prefix:
            body = body[len(self._format.prefix) :].strip()
        try:
            value = json.loads(body)
        except json.JSONDecodeError:
            value = None
        values = value if isinstance(value, list) else [value]
        calls = [self._call_of(v) for v in values]
        if value is None or not calls or any(c is None for c in calls):
            text, self._pending = self._pending, ""
            return text, []
        self._pending = ""
        return "", self._accept(calls)


def _held_prefix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


@dataclass(frozen=True)
class ToolUse:
    """A request's tools and tool choice, decided once (see GenerateRequest.tool_choice)."""

    tools: tuple[dict, ...] = ()
    # none, auto, required or function.
    mode: str = "none"
    function_name: str = ""
    parallel: bool = True

    @property
    def shown(self) -> tuple[dict, ...] | None:
        """The tools the model sees (None: none, or tool_choice none)."""
        return self.tools if self.tools and self.mode != "none" else None

    @property
    def forced(self) -> bool:
        return self.mode in ("required", "function")

    @property
    def names(self) -> list[str]:
        return [_function(tool)["name"] for tool in self.tools]

    def forcing_grammar(self, tool_format: ToolFormat) -> str:
        only = self.function_name if self.mode == "function" else None
        return tool_format.forcing_grammar(self.tools, only, self.parallel)

    def parsers(self, tool_format: ToolFormat, count: int) -> list[ToolCallParser] | None:
        if self.shown is None:
            return None
        return [tool_format.parser(self.names, self.parallel) for _ in range(count)]
