"""Two registry replicas (`python -m services.registry` processes) on one PostgreSQL, behind the
project's Envoy as the launcher runs it (services/launcher): they bootstrap the defaults at the
same moment, and when one is killed (SIGKILL) under a load of usage writes, key issues and
serving edits, writes keep succeeding through the other, and nothing is lost or counted twice.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from llmserve.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.local import free_port
from services.common.records import UsageRecord, UsageStatus
from services.launcher import envoy
from services.launcher.__main__ import Service, Stack, grpc_ready, http_ready, python_module
from services.registry.defaults import DEFAULT_CHAT_MODEL, DEFAULT_EMBEDDING_MODEL

UPSTREAM_HEADER = "x-llmserve-upstream"
BATCH = 5
USAGE_WORKERS = 3
CALL_TIMEOUT_S = 10
RETRY_FOR_S = 30


@dataclass
class Replicas:
    stack: Stack
    registries: list[Service]
    front: str
    admin_port: int
    data: Path

    def healthy(self) -> dict[str, bool]:
        return {h.address: h.healthy for h in envoy.cluster_hosts(self.admin_port)["registry"]}


@pytest.fixture
def replicas(postgres, tmp_path, chat_model, embedding_model) -> Replicas:
    database = postgres.create_database()
    grpc_port, admin_port = free_port(), free_port()
    registries = []
    for number in (1, 2):
        address = f"127.0.0.1:{free_port()}"
        env = {
            "REGISTRY_DATABASE_URL": database,
            "REGISTRY_HOST": "127.0.0.1",
            "REGISTRY_PORT": address.rsplit(":", 1)[1],
            # As deployed: keys come from the admin API, not from each replica's bootstrap.
            "REGISTRY_ISSUE_DEV_KEY": "false",
            "REGISTRY_DEV_KEY_PATH": str(tmp_path / "dev-api-key"),
        }
        ready = grpc_ready(address)
        registries.append(
            Service(f"registry-{number}", python_module("services.registry"), env, ready)
        )
        registries[-1].address = address
    config = envoy.render_config(
        envoy.ENVOY_CONFIG,
        listen_host="127.0.0.1",
        http_port=free_port(),
        grpc_port=grpc_port,
        admin_port=admin_port,
        upstreams={"registry": [r.address for r in registries]},
    )
    config_path = envoy.write_config(config, tmp_path / "envoy.json")
    front = Service(
        "envoy",
        envoy.envoy_command(envoy.find_envoy(), config_path),
        {},
        http_ready(f"http://127.0.0.1:{admin_port}/ready"),
    )
    stack = Stack()
    try:
        # Both at once: they bootstrap the default models and serving concurrently.
        stack.start(*registries)
        stack.start(front)
        replicas = Replicas(stack, registries, f"127.0.0.1:{grpc_port}", admin_port, tmp_path)
        stack.wait_until(
            front, lambda: list(replicas.healthy().values()) == [True, True], "both healthy"
        )
        yield replicas
    finally:
        stack.stop()


@dataclass
class Load:
    """Writes through Envoy until stopped; each write is retried until acknowledged."""

    stub: registry_pb2_grpc.RegistryServiceStub
    serving_id: int
    stop: threading.Event = field(default_factory=threading.Event)
    # (start time, replica address or "error CODE") of every call.
    outcomes: list[tuple[float, str]] = field(default_factory=list)
    acknowledged_batches: list[int] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)
    last_edit: str = ""
    _batches: itertools.count = field(default_factory=itertools.count)

    def call(self, method, request):
        """Until acknowledged (for RETRY_FOR_S at most); returns the response."""
        deadline = time.monotonic() + RETRY_FOR_S
        while True:
            started = time.monotonic()
            try:
                response, call = method.with_call(request, timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as error:
                self.outcomes.append((started, f"error {error.code().name}"))
                assert started < deadline, f"no replica took the write: {error.code().name}"
                continue
            self.outcomes.append((started, dict(call.initial_metadata())[UPSTREAM_HEADER]))
            return response

    def record_usage(self) -> None:
        while not self.stop.is_set():
            batch = next(self._batches)
            records = [
                UsageRecord(
                    request_id=f"b{batch}-{i}",
                    created_at_unix_ms=1_000 + batch,
                    serving_id=self.serving_id,
                    model=DEFAULT_CHAT_MODEL,
                    api_key_id="",
                    user_id="",
                    prompt_tokens=10,
                    completion_tokens=1,
                    latency_ms=5,
                    ttft_ms=0,
                    status=UsageStatus.OK,
                    blocked=False,
                    endpoint="/v1/chat/completions",
                ).to_pb()
                for i in range(BATCH)
            ]
            # A retry after a lost answer resends the same request ids: idempotent.
            self.call(self.stub.RecordUsage, registry_pb2.RecordUsageRequest(records=records))
            self.acknowledged_batches.append(batch)

    def issue_keys_and_edit_serving(self) -> None:
        for n in itertools.count():
            if self.stop.is_set():
                return
            response = self.call(
                self.stub.CreateApiKey,
                registry_pb2.CreateApiKeyRequest(serving_id=self.serving_id, name=f"k{n}"),
            )
            self.keys[response.key.id] = response.secret
            serving = self.call(
                self.stub.GetServing, registry_pb2.GetServingRequest(id=self.serving_id)
            ).serving
            serving.system_prompt = f"edit {n}"
            self.call(self.stub.UpdateServing, registry_pb2.UpdateServingRequest(serving=serving))
            self.last_edit = serving.system_prompt

    def seen(self, since: float = 0.0) -> Counter:
        return Counter(outcome for started, outcome in list(self.outcomes) if started > since)


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting until {what}")
        time.sleep(0.1)


def test_a_killed_replica_loses_no_write_and_doubles_none(replicas):
    with grpc.insecure_channel(replicas.front) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        # The two bootstraps made one of everything.
        models = stub.ListModels(registry_pb2.ListModelsRequest(), timeout=10).models
        assert sorted(m.name for m in models) == sorted(
            [DEFAULT_CHAT_MODEL, DEFAULT_EMBEDDING_MODEL]
        )
        [serving] = stub.ListServings(registry_pb2.ListServingsRequest(), timeout=10).servings
        assert serving.model == DEFAULT_CHAT_MODEL
        request = registry_pb2.ListApiKeysRequest(serving_id=serving.id)
        assert not stub.ListApiKeys(request, timeout=10).keys
        assert not (replicas.data / "dev-api-key").exists()

        load = Load(stub, serving.id)
        pool = ThreadPoolExecutor(USAGE_WORKERS + 1)
        workers = [pool.submit(load.record_usage) for _ in range(USAGE_WORKERS)]
        workers.append(pool.submit(load.issue_keys_and_edit_serving))
        victim, survivor = replicas.registries
        try:
            wait_for(
                lambda: set(load.seen()) >= {victim.address, survivor.address},
                30,
                "writes reach both replicas",
            )
            killed_at = time.monotonic()
            os.kill(victim.process.pid, signal.SIGKILL)
            wait_for(
                lambda: replicas.healthy()[victim.address] is False,
                15,
                "Envoy marks the killed replica unhealthy",
            )
            # A call that started a second after the kill cannot have reached the victim.
            wait_for(
                lambda: load.seen(since=killed_at + 1)[survivor.address] >= 30,
                60,
                "thirty writes start after the kill",
            )
        finally:
            load.stop.set()
            pool.shutdown()
        for worker in workers:
            worker.result()

        late = load.seen(since=killed_at + 1)
        assert set(late) == {survivor.address}, late
        # Only calls on the victim's connection as it died fail (Envoy retries the rest, and the
        # worker retries those); none that starts a second later.
        errors = [(t - killed_at, outcome) for t, outcome in load.outcomes if "error" in outcome]
        # (A reset stream reads as UNAVAILABLE or INTERNAL, as in tests/test_envoy.py.)
        cut = ("error UNAVAILABLE", "error INTERNAL")
        assert all(since < 1 and outcome in cut for since, outcome in errors), errors

        # Every acknowledged batch is there once, retried or not, and nothing else.
        usage = stub.QueryUsage(registry_pb2.QueryUsageRequest(limit=100_000), timeout=30)
        expected = {f"b{b}-{i}" for b in load.acknowledged_batches for i in range(BATCH)}
        assert usage.total_requests == len(expected)
        assert sorted(r.request_id for r in usage.records) == sorted(expected)
        # Every key issued is listed and verifies; the last acknowledged edit is the one kept.
        listed = stub.ListApiKeys(
            registry_pb2.ListApiKeysRequest(serving_id=serving.id), timeout=10
        ).keys
        assert set(load.keys) <= {k.id for k in listed}
        for key_id, secret in load.keys.items():
            verified = stub.VerifyApiKey(
                registry_pb2.VerifyApiKeyRequest(secret=secret), timeout=10
            )
            assert verified.key.id == key_id
        current = stub.GetServing(registry_pb2.GetServingRequest(id=serving.id), timeout=10)
        assert current.serving.system_prompt == load.last_edit
