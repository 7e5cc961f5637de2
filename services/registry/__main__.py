"""Registry service and CLI: `python -m services.registry [serve]` runs the gRPC service
(importing the defaults first); the other commands (`--help` lists them) work on the local
database and cache named by the REGISTRY_* settings.
"""

from __future__ import annotations

import asyncio
import logging

from llmserve.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.errors import ServiceError
from services.common.logs import setup_logging
from services.common.rpc import serve_until_signalled
from services.registry.cli import build_parser, progress_bar, run
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
    args = build_parser().parse_args()
    settings = RegistrySettings()
    setup_logging(settings.log_level, "registry")
    store = RegistryStore(settings.database)
    importer = ModelImporter(settings.cache_dir)
    try:
        if args.command in (None, "serve"):
            if settings.bootstrap_defaults:
                with progress_bar("default model") as progress:
                    dev_key_path = settings.dev_key_path if settings.issue_dev_key else None
                    ensure_defaults(store, importer, progress, dev_key_path)
            asyncio.run(serve(settings, store, importer))
        else:
            run(args, store, importer)
    except ServiceError as error:
        raise SystemExit(f"error: {error.message}") from None
    finally:
        store.close()


if __name__ == "__main__":
    main()
