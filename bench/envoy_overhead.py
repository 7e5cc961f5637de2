"""What Envoy costs: the same calls to one generation replica, directly and through Envoy.

  .venv/bin/python -m bench.envoy_overhead [--calls 200] [--tokens 200] [--streams 3]

Starts `ENVOY_ENABLED=true make run`'s topology (launcher, one generation replica behind
Envoy) on free ports with a fresh registry database, then measures unary Tokenize latency
(p50/p95 over --calls calls) and one greedy Generate stream (tokens/s) both ways, in
alternation, and prints JSON. Uses the exported model in the shared cache.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from llmserve.common.v1 import common_pb2
from llmserve.generation.v1 import generation_pb2, generation_pb2_grpc
from services.common.local import free_port
from services.registry.defaults import DEFAULT_CHAT_MODEL

REPO = Path(__file__).resolve().parents[1]


def messages(text: str) -> list[common_pb2.ChatMessage]:
    return [common_pb2.ChatMessage(role="user", content=text)]


def tokenize_ms(stub) -> float:
    started = time.perf_counter()
    stub.Tokenize(
        generation_pb2.TokenizeRequest(model=DEFAULT_CHAT_MODEL, messages=messages("Hi")),
        timeout=30,
    )
    return (time.perf_counter() - started) * 1000


def stream_tokens_per_s(stub, tokens: int) -> float:
    call = stub.Generate(
        generation_pb2.GenerateRequest(
            model=DEFAULT_CHAT_MODEL,
            messages=messages("Write a very long essay about the history of Rome."),
            sampling=common_pb2.SamplingParams(temperature=0.0, max_tokens=tokens),
        ),
        timeout=600,
    )
    first = None
    count = 0
    for response in call:
        if first is None:
            first = time.perf_counter()
        count += len(response.token_ids)
    # Decode rate after the first token, so prefill does not count.
    return (count - 1) / (time.perf_counter() - first)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--streams", type=int, default=3)
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="envoy-bench-"))
    grpc_port = free_port()
    env = {
        **os.environ,
        "ENVOY_ENABLED": "true",
        "REGISTRY_DB_PATH": str(data / "registry.db"),
        "REGISTRY_PORT": str(free_port()),
        "EDGE_PORT": str(free_port()),
        "ENVOY_GRPC_PORT": str(grpc_port),
        "ENVOY_ADMIN_PORT": str(free_port()),
        # Keep the bench's stack out of the user's data directory.
        "REGISTRY_DEV_KEY_PATH": str(data / "dev-api-key"),
        "RETRIEVAL_DATA_DIR": str(data / "retrieval"),
        "EDGE_ADMIN_TOKEN": "bench",
    }
    log_path = data / "stack.log"
    with log_path.open("w") as log:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "services.launcher"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 600
        while "ready:" not in log_path.read_text():
            if launcher.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(log_path.read_text())
            time.sleep(0.5)
        replica = re.search(r"started generation-1 \(pid \d+\) on (\S+)", log_path.read_text())
        paths = {"direct": replica.group(1), "envoy": f"127.0.0.1:{grpc_port}"}
        channels = {name: grpc.insecure_channel(addr) for name, addr in paths.items()}
        stubs = {n: generation_pb2_grpc.GenerationServiceStub(c) for n, c in channels.items()}
        for stub in stubs.values():  # warm up connections and the model
            tokenize_ms(stub)
            stream_tokens_per_s(stub, 16)
        latencies = {name: [] for name in stubs}
        for _ in range(args.calls):
            for name, stub in stubs.items():
                latencies[name].append(tokenize_ms(stub))
        rates = {name: [] for name in stubs}
        for _ in range(args.streams):
            for name, stub in stubs.items():
                rates[name].append(stream_tokens_per_s(stub, args.tokens))
        result = {
            name: {
                "tokenize_p50_ms": round(statistics.median(latencies[name]), 2),
                "tokenize_p95_ms": round(statistics.quantiles(latencies[name], n=20)[18], 2),
                "stream_tokens_per_s_median": round(statistics.median(rates[name]), 1),
            }
            for name in stubs
        }
        result["calls"] = args.calls
        result["stream_tokens"] = args.tokens
        result["streams"] = args.streams
        print(json.dumps(result, indent=2))
        for channel in channels.values():
            channel.close()
    finally:
        launcher.send_signal(signal.SIGINT)
        launcher.wait(60)


if __name__ == "__main__":
    main()
