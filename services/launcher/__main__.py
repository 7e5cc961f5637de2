"""Starts the whole stack locally as separate processes: python -m services.launcher (make run).

Registry first (it imports the default models on first start), then generation and embedding
together, then retrieval (it embeds through the embedding service), then the edge; each waits
for the services it needs to be healthy. A service that dies is restarted. Ctrl-C or SIGTERM
stops them in reverse order. Ports come from the services' own settings: REGISTRY_PORT,
GENERATION_PORT, EMBEDDING_PORT, RETRIEVAL_PORT, EDGE_PORT.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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
# A service that dies is restarted, unless it died this often within the window.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 300.0


@dataclass
class Service:
    name: str
    module: str
    env: dict[str, str]
    ready: Callable[[], bool]
    start_timeout_s: float
    process: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)


class Stack:
    def __init__(self) -> None:
        self.services: list[Service] = []
        self.stopping = threading.Event()

    def start(self, *services: Service) -> None:
        """Starts services together and waits until every one reports healthy."""
        for service in services:
            if service not in self.services:
                self.services.append(service)
            service.process = subprocess.Popen(
                [sys.executable, "-m", service.module], env={**os.environ, **service.env}
            )
            logger.info("started %s (pid %d)", service.name, service.process.pid)
        for service in services:
            self._wait_healthy(service)

    def _wait_healthy(self, service: Service) -> None:
        deadline = time.monotonic() + service.start_timeout_s
        while not service.ready():
            if service.process.poll() is not None:
                raise RuntimeError(
                    f"{service.name} exited with status {service.process.returncode} while starting"
                )
            if self.stopping.is_set():
                raise KeyboardInterrupt
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{service.name} did not become healthy within {service.start_timeout_s:.0f}s"
                )
            self.stopping.wait(0.25)
        logger.info("%s is healthy", service.name)

    def supervise(self) -> None:
        """Until a signal arrives: restarts a service that died, unless it keeps dying."""
        while not self.stopping.wait(0.5):
            for service in self.services:
                if service.process.poll() is None:
                    continue
                logger.error("%s exited with status %d", service.name, service.process.returncode)
                now = time.monotonic()
                service.restarts = [t for t in service.restarts if now - t < RESTART_WINDOW_S]
                if len(service.restarts) >= MAX_RESTARTS:
                    raise RuntimeError(f"{service.name} keeps failing; stopping the stack")
                service.restarts.append(now)
                self.start(service)

    def stop(self) -> None:
        running = [s for s in reversed(self.services) if s.process and s.process.poll() is None]
        for service in running:
            logger.info("stopping %s", service.name)
            service.process.terminate()
        for service in running:
            try:
                service.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in %.0fs; killing it", service.name, STOP_TIMEOUT_S)
                service.process.kill()
                service.process.wait()


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


def admin_token(path: Path) -> str:
    """The local admin token: reused from a file only its owner can read, or created there."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(token + "\n")
    return token


def main() -> None:
    setup_logging("INFO", "launcher")
    registry = RegistrySettings()
    generation = GenerationSettings()
    embedding = EmbeddingSettings()
    retrieval = RetrievalSettings()
    edge = EdgeSettings()
    registry_addr = f"{registry.host}:{registry.port}"
    admin_token_path = registry.dev_key_path.parent / "admin-token"
    edge_admin_token = (
        edge.admin_token.get_secret_value() if edge.admin_token else admin_token(admin_token_path)
    )
    generation_addr = f"{generation.host}:{generation.port}"
    embedding_addr = f"{embedding.host}:{embedding.port}"
    retrieval_addr = f"{retrieval.host}:{retrieval.port}"

    stack = Stack()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stack.stopping.set())
    base = f"http://{edge.host}:{edge.port}"
    registry_service = Service(
        "registry", "services.registry", {}, grpc_healthy(registry_addr), REGISTRY_START_TIMEOUT_S
    )
    generation_service = Service(
        "generation",
        "services.generation",
        {
            "GENERATION_REGISTRY_ADDR": registry_addr,
            "GENERATION_PRELOAD_MODELS": generation.preload_models or DEFAULT_CHAT_MODEL,
        },
        grpc_healthy(generation_addr),
        SERVICE_START_TIMEOUT_S,
    )
    embedding_service = Service(
        "embedding",
        "services.embedding",
        {
            "EMBEDDING_REGISTRY_ADDR": registry_addr,
            "EMBEDDING_PRELOAD_MODELS": embedding.preload_models or DEFAULT_EMBEDDING_MODEL,
        },
        grpc_healthy(embedding_addr),
        SERVICE_START_TIMEOUT_S,
    )
    retrieval_service = Service(
        "retrieval",
        "services.retrieval",
        {"RETRIEVAL_EMBEDDING_ADDR": embedding_addr},
        grpc_healthy(retrieval_addr),
        SERVICE_START_TIMEOUT_S,
    )
    edge_service = Service(
        "edge",
        "edge",
        {
            "EDGE_REGISTRY_ADDR": registry_addr,
            "EDGE_GENERATION_ADDR": generation_addr,
            "EDGE_EMBEDDING_ADDR": embedding_addr,
            "EDGE_RETRIEVAL_ADDR": retrieval_addr,
            "EDGE_ADMIN_TOKEN": edge_admin_token,
        },
        http_healthy(f"{base}/health"),
        SERVICE_START_TIMEOUT_S,
    )
    # Each group starts together once the groups before it are healthy.
    groups = [
        [registry_service],
        [generation_service, embedding_service],
        [retrieval_service],
        [edge_service],
    ]
    try:
        for group in groups:
            stack.start(*group)
        if edge.auth_enabled:
            logger.info(
                "development API key in %s (export OPENAI_API_KEY=$(cat %s))",
                registry.dev_key_path,
                registry.dev_key_path,
            )
        if not edge.admin_token:
            logger.info("admin token for %s/admin/v1 in %s", base, admin_token_path)
        logger.info("ready: OpenAI API at %s/v1 (Ctrl-C stops)", base)
        stack.supervise()
    except KeyboardInterrupt:
        pass
    except RuntimeError as error:
        logger.error("%s", error)
        stack.stop()
        sys.exit(1)
    stack.stop()


if __name__ == "__main__":
    main()
