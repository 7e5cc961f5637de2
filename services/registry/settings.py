from __future__ import annotations

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from services.common.settings import DEFAULT_CACHE_DIR, DEFAULT_DATA_DIR, ServiceSettings


class RegistrySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="REGISTRY_", extra="ignore")

    port: int = 50051
    # SQLite database of models, servings, keys and usage.
    db_path: Path = DEFAULT_DATA_DIR / "registry.db"
    # Exported ONNX models, keyed by source hash; shared by every service on this machine.
    cache_dir: Path = DEFAULT_CACHE_DIR
    # On start, import the bundled default chat model and create a serving for it if missing.
    bootstrap_defaults: bool = True
    # Where bootstrap keeps a development API key for the default serving (mode 0600).
    dev_key_path: Path = DEFAULT_DATA_DIR / "dev-api-key"
