"""What an import needs, checked from the source's metadata before the minutes-long export.
A chat template (a GGUF's `tokenizer.chat_template` key, a checkpoint's `chat_template.jinja`
or `tokenizer_config.json`) is optional: without one a model serves completions only."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from services.common.records import SourceFormat

logger = logging.getLogger(__name__)

_GGUF_TEMPLATE_KEY = "tokenizer.chat_template"


def _gguf_has_chat_template(source: Path) -> bool:
    from gguf import GGUFReader

    return _GGUF_TEMPLATE_KEY in GGUFReader(source).fields


def _checkpoint_has_chat_template(source: Path) -> bool:
    if (source / "chat_template.jinja").exists() or (source / "chat_template.json").exists():
        return True
    config = source / "tokenizer_config.json"
    return config.exists() and bool(json.loads(config.read_text()).get("chat_template"))


def check_chat_source(source: Path, source_format: SourceFormat) -> None:
    """InvalidArgument, before any export, when a chat model could not be served from it."""
    if source_format is SourceFormat.GGUF:
        found = _gguf_has_chat_template(source)
    else:
        found = _checkpoint_has_chat_template(source)
    if not found:
        logger.info("%s has no chat template: it will serve completions only", source)
