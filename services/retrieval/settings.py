from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.settings import DEFAULT_DATA_DIR, ServiceSettings


class RetrievalSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RETRIEVAL_", extra="ignore")

    port: int = 50054
    embedding_addr: str = "127.0.0.1:50053"
    # Embedding model of new collections (a registry name).
    embedding_model: str = "all-MiniLM-L6-v2"
    # Embedded store and uploaded files live here.
    data_dir: Path = DEFAULT_DATA_DIR / "retrieval"
    # postgresql://... keeps uploaded files in that database instead, where every replica
    # reads them (a secret: it may carry the password).
    database_url: SecretStr = SecretStr("")
    # A Weaviate server (e.g. http://127.0.0.1:8080) replaces the embedded store when set.
    weaviate_url: str = ""
    # Weaviate's gRPC port; 0 means 50051, Weaviate's default.
    weaviate_grpc_port: int = 0
    weaviate_api_key: SecretStr = SecretStr("")
    # Collection used when a request names none.
    default_collection: str = "default"
    # Points returned when a request sets no limit.
    default_limit: int = 5
    # Cosine similarity below which points are dropped when a request sets no threshold.
    default_score_threshold: float = 0.3
    # Chunk sizes of new collections, in tokens of the embedding model.
    chunk_tokens: int = 128
    overlap_tokens: int = 24
    # Largest document accepted for ingestion or upload.
    max_file_bytes: int = 32 * 1024 * 1024
