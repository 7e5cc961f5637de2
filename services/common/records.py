"""Registry records (models, servings) as every service sees them, with proto converters."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field

from llmserve.common.v1 import common_pb2
from llmserve.registry.v1 import registry_pb2
from services.common.domain import SamplingParams

# Weight variants of an exported chat model; chat_model_file() says where each one lives.
CHAT_WEIGHTS = ("fp32", "int4")
# KV caches a chat model's graph may keep: "float" (its activations' type) or "int8" (builder
# graphs for the CPU: services/registry/kv_calibration.py).
KV_CACHES = ("float", "int8")
# A CPU builder graph with an int8 KV cache, beside the float one and sharing its weights,
# and the graph that prefills that cache (services/registry/graph.py: int8_kv_prefill).
INT8_KV_GRAPH = "model.kv-int8.onnx"
INT8_KV_PREFILL_GRAPH = "model.kv-int8-prefill.onnx"
# Its outputs: a chunk's int8 entries per past input, `<INT8_KV_ENTRIES>.<layer>.<key|value>`.
INT8_KV_ENTRIES = "entries"


class ModelKind(enum.IntEnum):
    CHAT = registry_pb2.MODEL_KIND_CHAT
    EMBEDDING = registry_pb2.MODEL_KIND_EMBEDDING


class SourceFormat(enum.IntEnum):
    GGUF = registry_pb2.SOURCE_FORMAT_GGUF
    HF_DIRECTORY = registry_pb2.SOURCE_FORMAT_HF_DIRECTORY


class GraphKind(enum.IntEnum):
    """The decoder graph a chat model was exported to (registry.proto's GraphKind)."""

    # optimum's text-generation-with-past graph, logits of the last position only.
    OPTIMUM = registry_pb2.GRAPH_KIND_OPTIMUM
    # onnxruntime-genai's model builder: GroupQueryAttention, logits of every position.
    GQA = registry_pb2.GRAPH_KIND_GQA


_CHAT_MODEL_FILES = {
    GraphKind.OPTIMUM: {"fp32": "model.onnx", "int4": "model.int4.onnx"},
    GraphKind.GQA: {
        "fp32": "gqa-fp32/model.onnx",
        "int4": "gqa-int4/model.onnx",
        # Made for CUDA: fp16 activations, KV and logits (CUDA's GroupQueryAttention takes
        # no fp32). ONNX Runtime's CPU provider runs it too, which is how it is tested here.
        "int4-cuda": "gqa-int4-cuda/model.onnx",
    },
}


def chat_model_file(
    graph: GraphKind, weights: str, device: str = "cpu", kv_cache: str = "float"
) -> str:
    """Path of a chat model's graph with `weights` ("fp32" or "int4") for `device` ("cpu" or
    "cuda") and a `kv_cache` of KV_CACHES, relative to its artifact directory. On CUDA,
    builder graphs have int4 weights only; optimum's run their CPU graphs. Only builder graphs
    for the CPU have an int8 KV cache."""
    if device == "cuda" and graph is GraphKind.GQA:
        if weights != "int4":
            raise ValueError("on CUDA, builder graphs run int4 weights (with fp16 activations)")
        weights = "int4-cuda"
    path = _CHAT_MODEL_FILES[graph][weights]
    if kv_cache == "int8":
        if graph is not GraphKind.GQA or device != "cpu":
            raise ValueError("only builder graphs for the CPU have an int8 KV cache")
        return path.replace("model.onnx", INT8_KV_GRAPH)
    return path


@dataclass(frozen=True)
class ModelRecord:
    name: str
    kind: ModelKind
    source: str
    source_format: SourceFormat
    source_sha256: str
    artifact_dir: str
    chat_template: str
    context_length: int
    default_sampling: SamplingParams = field(default_factory=SamplingParams)
    created_at_unix_ms: int = 0
    graph: GraphKind = GraphKind.OPTIMUM

    @classmethod
    def from_pb(cls, pb: registry_pb2.Model) -> ModelRecord:
        return cls(
            name=pb.name,
            kind=ModelKind(pb.kind),
            source=pb.source,
            source_format=SourceFormat(pb.source_format),
            source_sha256=pb.source_sha256,
            artifact_dir=pb.artifact_dir,
            chat_template=pb.chat_template,
            context_length=pb.context_length,
            default_sampling=SamplingParams.from_pb(pb.default_sampling),
            created_at_unix_ms=pb.created_at_unix_ms,
            # UNSPECIFIED: a registry from before graph kinds, whose exports were all optimum's.
            graph=GraphKind(pb.graph or GraphKind.OPTIMUM),
        )

    def to_pb(self) -> registry_pb2.Model:
        return registry_pb2.Model(
            name=self.name,
            kind=int(self.kind),
            source=self.source,
            source_format=int(self.source_format),
            source_sha256=self.source_sha256,
            artifact_dir=self.artifact_dir,
            chat_template=self.chat_template,
            context_length=self.context_length,
            default_sampling=self.default_sampling.to_pb(),
            created_at_unix_ms=self.created_at_unix_ms,
            graph=int(self.graph),
        )


@dataclass(frozen=True)
class ImportProgress:
    """One event of an import: its stage and overall fraction, and the model once recorded."""

    stage: str
    fraction: float
    model: ModelRecord | None = None

    @classmethod
    def from_pb(cls, pb: registry_pb2.ImportModelResponse) -> ImportProgress:
        model = ModelRecord.from_pb(pb.model) if pb.HasField("model") else None
        return cls(stage=pb.stage, fraction=pb.progress, model=model)


class ModerationAction(enum.IntEnum):
    CUT = registry_pb2.MODERATION_ACTION_CUT
    WITHHOLD = registry_pb2.MODERATION_ACTION_WITHHOLD


@dataclass(frozen=True)
class ModerationPolicy:
    enabled: bool = False
    blocked_terms: tuple[str, ...] = ()
    action: ModerationAction = ModerationAction.CUT

    @classmethod
    def from_pb(cls, pb: registry_pb2.ModerationPolicy) -> ModerationPolicy:
        return cls(
            enabled=pb.enabled,
            blocked_terms=tuple(pb.blocked_terms),
            action=ModerationAction(pb.action or ModerationAction.CUT),
        )

    def to_pb(self) -> registry_pb2.ModerationPolicy:
        return registry_pb2.ModerationPolicy(
            enabled=self.enabled, blocked_terms=list(self.blocked_terms), action=int(self.action)
        )

    def to_dict(self) -> dict:
        return {
            "enabled": self.enabled,
            "blocked_terms": list(self.blocked_terms),
            "action": self.action.name.lower(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> ModerationPolicy:
        return cls(
            enabled=bool(data.get("enabled", False)),
            blocked_terms=tuple(data.get("blocked_terms") or ()),
            action=ModerationAction[str(data.get("action", "cut")).upper()],
        )


@dataclass(frozen=True)
class Limits:
    """0 means unlimited."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    max_concurrent_requests: int = 0
    key_requests_per_minute: int = 0
    key_tokens_per_minute: int = 0
    key_max_concurrent_requests: int = 0

    @classmethod
    def from_pb(cls, pb: registry_pb2.Limits) -> Limits:
        return cls(**{f.name: getattr(pb, f.name) for f in dataclasses.fields(cls)})

    def to_pb(self) -> registry_pb2.Limits:
        return registry_pb2.Limits(**dataclasses.asdict(self))


@dataclass(frozen=True)
class ServingRecord:
    id: int
    name: str
    model: str
    system_prompt: str = ""
    default_sampling: SamplingParams = field(default_factory=SamplingParams)
    rag_collection: str = ""
    created_at_unix_ms: int = 0
    moderation: ModerationPolicy = field(default_factory=ModerationPolicy)
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_pb(cls, pb: registry_pb2.Serving) -> ServingRecord:
        return cls(
            id=pb.id,
            name=pb.name,
            model=pb.model,
            system_prompt=pb.system_prompt,
            default_sampling=SamplingParams.from_pb(pb.default_sampling),
            rag_collection=pb.rag_collection,
            created_at_unix_ms=pb.created_at_unix_ms,
            moderation=ModerationPolicy.from_pb(pb.moderation),
            limits=Limits.from_pb(pb.limits),
        )

    def to_pb(self) -> registry_pb2.Serving:
        return registry_pb2.Serving(
            id=self.id,
            name=self.name,
            model=self.model,
            system_prompt=self.system_prompt,
            default_sampling=self.default_sampling.to_pb(),
            rag_collection=self.rag_collection,
            created_at_unix_ms=self.created_at_unix_ms,
            moderation=self.moderation.to_pb(),
            limits=self.limits.to_pb(),
        )


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str
    serving_id: int
    name: str = ""
    created_at_unix_ms: int = 0
    expires_at_unix_ms: int = 0
    revoked_at_unix_ms: int = 0
    # Newest usage record made with the key; 0 if never used (filled by list_keys only).
    last_used_at_unix_ms: int = 0
    # The secret's first characters, to tell keys apart (the rest is never kept).
    secret_prefix: str = ""

    @classmethod
    def from_pb(cls, pb: registry_pb2.ApiKey) -> ApiKeyRecord:
        return cls(**{f.name: getattr(pb, f.name) for f in dataclasses.fields(cls)})

    def to_pb(self) -> registry_pb2.ApiKey:
        return registry_pb2.ApiKey(**dataclasses.asdict(self))

    def usable_at(self, now_ms: int) -> bool:
        expired = self.expires_at_unix_ms and self.expires_at_unix_ms <= now_ms
        return not self.revoked_at_unix_ms and not expired


class UsageStatus(enum.IntEnum):
    OK = registry_pb2.USAGE_STATUS_OK
    CLIENT_ERROR = registry_pb2.USAGE_STATUS_CLIENT_ERROR
    SERVER_ERROR = registry_pb2.USAGE_STATUS_SERVER_ERROR
    CANCELLED = registry_pb2.USAGE_STATUS_CANCELLED


@dataclass(frozen=True)
class UsageRecord:
    request_id: str
    created_at_unix_ms: int
    serving_id: int
    model: str
    api_key_id: str
    user_id: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    ttft_ms: int
    status: UsageStatus
    blocked: bool
    endpoint: str

    @classmethod
    def from_pb(cls, pb: registry_pb2.UsageRecord) -> UsageRecord:
        return cls(
            request_id=pb.request_id,
            created_at_unix_ms=pb.created_at_unix_ms,
            serving_id=pb.serving_id,
            model=pb.model,
            api_key_id=pb.api_key_id,
            user_id=pb.user_id,
            prompt_tokens=pb.usage.prompt_tokens,
            completion_tokens=pb.usage.completion_tokens,
            latency_ms=pb.latency_ms,
            ttft_ms=pb.ttft_ms,
            status=UsageStatus(pb.status or UsageStatus.OK),
            blocked=pb.blocked,
            endpoint=pb.endpoint,
        )

    def to_pb(self) -> registry_pb2.UsageRecord:
        return registry_pb2.UsageRecord(
            request_id=self.request_id,
            created_at_unix_ms=self.created_at_unix_ms,
            serving_id=self.serving_id,
            model=self.model,
            api_key_id=self.api_key_id,
            user_id=self.user_id,
            usage=common_pb2.Usage(
                prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens
            ),
            latency_ms=self.latency_ms,
            ttft_ms=self.ttft_ms,
            status=int(self.status),
            blocked=self.blocked,
            endpoint=self.endpoint,
        )

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["status"] = self.status.name.lower()
        return data


@dataclass(frozen=True)
class UsageQuery:
    """Filters of the usage log, each 0 or empty for any; `limit` caps the records returned."""

    serving_id: int = 0
    api_key_id: str = ""
    user_id: str = ""
    endpoint: str = ""
    since_unix_ms: int = 0
    until_unix_ms: int = 0
    limit: int = 100
    # Only records of this outcome; None for any.
    status: UsageStatus | None = None
    # Width of the time buckets of the summary's `by_time`; 0 for none.
    bucket_ms: int = 0

    @classmethod
    def from_pb(cls, pb: registry_pb2.QueryUsageRequest) -> UsageQuery:
        values = {f.name: getattr(pb, f.name) for f in dataclasses.fields(cls)}
        values["status"] = UsageStatus(pb.status) if pb.status else None
        return cls(**values)

    def to_pb(self) -> registry_pb2.QueryUsageRequest:
        values = dataclasses.asdict(self)
        values["status"] = int(self.status or 0)
        return registry_pb2.QueryUsageRequest(**values)


@dataclass(frozen=True)
class EndpointUsage:
    """Totals of the records a usage query matched on one HTTP route."""

    endpoint: str
    requests: int
    prompt_tokens: int
    completion_tokens: int

    @classmethod
    def from_pb(cls, pb: registry_pb2.EndpointUsage) -> EndpointUsage:
        return cls(**{f.name: getattr(pb, f.name) for f in dataclasses.fields(cls)})

    def to_pb(self) -> registry_pb2.EndpointUsage:
        return registry_pb2.EndpointUsage(**dataclasses.asdict(self))


@dataclass(frozen=True)
class TimeUsage:
    """Totals of the records a usage query matched in one time bucket."""

    start_unix_ms: int
    requests: int
    prompt_tokens: int
    completion_tokens: int

    @classmethod
    def from_pb(cls, pb: registry_pb2.TimeUsage) -> TimeUsage:
        return cls(**{f.name: getattr(pb, f.name) for f in dataclasses.fields(cls)})

    def to_pb(self) -> registry_pb2.TimeUsage:
        return registry_pb2.TimeUsage(**dataclasses.asdict(self))


@dataclass(frozen=True)
class UserUsage:
    """Totals of the records a usage query matched for one end user."""

    user_id: str
    requests: int
    prompt_tokens: int
    completion_tokens: int

    @classmethod
    def from_pb(cls, pb: registry_pb2.UserUsage) -> UserUsage:
        return cls(**{f.name: getattr(pb, f.name) for f in dataclasses.fields(cls)})

    def to_pb(self) -> registry_pb2.UserUsage:
        return registry_pb2.UserUsage(**dataclasses.asdict(self))


@dataclass(frozen=True)
class UsageSummary:
    """The newest matching records (up to the limit) and totals over every match."""

    records: list[UsageRecord]
    total_requests: int
    prompt_tokens: int
    completion_tokens: int
    # Ordered by endpoint; they add up to the totals above.
    by_endpoint: list[EndpointUsage]
    # Non-empty buckets of the query's bucket_ms, oldest first (empty without one).
    by_time: list[TimeUsage] = field(default_factory=list)
    # Most requests first, the top 100 users.
    by_user: list[UserUsage] = field(default_factory=list)

    @classmethod
    def from_pb(cls, pb: registry_pb2.QueryUsageResponse) -> UsageSummary:
        return cls(
            records=[UsageRecord.from_pb(r) for r in pb.records],
            total_requests=pb.total_requests,
            prompt_tokens=pb.total_usage.prompt_tokens,
            completion_tokens=pb.total_usage.completion_tokens,
            by_endpoint=[EndpointUsage.from_pb(e) for e in pb.by_endpoint],
            by_time=[TimeUsage.from_pb(t) for t in pb.by_time],
            by_user=[UserUsage.from_pb(u) for u in pb.by_user],
        )

    def to_pb(self) -> registry_pb2.QueryUsageResponse:
        return registry_pb2.QueryUsageResponse(
            records=[r.to_pb() for r in self.records],
            total_requests=self.total_requests,
            total_usage=common_pb2.Usage(
                prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens
            ),
            by_endpoint=[e.to_pb() for e in self.by_endpoint],
            by_time=[t.to_pb() for t in self.by_time],
            by_user=[u.to_pb() for u in self.by_user],
        )
