"""Registry: the store on both engines (SQLite, PostgreSQL) and model import (real
exports); its command line is `llmserve` (tests/test_cli.py)."""

from __future__ import annotations

import logging
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from llmserve.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.database import database_url
from services.common.domain import ChatMessage, SamplingParams
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from services.common.records import (
    EndpointUsage,
    GraphKind,
    ModelKind,
    ModelRecord,
    ServingRecord,
    SourceFormat,
    UsageQuery,
    UsageRecord,
    UsageStatus,
    chat_model_file,
)
from services.common.rpc import service_name, start_server
from services.registry.exporter import BUILD_STAGE
from services.registry.importer import ModelImporter
from services.registry.servicer import RegistryServicer
from services.registry.store import RegistryStore, hash_secret
from services.registry.tables import api_keys


def test_models_and_servings_persist_across_reopen(registry_database, chat_model):
    path = registry_database
    store = RegistryStore(path)
    store.add_model(chat_model)
    serving = store.add_serving(
        ServingRecord(id=0, name="prod", model=chat_model.name, system_prompt="Be brief.")
    )
    with pytest.raises(AlreadyExists):
        store.add_model(chat_model)
    store.close()

    reopened = RegistryStore(path)
    assert [m.name for m in reopened.list_models()] == [chat_model.name]
    model = reopened.get_model(chat_model.name)
    assert model.chat_template == chat_model.chat_template
    assert model.context_length == 8192
    assert reopened.get_serving(serving.id).system_prompt == "Be brief."
    with pytest.raises(FailedPrecondition):
        reopened.delete_model(chat_model.name)
    reopened.delete_serving(serving.id)
    reopened.delete_model(chat_model.name)
    with pytest.raises(NotFound):
        reopened.get_model(chat_model.name)
    assert reopened.list_models(ModelKind.CHAT) == []


def _graph_record(graph: GraphKind, name: str = "m") -> ModelRecord:
    return ModelRecord(
        name=name,
        kind=ModelKind.CHAT,
        source="/src.gguf",
        source_format=SourceFormat.GGUF,
        source_sha256="f00",
        artifact_dir="/a",
        chat_template="{{ messages }}",
        context_length=2048,
        created_at_unix_ms=7,
        graph=graph,
    )


@pytest.mark.parametrize("graph", list(GraphKind))
def test_the_graph_kind_survives_the_proto_and_the_store(registry_database, graph):
    pb = _graph_record(graph).to_pb()
    assert registry_pb2.GraphKind.Name(pb.graph) == f"GRAPH_KIND_{graph.name}"
    wire = registry_pb2.Model.FromString(pb.SerializeToString())
    assert ModelRecord.from_pb(wire) == _graph_record(graph)

    store = RegistryStore(registry_database)
    store.add_model(_graph_record(graph))
    store.close()
    store = RegistryStore(registry_database)
    assert store.get_model("m") == _graph_record(graph)
    assert store.list_models(ModelKind.CHAT) == [_graph_record(graph)]
    store.close()


def test_a_model_message_without_a_graph_kind_is_an_optimum_export():
    pb = _graph_record(GraphKind.GQA).to_pb()
    pb.ClearField("graph")
    assert ModelRecord.from_pb(pb).graph is GraphKind.OPTIMUM


def test_chat_model_files_by_graph_and_weights():
    assert chat_model_file(GraphKind.GQA, "int4") == "gqa-int4/model.onnx"
    assert chat_model_file(GraphKind.GQA, "fp32") == "gqa-fp32/model.onnx"
    assert chat_model_file(GraphKind.OPTIMUM, "int4") == "model.int4.onnx"
    assert chat_model_file(GraphKind.OPTIMUM, "fp32") == "model.onnx"
    assert chat_model_file(GraphKind.GQA, "int4", "cuda") == "gqa-int4-cuda/model.onnx"
    assert chat_model_file(GraphKind.OPTIMUM, "int4", "cuda") == "model.int4.onnx"
    with pytest.raises(ValueError, match="int4"):
        chat_model_file(GraphKind.GQA, "fp32", "cuda")
    # int8 KV caches: builder graphs for the CPU only.
    assert chat_model_file(GraphKind.GQA, "int4", kv_cache="int8") == "gqa-int4/model.kv-int8.onnx"
    assert chat_model_file(GraphKind.GQA, "fp32", kv_cache="int8") == "gqa-fp32/model.kv-int8.onnx"
    for graph, device in ((GraphKind.GQA, "cuda"), (GraphKind.OPTIMUM, "cpu")):
        with pytest.raises(ValueError, match="int8"):
            chat_model_file(graph, "int4", device, "int8")


def test_serving_for_unknown_model_is_not_found(registry_database):
    store = RegistryStore(registry_database)
    with pytest.raises(NotFound):
        store.add_serving(ServingRecord(id=0, name="x", model="missing"))
    with pytest.raises(NotFound):
        store.serving_for_model(ServingRecord(id=0, name="x", model="missing"))
    with pytest.raises(NotFound):
        store.create_key(7)
    store.close()


def test_default_model_import_records_template_context_and_eos(chat_model):
    assert chat_model.source_format is SourceFormat.GGUF
    assert "<|im_start|>" in chat_model.chat_template
    assert chat_model.context_length == 8192
    artifact = Path(chat_model.artifact_dir)
    # The graphs themselves: tests/test_exporter.py.
    assert (artifact / chat_model_file(chat_model.graph, "fp32")).exists()
    config = (artifact / "tokenizer_config.json").read_text()
    assert '"eos_token": "<|im_end|>"' in config


def test_import_checkpoint_directory_exports_once_and_serves(tmp_path, tiny_checkpoint, cache_dir):
    import asyncio

    from services.common.onnx_runtime import select_providers
    from services.generation.model_pool import ModelPool
    from services.generation.sampler import ResolvedSampling

    importer = ModelImporter(cache_dir)
    stages = []
    record = importer.import_model(
        "tiny",
        ModelKind.CHAT,
        tiny_checkpoint,
        lambda stage, fraction: stages.append((stage, fraction)),
        default_sampling=SamplingParams(temperature=0.3),
    )
    assert record.source_format is SourceFormat.HF_DIRECTORY
    assert record.context_length == 256
    assert record.default_sampling.temperature == 0.3
    assert stages[-1] == ("imported", 1.0)
    manifest = Path(record.artifact_dir) / "manifest.json"
    exported_at = manifest.stat().st_mtime_ns

    again = importer.import_model("tiny2", ModelKind.CHAT, tiny_checkpoint, lambda *_: None)
    assert again.artifact_dir == record.artifact_dir
    assert manifest.stat().st_mtime_ns == exported_at

    async def generate():
        async def lookup(name):
            return record

        pool = ModelPool(lookup, select_providers("cpu"), 0, 4, 512)
        try:
            model = await pool.get("tiny")
            _, ids = model.render_prompt([ChatMessage("user", "hi")])
            params = ResolvedSampling.resolve(SamplingParams(temperature=0.0, max_tokens=4), 200)
            return [e async for e in model.engine.generate(ids, [params])]
        finally:
            pool.close()

    events = asyncio.run(generate())
    assert events[-1].completion_tokens == 4


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_cancelled_import_holds_the_lock_until_its_export_child_exits(
    tmp_path, tiny_checkpoint, caplog
):
    """Exports run one at a time: a cancelled ImportModel call stops its export child, and the
    next import starts only once that child has exited (and removed its temporary files)."""
    store = RegistryStore(tmp_path / "registry.db")
    # An empty cache, so the exports really run.
    models_dir = tmp_path / "cache" / "models"
    importer = ModelImporter(tmp_path / "cache")

    def register(server):
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(
            RegistryServicer(store, importer), server
        )
        return [service_name(registry_pb2, "RegistryService")]

    def request(name: str) -> registry_pb2.ImportModelRequest:
        return registry_pb2.ImportModelRequest(
            name=name, kind=registry_pb2.MODEL_KIND_CHAT, source=str(tiny_checkpoint)
        )

    caplog.set_level(logging.INFO, logger="services.registry.importer")
    server = await start_server("127.0.0.1:0", register)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            registry = registry_pb2_grpc.RegistryServiceStub(channel)
            first = registry.ImportModel(request("tiny"))
            async for response in first:
                # Reported by the export child, so it runs.
                if response.stage == BUILD_STAGE.format(weights="int4", device="cpu"):
                    break
            [export_pid] = map(int, re.findall(r"\(pid (\d+)\)", caplog.text))
            assert running(export_pid)
            first.cancel()

            responses = []
            async for response in registry.ImportModel(request("tiny-again")):
                if not responses:
                    # The second import's first event ("hashing source") comes once it holds
                    # the lock.
                    assert not running(export_pid), "the next import started beside the export"
                responses.append(response)
    finally:
        await server.stop(0)
        store.close()
    assert responses[0].stage == "hashing source"
    assert responses[-1].model.name == "tiny-again"
    # The cancelled export left no temporary directory behind.
    assert [p.name for p in models_dir.iterdir()] == [Path(responses[-1].model.artifact_dir).name]


def _usage(request_id: str, **fields) -> UsageRecord:
    values = dict(
        request_id=request_id,
        created_at_unix_ms=1_000,
        serving_id=1,
        model="m",
        api_key_id="key_a",
        user_id="alice",
        prompt_tokens=10,
        completion_tokens=5,
        latency_ms=100,
        ttft_ms=20,
        status=UsageStatus.OK,
        blocked=False,
        endpoint="/v1/chat/completions",
    )
    values.update(fields)
    return UsageRecord(**values)


def test_keys_are_hashed_verified_revoked_and_expire(registry_database, chat_model):
    store = RegistryStore(registry_database)
    store.add_model(chat_model)
    serving = store.add_serving(ServingRecord(id=0, name="s", model=chat_model.name))
    key, secret = store.create_key(serving.id, name="ci")
    assert store.verify_key(secret) == key
    # Only a hash is stored.
    engine = sa.create_engine(database_url(registry_database), poolclass=sa.NullPool)
    with engine.connect() as connection:
        stored = repr(connection.execute(api_keys.select()).all())
    engine.dispose()
    assert secret not in stored and hash_secret(secret) in stored
    with pytest.raises(Unauthenticated):
        store.verify_key(secret + "x")
    expired, expired_secret = store.create_key(serving.id, expires_at_unix_ms=1)
    with pytest.raises(Unauthenticated):
        store.verify_key(expired_secret)
    store.revoke_key(key.id)
    with pytest.raises(Unauthenticated):
        store.verify_key(secret)
    assert {k.id for k in store.list_keys(serving.id)} == {key.id, expired.id}
    with pytest.raises(NotFound):
        store.revoke_key("key_missing")


def test_usage_query_filters_and_totals_and_replays_are_ignored(registry_database):
    store = RegistryStore(registry_database)
    store.record_usage(
        [
            _usage("r1"),
            _usage("r2", user_id="bob", created_at_unix_ms=2_000, completion_tokens=7),
            _usage("r3", serving_id=2, api_key_id="key_b", created_at_unix_ms=3_000),
        ]
    )
    store.record_usage([_usage("r1")])  # a retried batch must not double count
    everything = store.query_usage(UsageQuery())
    assert everything.total_requests == 3
    assert [r.request_id for r in everything.records] == ["r3", "r2", "r1"]
    assert (everything.prompt_tokens, everything.completion_tokens) == (30, 17)
    assert store.query_usage(UsageQuery(user_id="bob")).total_requests == 1
    assert store.query_usage(UsageQuery(serving_id=1)).total_requests == 2
    assert store.query_usage(UsageQuery(api_key_id="key_b")).records[0].request_id == "r3"
    window = store.query_usage(UsageQuery(since_unix_ms=2_000, until_unix_ms=3_000))
    assert [r.request_id for r in window.records] == ["r2"]
    store.close()
    store = RegistryStore(registry_database)
    assert store.query_usage(UsageQuery()).total_requests == 3
    store.close()


def test_usage_totals_per_endpoint_cover_every_match_and_endpoint_filters(registry_database):
    store = RegistryStore(registry_database)
    store.record_usage(
        [
            _usage("r1"),
            _usage("r2", created_at_unix_ms=2_000, completion_tokens=7),
            _usage("r3", created_at_unix_ms=3_000, endpoint="/v1/embeddings", completion_tokens=0),
            _usage("r4", created_at_unix_ms=4_000, endpoint="/v1/retrieve", prompt_tokens=3),
            _usage("r5", created_at_unix_ms=5_000, endpoint="/v1/create/rag", serving_id=2),
        ]
    )
    newest = store.query_usage(UsageQuery(limit=1))
    assert [r.request_id for r in newest.records] == ["r5"]
    assert newest.by_endpoint == [
        EndpointUsage("/v1/chat/completions", 2, 20, 12),
        EndpointUsage("/v1/create/rag", 1, 10, 5),
        EndpointUsage("/v1/embeddings", 1, 10, 0),
        EndpointUsage("/v1/retrieve", 1, 3, 5),
    ]
    assert (newest.total_requests, newest.prompt_tokens, newest.completion_tokens) == (5, 43, 22)

    embeddings = store.query_usage(UsageQuery(endpoint="/v1/embeddings"))
    assert [r.request_id for r in embeddings.records] == ["r3"]
    assert embeddings.by_endpoint == [EndpointUsage("/v1/embeddings", 1, 10, 0)]
    assert (embeddings.total_requests, embeddings.prompt_tokens) == (1, 10)
    # The other filters narrow the totals per endpoint too.
    serving_1_late = store.query_usage(UsageQuery(serving_id=1, since_unix_ms=2_000))
    assert [e.endpoint for e in serving_1_late.by_endpoint] == [
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/retrieve",
    ]
    assert serving_1_late.by_endpoint[0] == EndpointUsage("/v1/chat/completions", 1, 10, 7)
    nothing = store.query_usage(UsageQuery(endpoint="/v1/missing"))
    assert (nothing.records, nothing.by_endpoint, nothing.total_requests) == ([], [], 0)


def test_stores_sharing_a_database_at_once_make_one_of_everything(registry_database):
    """Two stores on one database at the same moment (as two registry replicas starting
    together): both upgrade it, one model and one default serving come out, and usage written
    by both, overlapping, counts every request once."""
    barrier = threading.Barrier(2, timeout=60)

    def replica(first_request: int) -> tuple[RegistryStore, list, int]:
        barrier.wait()
        store = RegistryStore(registry_database)
        barrier.wait()
        outcomes = []
        try:
            store.add_model(_graph_record(GraphKind.GQA))
            outcomes.append("added")
        except AlreadyExists:
            outcomes.append("exists")
        barrier.wait()
        serving = store.serving_for_model(ServingRecord(id=0, name="default", model="m"))
        for start in range(first_request, first_request + 100, 10):
            store.record_usage([_usage(f"r{i}") for i in range(start, start + 10)])
        return store, outcomes, serving.id

    with ThreadPoolExecutor(2) as pool:
        (a, a_outcome, a_serving), (b, b_outcome, b_serving) = pool.map(replica, (0, 50))
    assert sorted(a_outcome + b_outcome) == ["added", "exists"]
    assert a_serving == b_serving
    assert [s.id for s in a.list_servings()] == [a_serving]
    assert a.query_usage(UsageQuery()).total_requests == 150
    recorded = b.query_usage(UsageQuery(limit=1000)).records
    assert sorted(r.request_id for r in recorded) == sorted(f"r{i}" for i in range(150))
    a.close()
    b.close()


def test_a_database_out_of_reach_is_unavailable_not_internal(postgres):
    url = postgres.create_database()
    store = RegistryStore(url)
    store.record_usage([_usage("r1")])
    admin = sa.create_engine(database_url(postgres.url()), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        # Ends the store's connections too, as a database failover would.
        connection.exec_driver_sql(f"DROP DATABASE {sa.make_url(url).database} WITH (FORCE)")
    admin.dispose()
    with pytest.raises(Unavailable):
        store.query_usage(UsageQuery())
    with pytest.raises(Unavailable):
        store.record_usage([_usage("r2")])
    store.close()


def test_a_base_model_imports_without_a_template_and_takes_one_given(
    tmp_path, tiny_base_checkpoint, cache_dir
):
    importer = ModelImporter(cache_dir)
    base = importer.import_model("base", ModelKind.CHAT, tiny_base_checkpoint, lambda *_: None)
    assert base.chat_template == ""
    template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"
    with_template = importer.import_model(
        "base-chat",
        ModelKind.CHAT,
        tiny_base_checkpoint,
        lambda *_: None,
        chat_template=template,
    )
    assert with_template.chat_template == template
    # The same export serves both.
    assert with_template.artifact_dir == base.artifact_dir
    with pytest.raises(InvalidArgument, match="not valid Jinja") as refused:
        importer.import_model(
            "broken", ModelKind.CHAT, tiny_base_checkpoint, lambda *_: None, chat_template="{% if"
        )
    assert refused.value.param == "chat_template"
