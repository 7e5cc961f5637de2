"""`llmserve models import|list|rm` through the registry's gRPC API (ImportModel streams its
progress, shown as a bar on stderr)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from llmserve.registry.v1 import registry_pb2
from services.cli.config import Defaults
from services.cli.errors import REFUSED, UNREACHABLE, CliError
from services.cli.options import SharedOptions, add_command, subcommands
from services.cli.output import format_time, positive_int, print_json, print_table
from services.common.errors import DeadlineExceeded, ServiceError, Unavailable
from services.common.progress import progress_bar
from services.common.records import ModelKind, ModelRecord
from services.common.registry_client import RegistryClient

T = TypeVar("T")
# An export takes minutes (about one for the default 135M model here).
IMPORT_TIMEOUT_S = 3600.0


def with_registry(address: str, work: Callable[[RegistryClient], Awaitable[T]]) -> T:
    """Runs `work` with a client of the registry, its failures as CliError."""

    async def run() -> T:
        registry = RegistryClient(address)
        try:
            return await work(registry)
        finally:
            await registry.close()

    try:
        return asyncio.run(run())
    except (Unavailable, DeadlineExceeded):
        raise CliError(f"cannot connect to the registry at {address}", UNREACHABLE) from None
    except ServiceError as error:
        raise CliError(error.message, REFUSED) from None


def model_json(model: ModelRecord) -> dict:
    return {
        "name": model.name,
        "kind": model.kind.name.lower(),
        "source": model.source,
        "source_format": model.source_format.name.lower(),
        "source_sha256": model.source_sha256,
        "artifact_dir": model.artifact_dir,
        "graph": model.graph.name.lower(),
        "context_length": model.context_length,
        "default_sampling": model.default_sampling.to_dict(),
        "chat_template": model.chat_template,
        "created_at": model.created_at_unix_ms // 1000,
    }


def list_models(args: argparse.Namespace, defaults: Defaults) -> None:
    models = with_registry(args.registry, lambda registry: registry.list_models())
    if args.json:
        print_json([model_json(m) for m in models])
        return
    print_table(
        ["NAME", "KIND", "CONTEXT", "GRAPH", "CREATED", "ARTIFACTS"],
        [
            [
                m.name,
                m.kind.name.lower(),
                m.context_length,
                m.graph.name.lower(),
                format_time(m.created_at_unix_ms / 1000),
                m.artifact_dir,
            ]
            for m in models
        ],
    )


def import_model(args: argparse.Namespace, defaults: Defaults) -> None:
    async def work(registry: RegistryClient) -> ModelRecord:
        with progress_bar(args.name) as update:
            request = registry_pb2.ImportModelRequest(
                name=args.name,
                kind=int(ModelKind[args.kind.upper()]),
                # The registry resolves paths from its own working directory.
                source=str(args.source.resolve()),
                context_length=args.context_length,
                chat_template=args.chat_template or "",
            )
            async for event in registry.import_model(request, IMPORT_TIMEOUT_S):
                update(event.stage, event.fraction)
                if event.model is not None:
                    return event.model
        raise CliError("the registry ended the import without a model", REFUSED)

    model = with_registry(args.registry, work)
    if args.json:
        print_json(model_json(model))
    else:
        print(f"imported {model.name} ({model.graph.name.lower()} graph) -> {model.artifact_dir}")


def remove_model(args: argparse.Namespace, defaults: Defaults) -> None:
    with_registry(args.registry, lambda registry: registry.delete_model(args.name))
    print(f"removed {args.name} (its export stays cached for a later import)")


def _file_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {error.strerror}") from None


def register(commands: argparse._SubParsersAction, shared: SharedOptions) -> None:
    models = subcommands(add_command(commands, "models", "manage models (registry gRPC API)"))
    with_output = [shared.registry, shared.output]
    add_command(models, "list", "list models", list_models, with_output)
    imported = add_command(
        models,
        "import",
        "import a .gguf file or checkpoint directory (exported to ONNX, with progress)",
        import_model,
        with_output,
    )
    imported.add_argument("name", help="name clients will send as `model`")
    imported.add_argument(
        "source", type=Path, help="a .gguf file or a Hugging Face checkpoint directory"
    )
    imported.add_argument(
        "--kind", choices=[k.name.lower() for k in ModelKind], default="chat", help="(chat)"
    )
    imported.add_argument(
        "--context-length",
        type=positive_int,
        default=0,
        help="override the source's context length",
    )
    imported.add_argument(
        "--chat-template",
        type=_file_text,
        metavar="FILE",
        help="Jinja chat template replacing the source's own (a base model has none)",
    )
    remove = add_command(models, "rm", "forget a model", remove_model, [shared.registry])
    remove.add_argument("name")
