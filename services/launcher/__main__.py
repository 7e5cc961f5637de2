"""Starts the whole stack locally as separate processes: python -m services.launcher (make run).

Registry first (it imports the default models on first start), then generation and embedding
together, then retrieval (it embeds through the embedding service), then the edge; each waits
for the services it needs to be healthy. Ctrl-C or SIGTERM stops them in reverse order.
Ports come from the services' own settings: REGISTRY_PORT, GENERATION_PORT, EMBEDDING_PORT,
RETRIEVAL_PORT, EDGE_PORT.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edge.settings import EdgeSettings
from services.common.logs import setup_logging
from services.embedding.settings import EmbeddingSettings
from services.generation.settings import GenerationSettings
from services.registry.defaults import DEFAULT_CHAT_MODEL, DEFAULT_EMBEDDING_MODEL
from services.registry.settings import RegistrySettings
from services.retrieval.settings import RetrievalSettings

logger = logging.getLogger("launcher")

# First start exports the default model (about two minutes here); later starts take seconds.
REGISTRY_START_TIMEOUT_S = 1800.0
SERVICE_START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 20.0


class Stack:
    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.stopping = threading.Event()

    def start(self, name: str, module: str, env: dict[str, str]) -> subprocess.Popen:
        logger.info("starting %s", name)
        child = subprocess.Popen([sys.executable, "-m", module], env={**os.environ, **env})
        self.children.append((name, child))
        return child

    def wait_until(self, name: str, child: subprocess.Popen, ready, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if child.poll() is not None:
                raise RuntimeError(f"{name} exited with status {child.returncode} while starting")
            if self.stopping.is_set():
                raise KeyboardInterrupt
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not become healthy within {timeout_s:.0f}s")
            self.stopping.wait(0.25)
        logger.info("%s is healthy", name)

    def stop(self) -> None:
        for name, child in reversed(self.children):
            if child.poll() is None:
                logger.info("stopping %s", name)
                child.terminate()
        for name, child in reversed(self.children):
            try:
                child.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in %.0fs; killing it", name, STOP_TIMEOUT_S)
                child.kill()
                child.wait()


def grpc_healthy(address: str):
    def check() -> bool:
        with grpc.insecure_channel(address) as channel:
            try:
                response = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1.0
                )
            except grpc.RpcError:
                return False
        return response.status == health_pb2.HealthCheckResponse.SERVING

    return check


def http_healthy(url: str):
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return response.status == 200
        except OSError:
            return False

    return check


def main() -> None:
    setup_logging("INFO", "launcher")
    registry = RegistrySettings()
    generation = GenerationSettings()
    embedding = EmbeddingSettings()
    retrieval = RetrievalSettings()
    edge = EdgeSettings()
    registry_addr = f"{registry.host}:{registry.port}"
    generation_addr = f"{generation.host}:{generation.port}"
    embedding_addr = f"{embedding.host}:{embedding.port}"
    retrieval_addr = f"{retrieval.host}:{retrieval.port}"

    stack = Stack()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stack.stopping.set())
    try:
        child = stack.start("registry", "services.registry", {})
        stack.wait_until("registry", child, grpc_healthy(registry_addr), REGISTRY_START_TIMEOUT_S)
        generation_child = stack.start(
            "generation",
            "services.generation",
            {
                "GENERATION_REGISTRY_ADDR": registry_addr,
                "GENERATION_PRELOAD_MODELS": generation.preload_models or DEFAULT_CHAT_MODEL,
            },
        )
        embedding_child = stack.start(
            "embedding",
            "services.embedding",
            {
                "EMBEDDING_REGISTRY_ADDR": registry_addr,
                "EMBEDDING_PRELOAD_MODELS": embedding.preload_models or DEFAULT_EMBEDDING_MODEL,
            },
        )
        stack.wait_until(
            "generation", generation_child, grpc_healthy(generation_addr), SERVICE_START_TIMEOUT_S
        )
        stack.wait_until(
            "embedding", embedding_child, grpc_healthy(embedding_addr), SERVICE_START_TIMEOUT_S
        )
        child = stack.start(
            "retrieval", "services.retrieval", {"RETRIEVAL_EMBEDDING_ADDR": embedding_addr}
        )
        stack.wait_until("retrieval", child, grpc_healthy(retrieval_addr), SERVICE_START_TIMEOUT_S)
        child = stack.start(
            "edge",
            "edge",
            {
                "EDGE_REGISTRY_ADDR": registry_addr,
                "EDGE_GENERATION_ADDR": generation_addr,
                "EDGE_EMBEDDING_ADDR": embedding_addr,
                "EDGE_RETRIEVAL_ADDR": retrieval_addr,
            },
        )
        base = f"http://{edge.host}:{edge.port}"
        stack.wait_until("edge", child, http_healthy(f"{base}/health"), SERVICE_START_TIMEOUT_S)
        logger.info("ready: OpenAI API at %s/v1 (Ctrl-C stops)", base)
        # Run until a signal arrives or any service dies.
        while not stack.stopping.wait(1.0):
            for name, process in stack.children:
                if process.poll() is not None:
                    logger.error("%s exited with status %d", name, process.returncode)
                    stack.stopping.set()
    except KeyboardInterrupt:
        pass
    except RuntimeError as error:
        logger.error("%s", error)
        stack.stop()
        sys.exit(1)
    stack.stop()


if __name__ == "__main__":
    main()
