"""The HTTP edge: python -m edge (settings from EDGE_* variables)."""

from __future__ import annotations

import logging

import uvicorn

from edge.app import build_app
from edge.settings import EdgeSettings
from services.common.logs import setup_logging
from services.common.tracing import TracingSettings, setup_tracing


def main() -> None:
    settings = EdgeSettings()
    setup_logging(settings.log_level, "edge")
    setup_tracing(TracingSettings(), "edge")
    # Envoy and the orchestrators poll /health every few seconds; keep them out of the log.
    logging.getLogger("uvicorn.access").addFilter(
        lambda record: "/health " not in record.getMessage()
    )
    uvicorn.run(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
