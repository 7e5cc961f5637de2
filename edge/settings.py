from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.settings import DEFAULT_DATA_DIR


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
    # How long models and servings from the registry are reused before asking again.
    catalog_ttl_s: float = 5.0
    # Upper bound on retrieving context for one grounded chat request.
    rag_timeout_s: float = 30.0
    # Upper bound on one chat completion, streaming included.
    request_timeout_s: float = 600.0
    # Every API route needs a valid key unless this is explicitly switched off.
    auth_enabled: bool = True
    # How long a verified key is trusted before asking the registry again (revocation delay).
    key_cache_ttl_s: float = 5.0
    # Serve /metrics without an API key (for a scraper inside a trusted network).
    metrics_public: bool = False
    # Bearer token of the /admin API; the admin API is off without one.
    admin_token: SecretStr | None = None
    # Larger request bodies are refused with 413.
    max_body_bytes: int = 8 * 1024 * 1024
    # The same for document uploads (/v1/files, /v1/create/rag): the retrieval service's
    # 32 MiB file limit plus room for the multipart framing.
    max_upload_bytes: int = 33 * 1024 * 1024
    # Terms used by servings whose moderation is on but lists no terms (comma separated).
    moderation_default_terms: str = ""
    # Usage records are sent to the registry in batches this often, or when this many wait.
    usage_flush_interval_s: float = 0.2
    usage_batch_size: int = 256
    # The generation replicas' Prometheus endpoints (comma separated, e.g.
    # http://127.0.0.1:9101/metrics with GENERATION_METRICS_PORT=9101), for the console's
    # engine metrics; empty shows none.
    generation_metrics_urls: str = ""
    # The edge's own files (its usage outbox).
    data_dir: Path = DEFAULT_DATA_DIR / "edge"
    # SQLite outbox of usage records not yet acknowledged by the registry; empty means
    # data_dir/usage-outbox-<port>.db, so edges on one machine never share one by accident.
    usage_outbox_path: Path | None = None
    # Rate limits shared by every edge through this Redis (redis://host:port/db); empty counts
    # them in this process.
    redis_url: str = ""
    # A concurrency permit of an edge that died stops counting this long after its last refresh.
    redis_permit_ttl_s: float = Field(15.0, gt=0)
    # A Redis call slower than this counts as Redis being down.
    redis_timeout_s: float = Field(0.5, gt=0)
    # After Redis failed, limits are counted in this process for this long before trying again.
    redis_retry_s: float = Field(5.0, ge=0)

    @property
    def outbox_path(self) -> Path:
        return self.usage_outbox_path or self.data_dir / f"usage-outbox-{self.port}.db"
