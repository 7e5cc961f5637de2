"""Settings shared by every gRPC service; each service subclasses with its own env prefix."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "llmserve"
DEFAULT_DATA_DIR = Path.home() / ".local" / "share" / "llmserve"


class ServiceSettings(BaseSettings):
    """Read once in a service's __main__ and passed down; never read at import time."""

    model_config = SettingsConfigDict(extra="ignore")

    host: str = "127.0.0.1"
    port: int = 0
    log_level: str = "INFO"
    # Seconds a SIGTERM waits for in-flight RPCs before the server stops.
    shutdown_grace_s: float = 10.0


def split_names(value: str) -> list[str]:
    """A comma-separated setting as a list, blanks dropped."""
    return [name.strip() for name in value.split(",") if name.strip()]
