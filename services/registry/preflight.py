"""What an import needs, checked from the source's metadata before the minutes-long export:
an architecture one of the exporters takes, which decides the graph it exports to
(services/registry/architectures.py). A chat template (a GGUF's `tokenizer.chat_template`
key, a checkpoint's `chat_template.jinja` or `tokenizer_config.json`) is optional: without
one a model serves completions only."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import InvalidArgument
from services.common.records import GraphKind, SourceFormat
from services.registry.architectures import choose_graph, gguf_checkpoint_architecture

logger = logging.getLogger(__name__)

_GGUF_TEMPLATE_KEY = "tokenizer.chat_template"
_GGUF_ARCHITECTURE_KEY = "general.architecture"
_GGUF_NAME_KEY = "general.name"


@dataclass(frozen=True)
class ChatExportPlan:
    """How a chat source exports: its architecture and the graph that takes it."""

    # Hugging Face architecture (config.json `architectures[0]`), or "" if it names none.
    architecture: str
    model_type: str
    graph: GraphKind

    def describe(self) -> str:
        exporter = {
            GraphKind.GQA: "GroupQueryAttention graphs from onnxruntime-genai's model builder",
            GraphKind.OPTIMUM: "optimum's text-generation-with-past graphs",
        }[self.graph]
        return f"{self.architecture or self.model_type}: {exporter}"


@dataclass(frozen=True)
class _SourceMetadata:
    has_chat_template: bool
    architecture: str
    model_type: str
    # How the source names its architecture, for messages.
    declared: str


def _gguf_metadata(source: Path) -> _SourceMetadata:
    from gguf import GGUFReader

    fields = GGUFReader(source).fields

    def text(key: str) -> str:
        field = fields.get(key)
        return field.contents() if field is not None and field.data else ""

    gguf_architecture = text(_GGUF_ARCHITECTURE_KEY)
    model_type, architecture = gguf_checkpoint_architecture(gguf_architecture, text(_GGUF_NAME_KEY))
    return _SourceMetadata(
        has_chat_template=_GGUF_TEMPLATE_KEY in fields,
        architecture=architecture,
        model_type=model_type,
        declared=f"GGUF architecture `{gguf_architecture}`",
    )


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _checkpoint_metadata(source: Path) -> _SourceMetadata:
    has_template = (source / "chat_template.jinja").exists() or (
        source / "chat_template.json"
    ).exists()
    if not has_template:
        has_template = bool(_read_json(source / "tokenizer_config.json").get("chat_template"))
    config = _read_json(source / "config.json")
    architecture = (config.get("architectures") or [""])[0]
    model_type = config.get("model_type", "")
    return _SourceMetadata(
        has_chat_template=has_template,
        architecture=architecture,
        model_type=model_type,
        declared=f"architecture `{architecture}` (model_type `{model_type}`)",
    )


def plan_chat_export(source: Path, source_format: SourceFormat) -> ChatExportPlan:
    """The graph a chat source exports to; InvalidArgument, before any export, when a chat
    model could not be served from it."""
    if source_format is SourceFormat.GGUF:
        metadata = _gguf_metadata(source)
    else:
        metadata = _checkpoint_metadata(source)
    if not metadata.has_chat_template:
        logger.info("%s has no chat template: it will serve completions only", source)
    graph = choose_graph(metadata.architecture, metadata.model_type)
    if graph is None:
        raise InvalidArgument(
            f"`{source}` has {metadata.declared}, which neither onnxruntime-genai's model "
            "builder nor optimum exports as a text-generation model.",
            param="source",
        )
    return ChatExportPlan(metadata.architecture, metadata.model_type, graph)
