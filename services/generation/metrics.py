"""Prometheus metrics of the generation engines (one label set per model)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)

TIME_TO_FIRST_TOKEN = Histogram(
    "llmserve_generation_time_to_first_token_seconds",
    "From arrival in the engine queue to the first generated token.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
INTER_TOKEN_LATENCY = Histogram(
    "llmserve_generation_inter_token_latency_seconds",
    "Time between consecutive tokens of one sequence.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
QUEUE_TIME = Histogram(
    "llmserve_generation_queue_time_seconds",
    "Time a request waited before its prefill started.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "llmserve_generation_batch_size",
    "Sequences decoded together per decode step.",
    ["model"],
    buckets=_BATCH_BUCKETS,
)
RUNNING = Gauge("llmserve_generation_running_sequences", "Sequences decoding.", ["model"])
WAITING = Gauge("llmserve_generation_waiting_sequences", "Sequences waiting.", ["model"])
PROMPT_TOKENS = Counter("llmserve_generation_prompt_tokens", "Prompt tokens prefilled.", ["model"])
GENERATED_TOKENS = Counter("llmserve_generation_generated_tokens", "Tokens generated.", ["model"])
PREFIX_LOOKUPS = Counter(
    "llmserve_generation_prefix_cache_lookups",
    "Prompts looked up in the prefix cache, by result.",
    ["model", "result"],
)
PREFIX_SAVED_TOKENS = Counter(
    "llmserve_generation_prefix_cache_saved_tokens",
    "Prompt tokens whose KV came from the prefix cache instead of a prefill.",
    ["model"],
)
PREFIX_CACHE_BYTES = Gauge(
    "llmserve_generation_prefix_cache_bytes", "KV bytes held by the prefix cache.", ["model"]
)
KV_SLOTS_USED = Gauge(
    "llmserve_generation_kv_slots_used", "KV slots held by a sequence.", ["model"]
)
KV_SLOTS = Gauge("llmserve_generation_kv_slots", "KV slots allocated.", ["model"])
KV_TOKENS = Gauge(
    "llmserve_generation_kv_tokens", "Tokens whose keys and values the slots hold.", ["model"]
)
FINISHED = Counter(
    "llmserve_generation_finished_sequences", "Sequences finished, by reason.", ["model", "reason"]
)


class EngineMetrics:
    """What an engine reports; a disabled instance records nothing (tests, benchmarks)."""

    def __init__(self, model: str | None):
        self._model = model

    @classmethod
    def disabled(cls) -> EngineMetrics:
        return cls(None)

    def queue_time(self, seconds: float) -> None:
        if self._model:
            QUEUE_TIME.labels(self._model).observe(seconds)

    def first_token(self, seconds: float) -> None:
        if self._model:
            TIME_TO_FIRST_TOKEN.labels(self._model).observe(seconds)

    def inter_token(self, seconds: float) -> None:
        if self._model:
            INTER_TOKEN_LATENCY.labels(self._model).observe(seconds)

    def batch_size(self, size: int) -> None:
        if self._model:
            BATCH_SIZE.labels(self._model).observe(size)

    def occupancy(self, running: int, waiting: int) -> None:
        if self._model:
            RUNNING.labels(self._model).set(running)
            WAITING.labels(self._model).set(waiting)

    def kv_usage(self, used_slots: int, slots: int, tokens: int) -> None:
        if self._model:
            KV_SLOTS_USED.labels(self._model).set(used_slots)
            KV_SLOTS.labels(self._model).set(slots)
            KV_TOKENS.labels(self._model).set(tokens)

    def prompt_tokens(self, count: int) -> None:
        if self._model:
            PROMPT_TOKENS.labels(self._model).inc(count)

    def generated_token(self) -> None:
        if self._model:
            GENERATED_TOKENS.labels(self._model).inc()

    def prefix_lookup(self, reused_tokens: int) -> None:
        if self._model:
            PREFIX_LOOKUPS.labels(self._model, "hit" if reused_tokens else "miss").inc()
            PREFIX_SAVED_TOKENS.labels(self._model).inc(reused_tokens)

    def prefix_cache_bytes(self, nbytes: int) -> None:
        if self._model:
            PREFIX_CACHE_BYTES.labels(self._model).set(nbytes)

    def finished(self, reason: str) -> None:
        if self._model:
            FINISHED.labels(self._model, reason).inc()
