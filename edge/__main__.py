"""The HTTP edge: python -m edge (settings from EDGE_* variables)."""

from __future__ import annotations

import uvicorn

from edge.app import build_app
from edge.settings import EdgeSettings
from services.common.logs import setup_logging


def main() -> None:
    settings = EdgeSettings()
    setup_logging(settings.log_level, "edge")
    uvicorn.run(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
