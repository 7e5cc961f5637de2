"""Async client of the registry service, shared by the services and the edge."""

from __future__ import annotations

import grpc

from llmserve.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.errors import from_rpc_error
from services.common.records import ModelKind, ModelRecord, ServingRecord
from services.common.rpc import insecure_channel


class RegistryClient:
    def __init__(self, address: str):
        self._channel = insecure_channel(address)
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def get_model(self, name: str, timeout_s: float = 10.0) -> ModelRecord:
        try:
            response = await self._stub.GetModel(
                registry_pb2.GetModelRequest(name=name), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error
        return ModelRecord.from_pb(response.model)

    async def list_models(
        self, kind: ModelKind | None = None, timeout_s: float = 10.0
    ) -> list[ModelRecord]:
        try:
            response = await self._stub.ListModels(
                registry_pb2.ListModelsRequest(kind=int(kind) if kind else 0), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error
        return [ModelRecord.from_pb(m) for m in response.models]

    async def list_servings(self, timeout_s: float = 10.0) -> list[ServingRecord]:
        try:
            response = await self._stub.ListServings(
                registry_pb2.ListServingsRequest(), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error
        return [ServingRecord.from_pb(s) for s in response.servings]
