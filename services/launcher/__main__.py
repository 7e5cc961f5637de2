"""Starts the whole stack locally as separate processes: python -m services.launcher (make run).

Registry first (it imports the default models on first start), then generation and embedding
together, then retrieval (it embeds through the embedding service), then the edge; each waits
for the services it needs to be healthy. A service that dies is restarted. Ctrl-C, SIGTERM or
SIGHUP (its terminal closing) stops them in reverse order, and so does any error that ends the
launcher. Ports come from the services' own settings: REGISTRY_PORT,
GENERATION_PORT, EMBEDDING_PORT, RETRIEVAL_PORT, EDGE_PORT.

With GENERATION_REPLICAS, EDGE_REPLICAS or REGISTRY_REPLICAS above 1 (or ENVOY_ENABLED=true)
it starts the topology of docker-compose.yml instead: Envoy takes EDGE_PORT (OpenAI API) and
ENVOY_GRPC_PORT (internal gRPC), the replicas listen on free loopback ports behind it, and
the edges reach the services through Envoy. Registry replicas share REGISTRY_DATABASE_URL
(PostgreSQL); the first starts alone, as it may import the default models.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edge.settings import EdgeSettings
from services.common.healthcheck import grpc_serving, http_ok
from services.common.local import admin_token_path, free_port, write_secret_file
from services.common.logs import setup_logging
from services.embedding.settings import EmbeddingSettings
from services.generation.settings import GenerationSettings
from services.launcher import envoy
from services.launcher.settings import LauncherSettings
from services.registry.defaults import DEFAULT_CHAT_MODEL, DEFAULT_EMBEDDING_MODEL
from services.registry.settings import RegistrySettings
from services.retrieval.settings import RetrievalSettings

logger = logging.getLogger("launcher")

# First start exports the default models (about two minutes here); later starts take seconds.
REGISTRY_START_TIMEOUT_S = 1800.0
SERVICE_START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 20.0
# A service that dies is restarted, unless it died this often within the window.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 300.0


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    ready: Callable[[], bool]
    start_timeout_s: float = SERVICE_START_TIMEOUT_S
    # Where it listens, for the log.
    address: str = ""
    process: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)


def python_module(module: str) -> list[str]:
    return [sys.executable, "-m", module]


def grpc_ready(address: str) -> Callable[[], bool]:
    return lambda: grpc_serving(address, timeout_s=1.0)


def http_ready(url: str) -> Callable[[], bool]:
    return lambda: http_ok(url, 1.0)


class Stack:
    def __init__(self) -> None:
        self.services: list[Service] = []
        self.stopping = threading.Event()

    def start(self, *services: Service) -> None:
        """Starts services together and waits until every one reports healthy."""
        for service in services:
            if service not in self.services:
                self.services.append(service)
            # Own session: a Ctrl-C reaches only the launcher, which then stops the services
            # in reverse order, so the edge can still flush its usage log to the registry.
            service.process = subprocess.Popen(
                service.argv, env={**os.environ, **service.env}, start_new_session=True
            )
            where = f" on {service.address}" if service.address else ""
            logger.info("started %s (pid %d)%s", service.name, service.process.pid, where)
        for service in services:
            self.wait_until(service, service.ready, f"{service.name} is healthy")

    def wait_until(self, service: Service, ready: Callable[[], bool], what: str) -> None:
        """Waits for `ready` while `service` runs, for at most its start timeout."""
        deadline = time.monotonic() + service.start_timeout_s
        while not ready():
            if service.process.poll() is not None:
                raise RuntimeError(
                    f"{service.name} exited with status {service.process.returncode} while starting"
                )
            if self.stopping.is_set():
                raise KeyboardInterrupt
            if time.monotonic() > deadline:
                raise RuntimeError(f"not true within {service.start_timeout_s:.0f}s: {what}")
            self.stopping.wait(0.25)
        logger.info("%s", what)

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
        """Stops services one at a time in reverse start order: callers go before the services
        they call (the edge flushes its usage log while the registry still runs)."""
        for service in reversed(self.services):
            if not service.process or service.process.poll() is not None:
                continue
            logger.info("stopping %s", service.name)
            service.process.terminate()
            try:
                service.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in %.0fs; killing it", service.name, STOP_TIMEOUT_S)
                service.process.kill()
                service.process.wait()


def admin_token(path: Path) -> str:
    """The local admin token: reused from a file only its owner can read, or created there."""
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    write_secret_file(path, token)
    return token


@dataclass(frozen=True)
class Topology:
    """Where each service listens, and where its callers reach it."""

    registries: list[str]
    generation: list[str]
    embedding: str
    retrieval: str
    edges: list[str]
    # What the callers dial for each service (Envoy's gRPC front when there is one; the
    # registry's own address when it runs alone).
    registry_front: str
    generation_front: str
    embedding_front: str
    retrieval_front: str


def listen(prefix: str, address: str) -> dict[str, str]:
    """The environment that makes a service listen on `address` (HOST:PORT)."""
    host, port = address.rsplit(":", 1)
    return {f"{prefix}_HOST": host, f"{prefix}_PORT": port}


def services_for(topology: Topology, edge_admin_token: str) -> list[list[Service]]:
    """The stack's services in start order; each group starts together."""
    generation = GenerationSettings()
    embedding = EmbeddingSettings()
    registry = topology.registry_front
    # Behind Envoy, replicas are numbered (generation-1, ...) even when there is one.
    replicas = topology.generation_front not in topology.generation

    # Every generation replica serves Prometheus metrics, which the edge reads for the
    # console's engine figures (a port set for one replica is kept).
    metrics_ports = [
        generation.metrics_port
        if generation.metrics_port and len(topology.generation) == 1
        else free_port()
        for _ in topology.generation
    ]
    metrics_urls = EdgeSettings().generation_metrics_urls or ",".join(
        f"http://{address.rsplit(':', 1)[0]}:{port}/metrics"
        for address, port in zip(topology.generation, metrics_ports, strict=True)
    )
    generations = [
        Service(
            f"generation-{i}" if replicas else "generation",
            python_module("services.generation"),
            {
                **listen("GENERATION", address),
                "GENERATION_REGISTRY_ADDR": registry,
                "GENERATION_PRELOAD_MODELS": generation.preload_models or DEFAULT_CHAT_MODEL,
                "GENERATION_METRICS_PORT": str(metrics_port),
            },
            grpc_ready(address),
            address=address,
        )
        for i, (address, metrics_port) in enumerate(
            zip(topology.generation, metrics_ports, strict=True), start=1
        )
    ]
    embedding_service = Service(
        "embedding",
        python_module("services.embedding"),
        {
            **listen("EMBEDDING", topology.embedding),
            "EMBEDDING_REGISTRY_ADDR": registry,
            "EMBEDDING_PRELOAD_MODELS": embedding.preload_models or DEFAULT_EMBEDDING_MODEL,
        },
        grpc_ready(topology.embedding),
        address=topology.embedding,
    )
    retrieval_service = Service(
        "retrieval",
        python_module("services.retrieval"),
        {
            **listen("RETRIEVAL", topology.retrieval),
            "RETRIEVAL_EMBEDDING_ADDR": topology.embedding_front,
        },
        grpc_ready(topology.retrieval),
        address=topology.retrieval,
    )
    edge_data = EdgeSettings().data_dir

    def outbox(i: int) -> dict[str, str]:
        # Replicas listen on ports picked at each start: name their outboxes by number, so a
        # restarted stack ships what the last one left.
        path = edge_data / f"usage-outbox-edge-{i}.db"
        return {"EDGE_USAGE_OUTBOX_PATH": str(path)} if replicas else {}

    edges = [
        Service(
            f"edge-{i}" if replicas else "edge",
            python_module("edge"),
            {
                **listen("EDGE", address),
                **outbox(i),
                "EDGE_REGISTRY_ADDR": registry,
                "EDGE_GENERATION_ADDR": topology.generation_front,
                "EDGE_EMBEDDING_ADDR": topology.embedding_front,
                "EDGE_RETRIEVAL_ADDR": topology.retrieval_front,
                "EDGE_ADMIN_TOKEN": edge_admin_token,
                "EDGE_GENERATION_METRICS_URLS": metrics_urls,
            },
            http_ready(f"http://{address}/health"),
            address=address,
        )
        for i, address in enumerate(topology.edges, start=1)
    ]
    return [[*generations, embedding_service], [retrieval_service], edges]


def registry_services(settings: RegistrySettings, replicas: int) -> list[Service]:
    """One registry on its configured address, or numbered replicas on free loopback ports."""
    if replicas == 1:
        addresses = {"registry": f"{settings.host}:{settings.port}"}
    else:
        addresses = {f"registry-{i}": f"127.0.0.1:{free_port()}" for i in range(1, replicas + 1)}
    return [
        Service(
            name,
            python_module("services.registry"),
            listen("REGISTRY", address),
            grpc_ready(address),
            REGISTRY_START_TIMEOUT_S,
            address=address,
        )
        for name, address in addresses.items()
    ]


def direct_topology(registry: str) -> Topology:
    generation = GenerationSettings()
    embedding = EmbeddingSettings()
    retrieval = RetrievalSettings()
    edge = EdgeSettings()
    generation_addr = f"{generation.host}:{generation.port}"
    embedding_addr = f"{embedding.host}:{embedding.port}"
    retrieval_addr = f"{retrieval.host}:{retrieval.port}"
    return Topology(
        registries=[registry],
        generation=[generation_addr],
        embedding=embedding_addr,
        retrieval=retrieval_addr,
        edges=[f"{edge.host}:{edge.port}"],
        registry_front=registry,
        generation_front=generation_addr,
        embedding_front=embedding_addr,
        retrieval_front=retrieval_addr,
    )


def envoy_topology(registries: list[str], launcher: LauncherSettings) -> Topology:
    """Replicas on free loopback ports; their callers go through Envoy's gRPC listener."""
    front = f"127.0.0.1:{launcher.envoy_grpc_port}"
    return Topology(
        registries=registries,
        generation=[f"127.0.0.1:{free_port()}" for _ in range(launcher.generation_replicas)],
        embedding=f"127.0.0.1:{free_port()}",
        retrieval=f"127.0.0.1:{free_port()}",
        edges=[f"127.0.0.1:{free_port()}" for _ in range(launcher.edge_replicas)],
        registry_front=front if len(registries) > 1 else registries[0],
        generation_front=front,
        embedding_front=front,
        retrieval_front=front,
    )


def envoy_service(topology: Topology, launcher: LauncherSettings, config_dir: Path) -> Service:
    edge = EdgeSettings()
    config = envoy.render_config(
        launcher.envoy_config,
        listen_host=edge.host,
        http_port=edge.port,
        grpc_port=launcher.envoy_grpc_port,
        admin_port=launcher.envoy_admin_port,
        upstreams={
            "registry": topology.registries,
            "generation": topology.generation,
            "embedding": [topology.embedding],
            "retrieval": [topology.retrieval],
            "edge": topology.edges,
        },
    )
    config_path = envoy.write_config(config, config_dir / "envoy.json")
    binary = envoy.find_envoy(launcher.envoy_binary)
    admin = f"http://127.0.0.1:{launcher.envoy_admin_port}/ready"
    return Service(
        "envoy",
        envoy.envoy_command(binary, config_path, launcher.envoy_log_level),
        {},
        http_ready(admin),
    )


def all_hosts_healthy(topology: Topology, admin_port: int) -> Callable[[], bool]:
    expected = {
        "registry": len(topology.registries),
        "generation": len(topology.generation),
        "embedding": 1,
        "retrieval": 1,
        "edge": len(topology.edges),
    }

    def check() -> bool:
        try:
            clusters = envoy.cluster_hosts(admin_port, 1.0)
        except OSError:
            return False
        return all(
            sum(host.healthy for host in clusters.get(name, [])) == count
            for name, count in expected.items()
        )

    return check


def main() -> None:
    setup_logging("INFO", "launcher")
    registry = RegistrySettings()
    launcher = LauncherSettings()
    edge = EdgeSettings()
    token_path = admin_token_path(registry.dev_key_path)
    edge_admin_token = (
        edge.admin_token.get_secret_value() if edge.admin_token else admin_token(token_path)
    )
    base = f"http://{edge.host}:{edge.port}"

    stack = Stack()
    # The services run in sessions of their own, so these signals reach only the launcher.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stack.stopping.set())
    with tempfile.TemporaryDirectory(prefix="llmserve-launcher-") as config_dir:
        try:
            first, *others = registry_services(registry, launcher.registry_replicas)
            # The first may import the default models (minutes); the others then find them.
            stack.start(first)
            if others:
                stack.start(*others)
            registries = [service.address for service in (first, *others)]
            front = None
            if launcher.behind_envoy:
                topology = envoy_topology(registries, launcher)
                # Envoy first, as in compose: callers reach the services through it.
                front = envoy_service(topology, launcher, Path(config_dir))
                stack.start(front)
            else:
                topology = direct_topology(registries[0])
            for group in services_for(topology, edge_admin_token):
                stack.start(*group)
            if front is not None:
                stack.wait_until(
                    front,
                    all_hosts_healthy(topology, launcher.envoy_admin_port),
                    "every replica is healthy in Envoy",
                )
                logger.info(
                    "gRPC at %s:%d through Envoy; Envoy admin at http://127.0.0.1:%d; "
                    "%d registry, %d generation and %d edge replicas",
                    edge.host,
                    launcher.envoy_grpc_port,
                    launcher.envoy_admin_port,
                    len(topology.registries),
                    len(topology.generation),
                    len(topology.edges),
                )
            if edge.auth_enabled:
                logger.info(
                    "development API key in %s (export OPENAI_API_KEY=$(cat %s))",
                    registry.dev_key_path,
                    registry.dev_key_path,
                )
            if not edge.admin_token:
                logger.info("admin token for %s/admin/v1 in %s", base, token_path)
            logger.info("console at %s/console/ (sign in with the admin token or a key)", base)
            logger.info("ready: OpenAI API at %s/v1 (Ctrl-C stops)", base)
            stack.supervise()
        except KeyboardInterrupt:
            pass
        except RuntimeError as error:
            logger.error("%s", error)
            sys.exit(1)
        except Exception:
            logger.exception("launcher failed")
            sys.exit(1)
        finally:
            # Whatever ends the launcher stops the services: nothing else would.
            stack.stop()


if __name__ == "__main__":
    main()
