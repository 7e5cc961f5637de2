"""Imports models: hash the source, export it once into a content-addressed cache, read metadata.

Blocking (hashing, a child export process); call from a worker thread on an event loop, and
cancel from another thread through an ImportCancellation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

from services.common.domain import SamplingParams
from services.common.errors import Cancelled, Internal, InvalidArgument
from services.common.records import GraphKind, ModelKind, ModelRecord, SourceFormat
from services.registry.exporter import EXPORT_RECIPE, PROGRESS_PREFIX, Progress
from services.registry.preflight import plan_chat_export

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
# A cancelled export gets this long to remove its temporary files before it is killed.
EXPORT_STOP_GRACE_S = 10.0
# generation_config.json keys that map onto our sampling defaults.
_GENERATION_KEYS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "n_predict",
}


def infer_format(source: Path) -> SourceFormat:
    if source.is_file() and source.suffix == ".gguf":
        return SourceFormat.GGUF
    if source.is_dir() and (source / "config.json").exists():
        return SourceFormat.HF_DIRECTORY
    raise InvalidArgument(
        f"`{source}` is neither a .gguf file nor a checkpoint directory with config.json.",
        param="source",
    )


def hash_source(source: Path) -> str:
    """SHA-256 over a file's bytes, or over a directory's relative paths and file bytes."""
    digest = hashlib.sha256()
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    for path in files:
        if source.is_dir():
            digest.update(str(path.relative_to(source)).encode())
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def read_metadata(artifact_dir: Path) -> tuple[str, int, SamplingParams]:
    """Chat template, context length and default sampling of an exported model."""
    config = json.loads((artifact_dir / "config.json").read_text())
    tokenizer_config_path = artifact_dir / "tokenizer_config.json"
    tokenizer_config = (
        json.loads(tokenizer_config_path.read_text()) if tokenizer_config_path.exists() else {}
    )
    template_file = artifact_dir / "chat_template.jinja"
    chat_template = (
        template_file.read_text()
        if template_file.exists()
        else tokenizer_config.get("chat_template") or ""
    )
    sentence_config_path = artifact_dir / "sentence_bert_config.json"
    sentence_config = (
        json.loads(sentence_config_path.read_text()) if sentence_config_path.exists() else {}
    )
    # sentence-transformers models were trained up to max_seq_length, often below the positions.
    context_length = int(
        sentence_config.get("max_seq_length")
        or config.get("max_position_embeddings")
        or config.get("n_positions")
        or tokenizer_config.get("model_max_length")
        or 2048
    )
    generation_path = artifact_dir / "generation_config.json"
    generation = json.loads(generation_path.read_text()) if generation_path.exists() else {}
    sampling = SamplingParams.from_dict(
        {
            ours: generation[theirs]
            for theirs, ours in _GENERATION_KEYS.items()
            if theirs in generation
        }
    )
    return chat_template, context_length, sampling


def read_graph(artifact_dir: Path) -> GraphKind:
    """The graph an export wrote, from its manifest."""
    manifest = json.loads((artifact_dir / "manifest.json").read_text())
    return GraphKind[manifest["graph"]]


def check_template_syntax(source: str) -> None:
    """InvalidArgument when a chat template given at import is not valid Jinja."""
    from jinja2 import TemplateSyntaxError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        # The extensions the generation service renders with (services/generation/chat_template).
        ImmutableSandboxedEnvironment(extensions=[loopcontrols]).parse(source)
    except TemplateSyntaxError as error:
        raise InvalidArgument(
            f"The chat template is not valid Jinja: {error}", param="chat_template"
        ) from error


class ImportCancellation:
    """Cancels one import from another thread: its export child, running or not yet started,
    is stopped, and cancel() returns only once no child of this import runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._child: subprocess.Popen | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            child = self._child
        if child is None:
            return
        child.terminate()
        try:
            child.wait(EXPORT_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            logger.warning("export pid %d ignored SIGTERM; killing it", child.pid)
            child.kill()
            child.wait()

    def start_export(self, command: list[str]) -> subprocess.Popen:
        """Starts the export child, unless the import was cancelled first."""
        with self._lock:
            if self._cancelled:
                raise Cancelled("The import was cancelled.")
            self._child = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
            )
            return self._child


class ModelImporter:
    def __init__(self, cache_dir: Path):
        self.models_dir = cache_dir / "models"

    def artifact_dir_for(self, source_sha256: str, kind: ModelKind) -> Path:
        key = hashlib.sha256(f"{EXPORT_RECIPE}:{kind.name}:{source_sha256}".encode()).hexdigest()
        return self.models_dir / key[:32]

    def import_model(
        self,
        name: str,
        kind: ModelKind,
        source: Path,
        progress: Progress,
        source_format: SourceFormat | None = None,
        context_length: int = 0,
        default_sampling: SamplingParams | None = None,
        cancellation: ImportCancellation | None = None,
        chat_template: str = "",
    ) -> ModelRecord:
        """`chat_template` (Jinja) replaces the source's own; a chat model without either serves
        completions only."""
        source = source.expanduser().resolve()
        if not source.exists():
            raise InvalidArgument(f"Source `{source}` does not exist.", param="source")
        source_format = source_format or infer_format(source)
        if kind is ModelKind.EMBEDDING and source_format is SourceFormat.GGUF:
            raise InvalidArgument("Embedding models import from checkpoint directories only.")
        # A chat source's architecture decides its graph, before anything is hashed or exported.
        plan = plan_chat_export(source, source_format) if kind is ModelKind.CHAT else None
        graph = plan.graph if plan else GraphKind.OPTIMUM
        progress("hashing source", 0.0)
        source_sha256 = hash_source(source)
        if plan:
            progress(plan.describe(), 0.0)
        artifact_dir = self.artifact_dir_for(source_sha256, kind)
        if (artifact_dir / "manifest.json").exists():
            logger.info("reusing cached export %s", artifact_dir)
        else:
            self._export(
                source,
                source_format,
                kind,
                graph,
                artifact_dir,
                progress,
                cancellation or ImportCancellation(),
            )
        own_template, native_context, sampling = read_metadata(artifact_dir)
        if chat_template and kind is not ModelKind.CHAT:
            raise InvalidArgument("Only chat models take a chat template.", param="chat_template")
        if chat_template:
            check_template_syntax(chat_template)
        progress("imported", 1.0)
        return ModelRecord(
            name=name,
            kind=kind,
            source=str(source),
            source_format=source_format,
            source_sha256=source_sha256,
            artifact_dir=str(artifact_dir),
            chat_template=chat_template or own_template,
            context_length=context_length or native_context,
            default_sampling=(default_sampling or SamplingParams()).with_defaults(sampling),
            # What the export wrote (the same as `graph` unless the tables changed since).
            graph=read_graph(artifact_dir),
        )

    def _export(
        self,
        source: Path,
        source_format: SourceFormat,
        kind: ModelKind,
        graph: GraphKind,
        artifact_dir: Path,
        progress: Progress,
        cancellation: ImportCancellation,
    ) -> None:
        command = [
            sys.executable,
            "-m",
            "services.registry.exporter",
            str(source),
            source_format.name,
            kind.name,
            graph.name,
            str(artifact_dir),
        ]
        child = cancellation.start_export(command)
        logger.info("exporting %s to %s (pid %d)", source, artifact_dir, child.pid)
        tail: list[str] = []
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith(PROGRESS_PREFIX):
                event = json.loads(line[len(PROGRESS_PREFIX) :])
                progress(event["stage"], event["progress"])
            else:
                tail = (tail + [line.rstrip()])[-20:]
                logger.debug("exporter: %s", line.rstrip())
        if child.wait() != 0:
            if cancellation.cancelled:
                raise Cancelled("The import was cancelled.")
            raise Internal(f"ONNX export of `{source}` failed:\n" + "\n".join(tail))
