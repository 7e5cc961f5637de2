from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.launcher.envoy import ENVOY_CONFIG


class LauncherSettings(BaseSettings):
    """How many replicas of each service `make run` starts, and the Envoy in front of them.

    No prefix: the variables are GENERATION_REPLICAS, EDGE_REPLICAS, ENVOY_ENABLED, ...
    """

    model_config = SettingsConfigDict(extra="ignore")

    generation_replicas: int = Field(1, ge=1)
    edge_replicas: int = Field(1, ge=1)
    # Registry replicas share one database: give them REGISTRY_DATABASE_URL (PostgreSQL).
    registry_replicas: int = Field(1, ge=1)
    # Envoy is started whenever a service has more than one replica; this forces it for one.
    envoy_enabled: bool = False
    # Envoy's gRPC listener for internal callers; its HTTP listener takes EDGE_PORT.
    envoy_grpc_port: int = 50050
    # Admin interface, always on 127.0.0.1.
    envoy_admin_port: int = 9901
    envoy_config: Path = ENVOY_CONFIG
    # Path of the envoy binary; empty finds the one `make setup` installs.
    envoy_binary: str = ""
    envoy_log_level: str = "warning"

    @property
    def behind_envoy(self) -> bool:
        return (
            self.envoy_enabled
            or max(self.generation_replicas, self.edge_replicas, self.registry_replicas) > 1
        )
