from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class EdgeSettings(BaseSettings):
    """Read once in edge.__main__ and passed to build_app."""

    model_config = SettingsConfigDict(env_prefix="EDGE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "INFO"
    registry_addr: str = "127.0.0.1:50051"
    generation_addr: str = "127.0.0.1:50052"
    embedding_addr: str = "127.0.0.1:50053"
    retrieval_addr: str = "127.0.0.1:50054"
    # How long the model list from the registry is reused before asking again.
    model_cache_ttl_s: float = 5.0
    # Upper bound on retrieving context for one grounded chat request.
    rag_timeout_s: float = 30.0
    # Upper bound on one chat completion, streaming included.
    request_timeout_s: float = 600.0
