"""Registry service and CLI.

  python -m services.registry [serve]          run the gRPC service (imports defaults first)
  python -m services.registry import NAME SRC  import a .gguf file or checkpoint directory
  python -m services.registry list             list models and servings
  python -m services.registry remove NAME      forget a model

The CLI works on the local database and cache named by the REGISTRY_* settings.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from llmserve.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.logs import setup_logging
from services.common.records import ModelKind
from services.common.rpc import service_name, start_server
from services.registry.defaults import ensure_defaults
from services.registry.exporter import Progress
from services.registry.importer import ModelImporter
from services.registry.servicer import RegistryServicer
from services.registry.settings import RegistrySettings
from services.registry.store import RegistryStore

logger = logging.getLogger("services.registry")


@contextmanager
def progress_bar(title: str) -> Iterator[Progress]:
    with tqdm(total=100, desc=title, unit="%", bar_format="{l_bar}{bar}| {elapsed}") as bar:

        def update(stage: str, fraction: float) -> None:
            bar.set_postfix_str(stage)
            bar.update(round(fraction * 100) - bar.n)

        yield update


async def serve(settings: RegistrySettings, store: RegistryStore) -> None:
    importer = ModelImporter(settings.cache_dir)

    def register(server):
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(
            RegistryServicer(store, importer), server
        )
        return [service_name(registry_pb2, "RegistryService")]

    server = await start_server(f"{settings.host}:{settings.port}", register)
    await server.serve_until_signalled(settings.shutdown_grace_s)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.registry")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the gRPC service")
    add = commands.add_parser("import", help="import a model")
    add.add_argument("name")
    add.add_argument("source", type=Path)
    add.add_argument("--kind", choices=[k.name.lower() for k in ModelKind], default="chat")
    add.add_argument("--context-length", type=int, default=0)
    commands.add_parser("list", help="list models and servings")
    remove = commands.add_parser("remove", help="forget a model")
    remove.add_argument("name")
    args = parser.parse_args()

    settings = RegistrySettings()
    setup_logging(settings.log_level, "registry")
    store = RegistryStore(settings.db_path)
    importer = ModelImporter(settings.cache_dir)
    try:
        if args.command in (None, "serve"):
            if settings.bootstrap_defaults:
                with progress_bar("default model") as progress:
                    ensure_defaults(store, importer, progress)
            asyncio.run(serve(settings, store))
        elif args.command == "import":
            with progress_bar(args.name) as progress:
                record = importer.import_model(
                    args.name,
                    ModelKind[args.kind.upper()],
                    args.source,
                    progress,
                    context_length=args.context_length,
                )
            store.add_model(record)
            print(f"imported {record.name} -> {record.artifact_dir}")
        elif args.command == "list":
            for model in store.list_models():
                print(
                    f"model   {model.name:32} {model.kind.name.lower():9} "
                    f"ctx={model.context_length:<6} {model.artifact_dir}"
                )
            for serving in store.list_servings():
                print(f"serving {serving.id:<32} model={serving.model}")
        elif args.command == "remove":
            store.delete_model(args.name)
            print(f"removed {args.name}")
    finally:
        store.close()


if __name__ == "__main__":
    main()
