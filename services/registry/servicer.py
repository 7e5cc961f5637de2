"""Thin gRPC adapter over the registry store and importer."""

from __future__ import annotations

import asyncio
from pathlib import Path

from llmserve.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.domain import SamplingParams
from services.common.errors import InvalidArgument
from services.common.records import (
    Limits,
    ModelKind,
    ModerationPolicy,
    ServingRecord,
    SourceFormat,
    UsageQuery,
    UsageRecord,
)
from services.common.rpc import rpc_method
from services.registry.importer import ImportCancellation, ModelImporter
from services.registry.store import RegistryStore


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, store: RegistryStore, importer: ModelImporter):
        self._store = store
        self._importer = importer
        # One export at a time: each takes gigabytes of memory and both cores.
        self._import_lock = asyncio.Lock()

    @rpc_method
    async def ListModels(self, request, context):
        kind = ModelKind(request.kind) if request.kind else None
        models = await asyncio.to_thread(self._store.list_models, kind)
        return registry_pb2.ListModelsResponse(models=[m.to_pb() for m in models])

    @rpc_method
    async def GetModel(self, request, context):
        model = await asyncio.to_thread(self._store.get_model, request.name)
        return registry_pb2.GetModelResponse(model=model.to_pb())

    @rpc_method
    async def ImportModel(self, request, context):
        if not request.name or not request.source:
            raise InvalidArgument("`name` and `source` are required.")
        if not request.kind:
            raise InvalidArgument("`kind` is required.", param="kind")
        await asyncio.to_thread(self._store.check_model_name_free, request.name)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancellation = ImportCancellation()

        def progress(stage: str, fraction: float) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (stage, fraction))

        def run():
            return self._importer.import_model(
                request.name,
                ModelKind(request.kind),
                Path(request.source),
                progress,
                source_format=SourceFormat(request.source_format)
                if request.source_format
                else None,
                context_length=request.context_length,
                default_sampling=SamplingParams.from_pb(request.default_sampling),
                cancellation=cancellation,
                chat_template=request.chat_template,
            )

        async with self._import_lock:
            task = asyncio.ensure_future(asyncio.to_thread(run))
            # The queue holds the progress events, then None once the import has ended.
            task.add_done_callback(lambda _: events.put_nowait(None))
            try:
                while (event := await events.get()) is not None:
                    stage, fraction = event
                    yield registry_pb2.ImportModelResponse(stage=stage, progress=fraction)
            finally:
                if not task.done():
                    # The call ended first (the client went away): stop the export, and keep
                    # the lock until its child has exited, so no other export runs beside it.
                    await asyncio.to_thread(cancellation.cancel)
                    # Its outcome (Cancelled, as a rule) has no one to go to.
                    await asyncio.gather(task, return_exceptions=True)
            record = await asyncio.to_thread(self._store.add_model, task.result())
        yield registry_pb2.ImportModelResponse(stage="done", progress=1.0, model=record.to_pb())

    @rpc_method
    async def DeleteModel(self, request, context):
        await asyncio.to_thread(self._store.delete_model, request.name)
        return registry_pb2.DeleteModelResponse()

    @rpc_method
    async def CreateServing(self, request, context):
        if not request.model:
            raise InvalidArgument("`model` is required.", param="model")
        serving = await asyncio.to_thread(
            self._store.add_serving,
            ServingRecord(
                id=0,
                name=request.name or request.model,
                model=request.model,
                system_prompt=request.system_prompt,
                default_sampling=SamplingParams.from_pb(request.default_sampling),
                rag_collection=request.rag_collection,
                moderation=ModerationPolicy.from_pb(request.moderation),
                limits=Limits.from_pb(request.limits),
            ),
        )
        return registry_pb2.CreateServingResponse(serving=serving.to_pb())

    @rpc_method
    async def UpdateServing(self, request, context):
        if not request.serving.id:
            raise InvalidArgument("`serving.id` is required.", param="id")
        serving = await asyncio.to_thread(
            self._store.update_serving, ServingRecord.from_pb(request.serving)
        )
        return registry_pb2.UpdateServingResponse(serving=serving.to_pb())

    @rpc_method
    async def GetServing(self, request, context):
        serving = await asyncio.to_thread(self._store.get_serving, request.id)
        return registry_pb2.GetServingResponse(serving=serving.to_pb())

    @rpc_method
    async def ListServings(self, request, context):
        servings = await asyncio.to_thread(self._store.list_servings)
        return registry_pb2.ListServingsResponse(servings=[s.to_pb() for s in servings])

    @rpc_method
    async def DeleteServing(self, request, context):
        await asyncio.to_thread(self._store.delete_serving, request.id)
        return registry_pb2.DeleteServingResponse()

    @rpc_method
    async def CreateApiKey(self, request, context):
        key, secret = await asyncio.to_thread(
            self._store.create_key, request.serving_id, request.name, request.expires_at_unix_ms
        )
        return registry_pb2.CreateApiKeyResponse(key=key.to_pb(), secret=secret)

    @rpc_method
    async def ListApiKeys(self, request, context):
        keys = await asyncio.to_thread(self._store.list_keys, request.serving_id)
        return registry_pb2.ListApiKeysResponse(keys=[k.to_pb() for k in keys])

    @rpc_method
    async def RevokeApiKey(self, request, context):
        await asyncio.to_thread(self._store.revoke_key, request.id)
        return registry_pb2.RevokeApiKeyResponse()

    @rpc_method
    async def VerifyApiKey(self, request, context):
        key = await asyncio.to_thread(self._store.verify_key, request.secret)
        return registry_pb2.VerifyApiKeyResponse(key=key.to_pb())

    @rpc_method
    async def RecordUsage(self, request, context):
        records = [UsageRecord.from_pb(r) for r in request.records]
        await asyncio.to_thread(self._store.record_usage, records)
        return registry_pb2.RecordUsageResponse()

    @rpc_method
    async def QueryUsage(self, request, context):
        summary = await asyncio.to_thread(self._store.query_usage, UsageQuery.from_pb(request))
        return summary.to_pb()
