"""What one registry replica sustains, on SQLite and on PostgreSQL: the edge's two hot calls.

  .venv/bin/python -m bench.registry [--seconds 5] [--concurrency 16] [--batches 1,64,256]

Starts its own PostgreSQL (services/common/local_postgres.py) and, for each engine in turn, one
`python -m services.registry` process on a fresh database holding one serving and one key, then
drives it over gRPC from this process (grpc.aio, --concurrency calls in flight) for --seconds
per figure: VerifyApiKey (the edge's key check, on a cache miss) and RecordUsage with batches
of each --batches size (the edge flushes up to 256 records every 0.2 s). Prints JSON: calls/s,
records/s and p50/p95 latency per figure.

The client shares the machine with the server (and PostgreSQL), so figures are a floor for a
replica with cores of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from llmserve.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.healthcheck import grpc_serving
from services.common.local import free_port
from services.common.local_postgres import LocalPostgres
from services.common.records import (
    ModelKind,
    ModelRecord,
    ServingRecord,
    SourceFormat,
    UsageRecord,
    UsageStatus,
)
from services.registry.store import RegistryStore

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60


def seed(database: Path | str) -> tuple[int, str]:
    """One model, one serving and one key; returns the serving id and the key's secret."""
    store = RegistryStore(database)
    try:
        store.add_model(
            ModelRecord("bench", ModelKind.CHAT, "/src", SourceFormat.GGUF, "0", "/a", "", 2048)
        )
        serving = store.add_serving(ServingRecord(id=0, name="bench", model="bench"))
        _, secret = store.create_key(serving.id, name="bench")
    finally:
        store.close()
    return serving.id, secret


def start_registry(env: dict[str, str], port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "services.registry"],
        cwd=REPO,
        env={**os.environ, **env, "REGISTRY_PORT": str(port), "REGISTRY_HOST": "127.0.0.1"},
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not grpc_serving(f"127.0.0.1:{port}", timeout_s=1.0):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the registry did not start")
        time.sleep(0.2)
    return process


async def measure(
    call: Callable[[], Awaitable], seconds: float, concurrency: int, records_per_call: int
) -> dict:
    latencies: list[float] = []
    end = time.perf_counter() + seconds

    async def worker() -> None:
        while (started := time.perf_counter()) < end:
            await call()
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "calls_per_s": round(len(latencies) / elapsed, 1),
        "records_per_s": round(len(latencies) * records_per_call / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p95_ms": round(latencies[int(len(latencies) * 0.95)] * 1000, 2),
    }


async def bench_engine(address: str, serving_id: int, secret: str, args) -> dict:
    request_ids = itertools.count()

    def usage(size: int) -> registry_pb2.RecordUsageRequest:
        return registry_pb2.RecordUsageRequest(
            records=[
                UsageRecord(
                    request_id=f"bench-{next(request_ids)}",
                    created_at_unix_ms=int(time.time() * 1000),
                    serving_id=serving_id,
                    model="bench",
                    api_key_id="key_bench",
                    user_id="bench",
                    prompt_tokens=100,
                    completion_tokens=250,
                    latency_ms=2_000,
                    ttft_ms=100,
                    status=UsageStatus.OK,
                    blocked=False,
                    endpoint="/v1/chat/completions",
                ).to_pb()
                for _ in range(size)
            ]
        )

    figures = {}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        verify = registry_pb2.VerifyApiKeyRequest(secret=secret)
        figures["verify_api_key"] = await measure(
            lambda: stub.VerifyApiKey(verify, timeout=30), args.seconds, args.concurrency, 0
        )
        for size in args.batches:
            figures[f"record_usage_batch_{size}"] = await measure(
                lambda size=size: stub.RecordUsage(usage(size), timeout=30),
                args.seconds,
                args.concurrency,
                size,
            )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--batches", type=lambda text: [int(n) for n in text.split(",")], default=[1, 64, 256]
    )
    args = parser.parse_args()

    postgres = LocalPostgres().start()
    data = Path(tempfile.mkdtemp(prefix="registry-bench-"))
    results = {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]}
    try:
        engines = {
            "sqlite": ({"REGISTRY_DB_PATH": str(data / "registry.db")}, data / "registry.db"),
            "postgresql": (
                {"REGISTRY_DATABASE_URL": (url := postgres.create_database())},
                url,
            ),
        }
        for engine, (env, database) in engines.items():
            serving_id, secret = seed(database)
            port = free_port()
            env = {**env, "REGISTRY_BOOTSTRAP_DEFAULTS": "false", "REGISTRY_LOG_LEVEL": "WARNING"}
            process = start_registry(env, port)
            try:
                results[engine] = asyncio.run(
                    bench_engine(f"127.0.0.1:{port}", serving_id, secret, args)
                )
            finally:
                process.terminate()
                process.wait(30)
    finally:
        postgres.stop()
    results["settings"] = vars(args)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
