"""Real edge processes (python -m edge) in front of the suite's in-process services: on a free
port, awaited until healthy, then stopped, killed or restarted as a test needs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from services.common.local import free_port
from services.registry.defaults import DEFAULT_CHAT_MODEL

REPO = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "test-admin-token"
START_TIMEOUT_S = 60.0


class EdgeProcess:
    def __init__(self, log_path: Path, **settings: str):
        """`settings` are EDGE_* variables without the prefix (registry_addr="...")."""
        self.port = free_port()
        self.log_path = log_path
        self.env = {
            **os.environ,
            "EDGE_PORT": str(self.port),
            "EDGE_ADMIN_TOKEN": ADMIN_TOKEN,
            **{f"EDGE_{name.upper()}": value for name, value in settings.items()},
        }
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def start(self) -> EdgeProcess:
        with self.log_path.open("a") as log:
            # Popen returns at once; the wait for health below does not block the loop.
            self.process = subprocess.Popen(  # noqa: ASYNC220
                [sys.executable, "-m", "edge"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        async with httpx.AsyncClient() as client:
            while True:
                assert self.process.poll() is None, f"edge exited:\n{self.log()}"
                assert time.monotonic() < deadline, f"edge not healthy:\n{self.log()}"
                try:
                    if (await client.get(f"{self.url}/health", timeout=1)).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    async def stop(self) -> None:
        """SIGTERM, then waits without blocking the loop (the edge flushes usage to the
        suite's in-process registry, which runs on it)."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

            async def exited() -> bool:
                return self.process.poll() is not None

            await eventually(exited, "edge stopped after SIGTERM")


async def eventually(condition, what: str, timeout_s: float = 30.0) -> None:
    """Waits for an async `condition` to hold, failing after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, f"not within {timeout_s:.0f}s: {what}"
        await asyncio.sleep(0.05)


@dataclass(frozen=True)
class Serving:
    id: int
    # Its chat completions route.
    path: str
    # Authorization of a key for it.
    headers: dict[str, str]


def _admin(edge: EdgeProcess) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"{edge.url}/admin/v1", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )


async def serving_with_key(edge: EdgeProcess, **limits: int) -> Serving:
    """Creates a serving of the default chat model with `limits`, and a key for it, through
    the edge's admin API."""
    async with _admin(edge) as admin:
        body = {"model": DEFAULT_CHAT_MODEL, "limits": limits}
        serving = await admin.post("/servings", json=body, timeout=10)
        assert serving.status_code == 201, serving.text
        serving_id = serving.json()["id"]
        key = await admin.post(f"/servings/{serving_id}/keys", json={}, timeout=10)
        assert key.status_code == 201, key.text
    return Serving(
        serving_id,
        f"/api/gateway/rep/serving/{serving_id}/v1/chat/completions",
        {"Authorization": f"Bearer {key.json()['secret']}"},
    )


async def delete_serving(edge: EdgeProcess, serving: Serving) -> None:
    """Limited servings must not outlive their tests: without a key, a chat is accounted to
    the model's first serving, whose limits then apply to tests that follow."""
    async with _admin(edge) as admin:
        response = await admin.delete(f"/servings/{serving.id}", timeout=10)
        assert response.status_code == 200, response.text
