"""Registry service: `python -m services.registry [serve]` imports the default models if
missing, then runs the gRPC service. Operators manage models, servings, keys and usage with
the `llmserve` command line (services/cli), which talks to this service and the edge.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from llmserve.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.errors import ServiceError
from services.common.logs import setup_logging
from services.common.progress import progress_bar
from services.common.rpc import serve_until_signalled
from services.common.tracing import TracingSettings, setup_tracing
from services.registry.defaults import ensure_defaults
from services.registry.importer import ModelImporter
from services.registry.servicer import RegistryServicer
from services.registry.settings import RegistrySettings
from services.registry.store import RegistryStore

logger = logging.getLogger("services.registry")


async def serve(settings: RegistrySettings, store: RegistryStore, importer: ModelImporter):
    await serve_until_signalled(
        settings,
        registry_pb2_grpc.add_RegistryServiceServicer_to_server,
        RegistryServicer(store, importer),
        registry_pb2,
        "RegistryService",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.registry",
        description="Run the registry's gRPC service (configured by REGISTRY_* variables).",
        epilog="Models, servings, keys and usage: the `llmserve` command (llmserve --help).",
    )
    parser.add_argument("command", nargs="?", choices=["serve"], default="serve")
    parser.parse_args()
    settings = RegistrySettings()
    setup_logging(settings.log_level, "registry")
    setup_tracing(TracingSettings(), "registry")
    store = RegistryStore(settings.database)
    importer = ModelImporter(settings.cache_dir)
    try:
        if settings.bootstrap_defaults:
            with progress_bar("default model") as progress:
                dev_key_path = settings.dev_key_path if settings.issue_dev_key else None
                ensure_defaults(store, importer, progress, dev_key_path)
        asyncio.run(serve(settings, store, importer))
    except ServiceError as error:
        raise SystemExit(f"error: {error.message}") from None
    finally:
        store.close()


if __name__ == "__main__":
    main()
