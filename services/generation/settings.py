from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class GenerationSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GENERATION_", extra="ignore")

    port: int = 50052
    registry_addr: str = "127.0.0.1:50051"
    # `cuda` uses ONNX Runtime's CUDA execution provider when installed, else falls back to CPU.
    device: Literal["cpu", "cuda"] = "cpu"
    # Weight variant of chat models: int4 (MatMulNBits) or fp32; see docs/benchmarks. On
    # CUDA, int4 only: builder graphs then run their CUDA graph (fp16 activations and KV).
    weights: Literal["fp32", "int4"] = "int4"
    # KV cache of builder graphs on the CPU: int8 (per-channel scales calibrated at export)
    # holds a quarter of float's memory and decodes long contexts and big batches faster,
    # prefilling as fast (its own prefill graph attends in float), at 93% next-token agreement
    # with float. `float` keeps the graph's own type: the model's exact answers, 4x the memory.
    # Optimum graphs and CUDA graphs keep a float cache either way. See README (Benchmarks).
    kv_cache: Literal["float", "int8"] = "int8"
    # ONNX Runtime intra-op threads; 0 lets ONNX Runtime use every core.
    intra_op_threads: int = 0
    # Microseconds an idle ONNX Runtime thread spins before it sleeps. A decode step runs ~300
    # operators, and waking a sleeping thread for each one costs more than the small ones
    # take; 1000 keeps the threads awake through a step and gives their cores back between
    # steps (README, Benchmarks, has what it measured). 0 never spins (cores shared with busy
    # neighbours); more for a process with cores of its own.
    spin_us: int = Field(default=1000, ge=0)
    # KV slots per model: the sequences decoded together. Each holds up to kv_context tokens
    # (or the model's context, if shorter); their memory is the bound, known at load:
    # slots x context x (layers x 2 x kv_heads x head_dim x 4 bytes; 2 on CUDA, 1 for int8).
    kv_slots: int = 16
    kv_context: int = 8192
    # Prompt tokens prefilled per step, beside one decode token for each running sequence:
    # smaller keeps streams smooth while a long prompt arrives, larger fills it sooner.
    max_prefill_tokens: int = 512
    # KV of recent prompts kept for reuse by prompts that start the same way (a system prompt,
    # earlier turns), per model, in MiB; 0 turns prefix caching off.
    prefix_cache_mb: int = 512
    # Requests waiting for the batch; past this, Generate answers RESOURCE_EXHAUSTED (429).
    max_waiting: int = 256
    # Prometheus metrics on this HTTP port (/metrics); 0 turns them off.
    metrics_port: int = 0
    # Models loaded at start, comma separated; others load on first request.
    preload_models: str = ""

    @model_validator(mode="after")
    def _cuda_runs_int4(self) -> GenerationSettings:
        if self.device == "cuda" and self.weights != "int4":
            raise ValueError(
                "GENERATION_WEIGHTS=fp32 runs on the CPU only; with GENERATION_DEVICE=cuda, "
                "chat models run int4 weights with fp16 activations"
            )
        return self
