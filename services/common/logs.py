"""One logging setup for every process, with the request id on every line."""

from __future__ import annotations

import contextvars
import logging

# The id of the request being served; set from gRPC metadata or by the edge.
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

REQUEST_ID_METADATA_KEY = "x-request-id"


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def setup_logging(level: str = "INFO", service: str = "") -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    prefix = f"{service} " if service else ""
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s %(levelname)s {prefix}[%(request_id)s] %(name)s: %(message)s"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
