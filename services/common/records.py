"""Registry records (models, servings) as every service sees them, with proto converters."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from llmserve.registry.v1 import registry_pb2
from services.common.domain import SamplingParams


class ModelKind(enum.IntEnum):
    CHAT = registry_pb2.MODEL_KIND_CHAT
    EMBEDDING = registry_pb2.MODEL_KIND_EMBEDDING


class SourceFormat(enum.IntEnum):
    GGUF = registry_pb2.SOURCE_FORMAT_GGUF
    HF_DIRECTORY = registry_pb2.SOURCE_FORMAT_HF_DIRECTORY


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
        )


@dataclass(frozen=True)
class ServingRecord:
    id: int
    name: str
    model: str
    system_prompt: str = ""
    default_sampling: SamplingParams = field(default_factory=SamplingParams)
    rag_collection: str = ""
    created_at_unix_ms: int = 0

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
        )
