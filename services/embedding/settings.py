from __future__ import annotations

from typing import Literal

from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class EmbeddingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EMBEDDING_", extra="ignore")

    port: int = 50053
    registry_addr: str = "127.0.0.1:50051"
    # `cuda` uses ONNX Runtime's CUDA execution provider when installed, else falls back to CPU.
    device: Literal["cpu", "cuda"] = "cpu"
    # ONNX Runtime intra-op threads per forward pass; 0 lets ONNX Runtime use every core.
    intra_op_threads: int = 1
    # Forward passes run side by side; 0 means one per core. On a GPU, 1 is the better choice.
    workers: int = 0
    # Inputs embedded together in one forward pass, from one request or several.
    max_batch_size: int = 32
    # Padded tokens of one forward pass (bounds activation memory for long inputs).
    max_batch_tokens: int = 16384
    # How long a forward pass waits for more requests to join while its batch is not full.
    max_wait_ms: float = 2.0
    # Inputs over the model's token limit: `truncate` drops the tail (reported per input),
    # `reject` fails the request as OpenAI does.
    overlong_inputs: Literal["truncate", "reject"] = "reject"
    # Models whose vectors may be shortened with `dimensions` (Matryoshka-trained), comma separated.
    matryoshka_models: str = ""
    # Models loaded at start, comma separated; others load on first request.
    preload_models: str = ""
