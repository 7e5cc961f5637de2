"""Starts the whole stack locally as separate processes: python -m services.launcher (make run).

Registry first (it imports the default model on first start), then generation, then the edge;
each must be healthy before the next starts. Ctrl-C or SIGTERM stops them in reverse order.
Ports come from the services' own settings: REGISTRY_PORT, GENERATION_PORT, EDGE_PORT.

With GENERATION_REPLICAS or EDGE_REPLICAS above 1 (or ENVOY_ENABLED=true) it starts the
topology of docker-compose.yml instead: Envoy takes EDGE_PORT (OpenAI API) and
ENVOY_GRPC_PORT (internal gRPC), the replicas listen on free loopback ports behind it, the
edge reaches generation through Envoy, and a replica that dies is restarted while the
others keep serving.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge.settings import EdgeSettings
from services.common.healthcheck import grpc_serving, http_ok
from services.common.logs import setup_logging
from services.generation.settings import GenerationSettings
from services.launcher import envoy
from services.launcher.settings import LauncherSettings
from services.registry.defaults import DEFAULT_CHAT_MODEL
from services.registry.settings import RegistrySettings

logger = logging.getLogger("launcher")

# First start exports the default model (about two minutes here); later starts take seconds.
REGISTRY_START_TIMEOUT_S = 1800.0
SERVICE_START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 20.0
# A replica that dies is restarted after this delay, doubled while it keeps dying young.
RESTART_DELAY_S = 1.0
RESTART_DELAY_MAX_S = 30.0
YOUNG_S = 30.0


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    # Replicas are restarted when they die; anything else dying stops the stack.
    restart: bool = False
    # Where it listens, for the log (replicas only).
    address: str = ""
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restart_delay_s: float = RESTART_DELAY_S
    restart_at: float | None = field(default=None)


class Stack:
    def __init__(self) -> None:
        self.children: list[Child] = []
        self.stopping = threading.Event()

    def start(
        self, name: str, module: str, env: dict[str, str], restart: bool = False, address: str = ""
    ) -> Child:
        return self.spawn(Child(name, [sys.executable, "-m", module], env, restart, address))

    def spawn(self, child: Child) -> Child:
        logger.info("starting %s", child.name)
        child.process = subprocess.Popen(child.argv, env={**os.environ, **child.env})
        child.started_at = time.monotonic()
        child.restart_at = None
        if child not in self.children:
            self.children.append(child)
        where = f" on {child.address}" if child.address else ""
        logger.info("started %s (pid %d)%s", child.name, child.process.pid, where)
        return child

    def wait_until(self, child: Child, ready, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if child.process.poll() is not None:
                raise RuntimeError(
                    f"{child.name} exited with status {child.process.returncode} while starting"
                )
            if self.stopping.is_set():
                raise KeyboardInterrupt
            if time.monotonic() > deadline:
                raise RuntimeError(f"{child.name} did not become healthy within {timeout_s:.0f}s")
            self.stopping.wait(0.25)
        logger.info("%s is healthy", child.name)

    def supervise(self) -> None:
        """Runs until a signal arrives or a child that is not a replica dies."""
        while not self.stopping.wait(1.0):
            now = time.monotonic()
            for child in self.children:
                if child.process.poll() is None:
                    continue
                if not child.restart:
                    logger.error("%s exited with status %d", child.name, child.process.returncode)
                    self.stopping.set()
                    return
                if child.restart_at is None:
                    young = now - child.started_at < YOUNG_S
                    child.restart_delay_s = (
                        min(child.restart_delay_s * 2, RESTART_DELAY_MAX_S)
                        if young
                        else RESTART_DELAY_S
                    )
                    child.restart_at = now + child.restart_delay_s
                    logger.warning(
                        "%s exited with status %d; restarting in %.0fs",
                        child.name,
                        child.process.returncode,
                        child.restart_delay_s,
                    )
                elif now >= child.restart_at:
                    self.spawn(child)

    def stop(self) -> None:
        for child in reversed(self.children):
            if child.process.poll() is None:
                logger.info("stopping %s", child.name)
                child.process.terminate()
        for child in reversed(self.children):
            try:
                child.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in %.0fs; killing it", child.name, STOP_TIMEOUT_S)
                child.process.kill()
                child.process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_direct(stack: Stack, registry_addr: str) -> str:
    """One generation service and one edge, the edge talking to generation directly."""
    generation = GenerationSettings()
    edge = EdgeSettings()
    generation_addr = f"{generation.host}:{generation.port}"
    child = stack.start(
        "generation",
        "services.generation",
        {
            "GENERATION_REGISTRY_ADDR": registry_addr,
            "GENERATION_PRELOAD_MODELS": generation.preload_models or DEFAULT_CHAT_MODEL,
        },
    )
    stack.wait_until(
        child, lambda: grpc_serving(generation_addr, timeout_s=1.0), SERVICE_START_TIMEOUT_S
    )
    child = stack.start(
        "edge",
        "edge",
        {"EDGE_REGISTRY_ADDR": registry_addr, "EDGE_GENERATION_ADDR": generation_addr},
    )
    base = f"http://{edge.host}:{edge.port}"
    stack.wait_until(child, lambda: http_ok(f"{base}/health", 1.0), SERVICE_START_TIMEOUT_S)
    return f"OpenAI API at {base}/v1"


def start_behind_envoy(
    stack: Stack, registry_addr: str, launcher: LauncherSettings, config_dir: Path
) -> str:
    """N generation and M edge replicas on free loopback ports, Envoy in front of them."""
    generation = GenerationSettings()
    edge = EdgeSettings()
    grpc_front = f"127.0.0.1:{launcher.envoy_grpc_port}"
    generation_addrs = [f"127.0.0.1:{free_port()}" for _ in range(launcher.generation_replicas)]
    edge_addrs = [f"127.0.0.1:{free_port()}" for _ in range(launcher.edge_replicas)]

    config = envoy.render_config(
        launcher.envoy_config,
        listen_host=edge.host,
        http_port=edge.port,
        grpc_port=launcher.envoy_grpc_port,
        admin_port=launcher.envoy_admin_port,
        upstreams={
            "registry": [registry_addr],
            "generation": generation_addrs,
            "edge": edge_addrs,
        },
    )
    config_path = envoy.write_config(config, config_dir / "envoy.json")
    binary = envoy.find_envoy(launcher.envoy_binary)
    # Envoy first, as in compose: callers reach the services through it as they come up.
    front = stack.spawn(
        Child("envoy", envoy.envoy_command(binary, config_path, launcher.envoy_log_level), {})
    )

    replicas = []
    for index, address in enumerate(generation_addrs, start=1):
        replicas.append(
            stack.start(
                f"generation-{index}",
                "services.generation",
                {
                    "GENERATION_HOST": "127.0.0.1",
                    "GENERATION_PORT": address.rsplit(":", 1)[1],
                    "GENERATION_REGISTRY_ADDR": registry_addr,
                    "GENERATION_PRELOAD_MODELS": generation.preload_models or DEFAULT_CHAT_MODEL,
                },
                restart=True,
                address=address,
            )
        )
    for child in replicas:
        stack.wait_until(
            child, lambda a=child.address: grpc_serving(a, timeout_s=1.0), SERVICE_START_TIMEOUT_S
        )
    for index, address in enumerate(edge_addrs, start=1):
        child = stack.start(
            f"edge-{index}",
            "edge",
            {
                "EDGE_HOST": "127.0.0.1",
                "EDGE_PORT": address.rsplit(":", 1)[1],
                "EDGE_REGISTRY_ADDR": registry_addr,
                "EDGE_GENERATION_ADDR": grpc_front,
            },
            restart=True,
            address=address,
        )
        stack.wait_until(
            child, lambda a=address: http_ok(f"http://{a}/health", 1.0), SERVICE_START_TIMEOUT_S
        )

    expected = {"registry": 1, "generation": len(generation_addrs), "edge": len(edge_addrs)}

    def all_hosts_healthy() -> bool:
        try:
            clusters = envoy.cluster_hosts(launcher.envoy_admin_port, 1.0)
        except OSError:
            return False
        return all(
            sum(host.healthy for host in clusters.get(name, [])) == count
            for name, count in expected.items()
        )

    stack.wait_until(front, all_hosts_healthy, SERVICE_START_TIMEOUT_S)
    base = f"http://{edge.host}:{edge.port}"
    stack.wait_until(front, lambda: http_ok(f"{base}/health", 1.0), SERVICE_START_TIMEOUT_S)
    return (
        f"OpenAI API at {base}/v1 through Envoy; gRPC at {edge.host}:{launcher.envoy_grpc_port}; "
        f"Envoy admin at http://127.0.0.1:{launcher.envoy_admin_port}; "
        f"{len(generation_addrs)} generation and {len(edge_addrs)} edge replicas"
    )


def main() -> None:
    setup_logging("INFO", "launcher")
    registry = RegistrySettings()
    launcher = LauncherSettings()
    registry_addr = f"{registry.host}:{registry.port}"

    stack = Stack()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stack.stopping.set())
    with tempfile.TemporaryDirectory(prefix="llmserve-launcher-") as config_dir:
        try:
            child = stack.start("registry", "services.registry", {})
            stack.wait_until(
                child, lambda: grpc_serving(registry_addr, timeout_s=1.0), REGISTRY_START_TIMEOUT_S
            )
            if launcher.behind_envoy:
                ready = start_behind_envoy(stack, registry_addr, launcher, Path(config_dir))
            else:
                ready = start_direct(stack, registry_addr)
            logger.info("ready: %s (Ctrl-C stops)", ready)
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
