"""Where the command line connects and which credentials it presents.

Defaults follow the stack `llmserve run` starts with the same environment: the edge at
EDGE_HOST:EDGE_PORT, the registry at REGISTRY_HOST:REGISTRY_PORT, the admin token the launcher
keeps beside the development key, and that development key for chat. LLMSERVE_URL and
LLMSERVE_REGISTRY point it elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from edge.settings import EdgeSettings
from services.cli.errors import USAGE, CliError
from services.common.local import admin_token_path
from services.registry.settings import RegistrySettings

# A server listening on every interface is reached on loopback.
_ANY_HOST = {"", "0.0.0.0", "::"}


class CliSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMSERVE_", extra="ignore")

    # Base URL of the edge (Envoy's front when there is one).
    url: str = ""
    # host:port of the registry's gRPC API.
    registry: str = ""
    # The key OpenAI's clients read too.
    openai_api_key: SecretStr | None = Field(None, validation_alias="OPENAI_API_KEY")


def _reachable(host: str) -> str:
    return "127.0.0.1" if host in _ANY_HOST else host


@dataclass(frozen=True)
class Defaults:
    url: str
    registry: str
    admin_token: str | None
    admin_token_path: Path
    api_key: str | None
    dev_key_path: Path

    @classmethod
    def from_environment(cls) -> Defaults:
        cli, edge, registry = CliSettings(), EdgeSettings(), RegistrySettings()
        return cls(
            url=cli.url or f"http://{_reachable(edge.host)}:{edge.port}",
            registry=cli.registry or f"{_reachable(registry.host)}:{registry.port}",
            admin_token=edge.admin_token.get_secret_value() if edge.admin_token else None,
            admin_token_path=admin_token_path(registry.dev_key_path),
            api_key=cli.openai_api_key.get_secret_value() if cli.openai_api_key else None,
            dev_key_path=registry.dev_key_path,
        )

    def admin_token_of(self, given: str | None) -> str:
        return (
            given
            or self.admin_token
            or _read_secret(
                self.admin_token_path, "admin token", "--admin-token or EDGE_ADMIN_TOKEN"
            )
        )

    def api_key_of(self, given: str | None) -> str:
        return (
            given
            or self.api_key
            or _read_secret(self.dev_key_path, "API key", "--api-key or OPENAI_API_KEY")
        )


def _read_secret(path: Path, what: str, alternatives: str) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        raise CliError(
            f"no {what}: pass {alternatives}, or start the stack with `llmserve run` "
            f"(it writes {path})",
            USAGE,
        ) from None
