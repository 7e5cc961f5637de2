"""Async client of the registry service, shared by the services and the edge."""

from __future__ import annotations

from collections.abc import AsyncIterator

from llmserve.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.client import ServiceClient
from services.common.records import (
    ApiKeyRecord,
    ImportProgress,
    ModelKind,
    ModelRecord,
    ServingRecord,
    UsageQuery,
    UsageRecord,
    UsageSummary,
)


class RegistryClient(ServiceClient):
    def __init__(self, address: str, timeout_s: float = 10.0):
        super().__init__(address, registry_pb2_grpc.RegistryServiceStub, timeout_s)

    async def get_model(self, name: str) -> ModelRecord:
        response = await self._unary(self._stub.GetModel, registry_pb2.GetModelRequest(name=name))
        return ModelRecord.from_pb(response.model)

    async def list_models(self, kind: ModelKind | None = None) -> list[ModelRecord]:
        request = registry_pb2.ListModelsRequest(kind=int(kind) if kind else 0)
        response = await self._unary(self._stub.ListModels, request)
        return [ModelRecord.from_pb(m) for m in response.models]

    async def import_model(
        self, request: registry_pb2.ImportModelRequest, timeout_s: float
    ) -> AsyncIterator[ImportProgress]:
        """Progress of an export (minutes); closing the iterator early cancels the import."""
        async for response in self._stream(self._stub.ImportModel, request, timeout_s):
            yield ImportProgress.from_pb(response)

    async def delete_model(self, name: str) -> None:
        await self._unary(self._stub.DeleteModel, registry_pb2.DeleteModelRequest(name=name))

    async def list_servings(self) -> list[ServingRecord]:
        response = await self._unary(self._stub.ListServings, registry_pb2.ListServingsRequest())
        return [ServingRecord.from_pb(s) for s in response.servings]

    async def get_serving(self, serving_id: int) -> ServingRecord:
        response = await self._unary(
            self._stub.GetServing, registry_pb2.GetServingRequest(id=serving_id)
        )
        return ServingRecord.from_pb(response.serving)

    async def create_serving(self, serving: ServingRecord) -> ServingRecord:
        pb = serving.to_pb()
        request = registry_pb2.CreateServingRequest(
            name=pb.name,
            model=pb.model,
            system_prompt=pb.system_prompt,
            default_sampling=pb.default_sampling,
            rag_collection=pb.rag_collection,
            moderation=pb.moderation,
            limits=pb.limits,
        )
        response = await self._unary(self._stub.CreateServing, request)
        return ServingRecord.from_pb(response.serving)

    async def update_serving(self, serving: ServingRecord) -> ServingRecord:
        request = registry_pb2.UpdateServingRequest(serving=serving.to_pb())
        response = await self._unary(self._stub.UpdateServing, request)
        return ServingRecord.from_pb(response.serving)

    async def delete_serving(self, serving_id: int) -> None:
        await self._unary(
            self._stub.DeleteServing, registry_pb2.DeleteServingRequest(id=serving_id)
        )

    async def create_key(
        self, serving_id: int, name: str, expires_at_unix_ms: int
    ) -> tuple[ApiKeyRecord, str]:
        request = registry_pb2.CreateApiKeyRequest(
            serving_id=serving_id, name=name, expires_at_unix_ms=expires_at_unix_ms
        )
        response = await self._unary(self._stub.CreateApiKey, request)
        return ApiKeyRecord.from_pb(response.key), response.secret

    async def list_keys(self, serving_id: int) -> list[ApiKeyRecord]:
        request = registry_pb2.ListApiKeysRequest(serving_id=serving_id)
        response = await self._unary(self._stub.ListApiKeys, request)
        return [ApiKeyRecord.from_pb(k) for k in response.keys]

    async def revoke_key(self, key_id: str) -> None:
        await self._unary(self._stub.RevokeApiKey, registry_pb2.RevokeApiKeyRequest(id=key_id))

    async def verify_key(self, secret: str) -> ApiKeyRecord:
        response = await self._unary(
            self._stub.VerifyApiKey, registry_pb2.VerifyApiKeyRequest(secret=secret)
        )
        return ApiKeyRecord.from_pb(response.key)

    async def record_usage(self, records: list[UsageRecord]) -> None:
        request = registry_pb2.RecordUsageRequest(records=[r.to_pb() for r in records])
        await self._unary(self._stub.RecordUsage, request)

    async def query_usage(self, query: UsageQuery) -> UsageSummary:
        response = await self._unary(self._stub.QueryUsage, query.to_pb())
        return UsageSummary.from_pb(response)
