"""POST /tokenize and /detokenize in vLLM's shapes: a model's tokenizer, and its chat template
for `messages`. Not billable; authenticated and per serving like every API route."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, model_validator

from edge.auth import Access, caller_of, resolve_access, serving_id_of
from edge.protocol import ChatMessageIn, RequestBody, TokenId, Tool
from edge.state import EdgeState
from services.common.errors import InvalidArgument
from services.common.records import ModelKind

router = APIRouter()


class TokenizeRequest(RequestBody):
    # Optional, as in vLLM: a serving's route, or a key's serving, decides it otherwise.
    model: Annotated[str, Field(min_length=1)] | None = None
    # Exactly one of prompt (raw text) and messages (rendered by the chat template).
    prompt: str | None = None
    messages: Annotated[list[ChatMessageIn], Field(min_length=1)] | None = None
    # vLLM's defaults: true for a prompt, false for messages (the template writes them).
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    return_token_strs: bool = False
    # With messages: rendered as chat completions render them.
    tools: list[Tool] | None = None

    @model_validator(mode="after")
    def _check(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("set exactly one of `prompt` and `messages`")
        if self.continue_final_message:
            raise ValueError("continue_final_message is not supported")
        if self.tools and self.messages is None:
            raise ValueError("tools need messages")
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(RequestBody):
    model: Annotated[str, Field(min_length=1)] | None = None
    tokens: list[TokenId]


class DetokenizeResponse(BaseModel):
    prompt: str


async def _access(request: Request, model: str | None) -> Access:
    """The named model, or the serving's when none is named."""
    if model is None and serving_id_of(request) is None:
        state: EdgeState = request.app.state.edge
        serving = await state.catalog.serving_or_none(caller_of(request).serving_id)
        if serving is None:
            raise InvalidArgument("`model` is required here.", param="model")
        model = serving.model
    return await resolve_access(request, model, ModelKind.CHAT)


@router.post("/tokenize", response_model=TokenizeResponse)
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    state: EdgeState = request.app.state.edge
    access = await _access(request, body.model)
    if body.messages is not None:
        tokenized = await state.generation.tokenize(
            access.model.name,
            messages=[m.to_domain() for m in body.messages],
            add_special_tokens=bool(body.add_special_tokens),
            add_generation_prompt=body.add_generation_prompt,
            tools_json=json.dumps(
                [t.model_dump(exclude_none=True, by_alias=True) for t in body.tools or ()],
                ensure_ascii=False,
            )
            if body.tools
            else "",
        )
    else:
        tokenized = await state.generation.tokenize(
            access.model.name,
            prompt=body.prompt,
            add_special_tokens=body.add_special_tokens is not False,
        )
    return TokenizeResponse(
        count=len(tokenized.token_ids),
        max_model_len=tokenized.max_model_len,
        tokens=tokenized.token_ids,
        token_strs=tokenized.token_strs if body.return_token_strs else None,
    )


@router.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    state: EdgeState = request.app.state.edge
    access = await _access(request, body.model)
    text = await state.generation.detokenize(access.model.name, body.tokens)
    return DetokenizeResponse(prompt=text)
