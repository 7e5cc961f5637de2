"""Renders a model's Jinja chat template the way Hugging Face tokenizers do."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from services.common.domain import ChatMessage
from services.common.errors import InvalidArgument


def _raise_exception(message: str):
    raise InvalidArgument(f"The chat template rejected the conversation: {message}")


def _mapping(arguments: str):
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        return arguments
    return value if isinstance(value, dict) else arguments


class ChatTemplate:
    def __init__(self, source: str, special_tokens: dict[str, str]):
        # Same environment options as transformers' apply_chat_template.
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
        )
        env.filters["tojson"] = lambda value, indent=None: json.dumps(
            value, ensure_ascii=False, indent=indent
        )
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self._template = env.from_string(source)
        self.source = source
        self._special_tokens = special_tokens
        # OpenAI's `developer` role replaces `system`; older templates only know the latter.
        self._knows_developer = "developer" in source

    def render(
        self,
        messages: Sequence[ChatMessage],
        add_generation_prompt: bool = True,
        tools: Sequence[dict] | None = None,
    ) -> str:
        """`tools` (OpenAI tool definitions) reach the template as its `tools` variable, and an
        assistant's calls as `tool_calls` with arguments as a mapping, as transformers does."""
        conversation = []
        for message in messages:
            role = message.role
            if role == "developer" and not self._knows_developer:
                role = "system"
            item = {"role": role, "content": message.content}
            if message.name:
                item["name"] = message.name
            if message.tool_call_id:
                item["tool_call_id"] = message.tool_call_id
            if message.tool_calls:
                item["tool_calls"] = [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": _mapping(call.arguments)},
                    }
                    for call in message.tool_calls
                ]
            conversation.append(item)
        extra = {"tools": list(tools)} if tools else {}
        try:
            return self._template.render(
                messages=conversation,
                add_generation_prompt=add_generation_prompt,
                **self._special_tokens,
                **extra,
            )
        except TemplateError as error:
            raise InvalidArgument(f"The chat template failed to render: {error}") from error
