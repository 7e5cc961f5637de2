from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.settings import DEFAULT_CACHE_DIR, DEFAULT_DATA_DIR, ServiceSettings


class RegistrySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="REGISTRY_", extra="ignore")

    port: int = 50051
    # SQLite database of models, servings, keys and usage, unless database_url is set.
    db_path: Path = DEFAULT_DATA_DIR / "registry.db"
    # postgresql://user:password@host:port/db puts them on PostgreSQL instead, which several
    # registry replicas can share (a secret: it may carry the password).
    database_url: SecretStr = SecretStr("")
    # Exported ONNX models, keyed by source hash; shared by every service on this machine.
    cache_dir: Path = DEFAULT_CACHE_DIR
    # On start, import the bundled default chat model and create a serving for it if missing.
    bootstrap_defaults: bool = True
    # Where bootstrap keeps a development API key for the default serving (mode 0600).
    dev_key_path: Path = DEFAULT_DATA_DIR / "dev-api-key"
    # Deployments turn it off: replicas that come and go would each leave one more key behind
    # (keys are issued through the admin API there).
    issue_dev_key: bool = True

    @property
    def database(self) -> Path | str:
        """What RegistryStore opens: the database URL when set, else the SQLite file."""
        return self.database_url.get_secret_value() or self.db_path
