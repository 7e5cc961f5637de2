"""Loaded chat models of this replica: ONNX session, tokenizer, template and engine per model."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common.domain import ChatMessage, SamplingParams
from services.common.errors import ContextLengthExceeded, InvalidArgument
from services.common.lazy_models import LazyModels
from services.common.records import ModelKind, ModelRecord, chat_model_file
from services.generation.chat_template import ChatTemplate
from services.generation.constrained import GrammarCompiler
from services.generation.engine import GenerationEngine
from services.generation.metrics import EngineMetrics
from services.generation.onnx_model import OnnxCausalLM
from services.generation.prefix_cache import PrefixCache
from services.generation.tokenizer import TextTokenizer
from services.generation.tools import (
    ToolFormat,
    generic_messages,
    template_renders_tools,
    tool_format_for,
)

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    record: ModelRecord
    tokenizer: TextTokenizer
    template: ChatTemplate
    engine: GenerationEngine
    grammars: GrammarCompiler

    @property
    def context_length(self) -> int:
        """Tokens one sequence may hold here: the model's context, or a KV slot if shorter."""
        return self.engine.context_length

    @property
    def tool_format(self) -> ToolFormat:
        return tool_format_for(self.record.chat_template)

    def render_prompt(
        self, messages: Sequence[ChatMessage], tools: Sequence[dict] | None = None
    ) -> tuple[str, list[int]]:
        """Chat template -> prompt text and ids; rejects prompts that leave no room to answer."""
        prompt, ids = self.tokenize_chat(messages, tools=tools)
        self.check_prompt(ids, "messages")
        return prompt, ids

    def tokenize_chat(
        self,
        messages: Sequence[ChatMessage],
        add_generation_prompt: bool = True,
        add_special_tokens: bool = False,
        tools: Sequence[dict] | None = None,
    ) -> tuple[str, list[int]]:
        """The chat template's rendering of `messages` (and `tools`) and its token ids,
        unchecked. A template without tools gets them, and past calls, in the generic format
        (services/generation/tools.py)."""
        if not self.record.chat_template:
            raise InvalidArgument(
                f"The model `{self.record.name}` has no chat template, so it cannot take chat "
                "messages: send a raw prompt to /v1/completions, or import the model with "
                "--chat-template FILE.",
                param="messages",
            )
        native = template_renders_tools(self.record.chat_template)
        if not native and (tools or any(m.tool_calls for m in messages)):
            messages, tools = generic_messages(messages, tools or (), self.tool_format), None
        prompt = self.template.render(
            messages, add_generation_prompt=add_generation_prompt, tools=tools
        )
        return prompt, self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)

    def check_prompt(self, ids: list[int], param: str) -> None:
        """Refuses an empty prompt and one that leaves no room in the context to answer."""
        if not ids:
            raise InvalidArgument("The prompt is empty: it holds no tokens.", param=param)
        limit = self.context_length
        if len(ids) >= limit:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens. However, your "
                f"{param} resulted in {len(ids)} tokens. Please reduce the length of the "
                f"{param}.",
                param=param,
            )

    def check_token_ids(self, ids: Sequence[int], param: str) -> None:
        vocab = self.engine.model.vocab_size
        if any(not 0 <= token < vocab for token in ids):
            raise InvalidArgument(
                f"{param} holds a token id outside this model's vocabulary (0..{vocab - 1}).",
                param=param,
            )

    def check_sampling(self, sampling: SamplingParams) -> None:
        vocab = self.engine.model.vocab_size
        if any(not 0 <= token < vocab for token, _ in sampling.logit_bias):
            raise InvalidArgument(
                f"logit_bias names a token id outside this model's vocabulary (0..{vocab - 1}).",
                param="logit_bias",
            )
        if any(not 0 <= token < vocab for token in sampling.stop_token_ids):
            raise InvalidArgument(
                f"stop_token_ids holds an id outside the vocabulary (0..{vocab - 1}).",
                param="stop_token_ids",
            )

    def room_for(
        self, prompt_ids: list[int], max_tokens: int | None, param: str = "messages"
    ) -> int:
        """Tokens left for the completion; a max_tokens beyond that is an error, as in OpenAI."""
        room = self.context_length - len(prompt_ids)
        if max_tokens is not None and max_tokens > room:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.context_length} tokens. "
                f"However, you requested {len(prompt_ids) + max_tokens} tokens "
                f"({len(prompt_ids)} in the {param}, {max_tokens} in the completion). "
                f"Please reduce the length of the {param} or completion.",
                param=param,
            )
        return room


class ModelPool:
    def __init__(
        self,
        lookup: Callable[[str], Awaitable[ModelRecord]],
        providers: list[str],
        intra_op_threads: int,
        kv_slots: int,
        max_prefill_tokens: int,
        max_waiting: int = 256,
        metrics_enabled: bool = False,
        weights: str = "fp32",
        prefix_cache_bytes: int = 0,
        kv_context: int = 8192,
        spin_us: int = 0,
        kv_cache: str = "float",
    ):
        self._lookup = lookup
        self._providers = providers
        self._intra_op_threads = intra_op_threads
        self._spin_us = spin_us
        self._kv_slots = kv_slots
        self._kv_context = kv_context
        self._max_prefill_tokens = max_prefill_tokens
        self._max_waiting = max_waiting
        self._metrics_enabled = metrics_enabled
        self._weights = weights
        self._kv_cache = kv_cache
        self._prefix_cache_bytes = prefix_cache_bytes
        self._models = LazyModels(self._load)

    @property
    def loaded(self) -> dict[str, LoadedModel]:
        return self._models.loaded

    async def get(self, name: str) -> LoadedModel:
        return await self._models.get(name)

    async def _load(self, name: str) -> LoadedModel:
        record = await self._lookup(name)
        if record.kind is not ModelKind.CHAT:
            raise InvalidArgument(f"The model `{name}` is not a chat model.", param="model")
        logger.info("loading %s from %s", name, record.artifact_dir)
        return await asyncio.to_thread(self._build, record)

    def _build(self, record: ModelRecord) -> LoadedModel:
        artifact_dir = Path(record.artifact_dir)
        tokenizer = TextTokenizer(artifact_dir)
        on_cuda = self._providers[0] == "CUDAExecutionProvider"
        device = "cuda" if on_cuda else "cpu"
        model_path = artifact_dir / self._graph_file(record, device)
        model = OnnxCausalLM(model_path, self._providers, self._intra_op_threads, self._spin_us)
        engine = GenerationEngine(
            model,
            tokenizer,
            context_length=min(record.context_length, self._kv_context),
            kv_slots=self._kv_slots,
            max_prefill_tokens=self._max_prefill_tokens,
            max_waiting=self._max_waiting,
            metrics=EngineMetrics(record.name if self._metrics_enabled else None),
            prefix_cache=(
                PrefixCache(self._prefix_cache_bytes) if self._prefix_cache_bytes else None
            ),
        )
        logger.info(
            "loaded %s (%s, %s KV cache) on %s",
            record.name,
            model_path.relative_to(artifact_dir),
            np.dtype(model.kv_dtype).name,
            model.provider,
        )
        grammars = GrammarCompiler(
            artifact_dir / "tokenizer.json", model.vocab_size, tokenizer.eos_token_ids
        )
        grammars.warm()
        return LoadedModel(
            record,
            tokenizer,
            ChatTemplate(record.chat_template, tokenizer.special_tokens),
            engine,
            grammars,
        )

    def _graph_file(self, record: ModelRecord, device: str) -> str:
        """The graph for this replica's weights and KV cache: an int8 cache where the model has
        one (builder graphs for the CPU, exported since it existed), else the float one."""
        float_cache = chat_model_file(record.graph, self._weights, device)
        if self._kv_cache != "int8":
            return float_cache
        try:
            int8_cache = chat_model_file(record.graph, self._weights, device, "int8")
        except ValueError as none:
            logger.info("%s: %s; float", record.name, none)
            return float_cache
        if not (Path(record.artifact_dir) / int8_cache).exists():
            logger.warning(
                "%s: exported before int8 KV caches (import it again); float", record.name
            )
            return float_cache
        return int8_cache

    def close(self) -> None:
        for model in self._models.loaded.values():
            model.engine.close()
