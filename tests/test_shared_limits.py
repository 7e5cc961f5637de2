"""Limits shared across edges through Redis: a real redis-server on a free port, real edge
processes in front of the suite's registry and generation servers."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import redis

from services.common.local import free_port
from services.registry.defaults import DEFAULT_CHAT_MODEL
from tests.edges import EdgeProcess, Serving, delete_serving, eventually, serving_with_key

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed (make setup)"
)

# Short, so a dead edge's permit expires soon; long enough for a busy machine's refreshes.
PERMIT_TTL_S = "3"
ONE_TOKEN = {
    "model": DEFAULT_CHAT_MODEL,
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "max_tokens": 1,
}


class RedisServer:
    """redis-server without persistence on a free port, in its own directory."""

    def __init__(self, directory: Path):
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def edges(tmp_path_factory, redis_server, registry_server, generation_server):
    """Two edges sharing the Redis, and a factory of more (stopped at the end)."""
    data = tmp_path_factory.mktemp("edges")
    started: list[EdgeProcess] = []

    async def start_edge(name: str) -> EdgeProcess:
        edge = EdgeProcess(
            data / f"{name}.log",
            registry_addr=registry_server,
            generation_addr=generation_server[0],
            data_dir=str(data / name),
            redis_url=redis_server.url,
            redis_permit_ttl_s=PERMIT_TTL_S,
            # Each request tries Redis again, so a test sees it return at once.
            redis_retry_s="0",
        )
        started.append(edge)
        return await edge.start()

    first, second = await asyncio.gather(start_edge("a"), start_edge("b"))
    yield first, second, start_edge
    for edge in started:
        await edge.stop()


@pytest.fixture
async def limited(edges):
    """Makes servings with limits (and keys), deleted after the test."""
    made: list[Serving] = []

    async def serving(**limits: int) -> Serving:
        made.append(await serving_with_key(edges[0], **limits))
        return made[-1]

    yield serving
    for serving in made:
        await delete_serving(edges[0], serving)


async def post(edge: EdgeProcess, serving: Serving, body: dict) -> httpx.Response:
    async with httpx.AsyncClient(base_url=edge.url, headers=serving.headers) as client:
        return await client.post(serving.path, json=body, timeout=60)


async def test_twice_the_rpm_across_two_edges_admits_exactly_the_limit(edges, limited):
    first, second, _ = edges
    serving = await limited(requests_per_minute=6)
    # 12 requests at once, half to each edge: the Lua script admits atomically, so the
    # tolerance is zero (without Redis each edge would admit 6, 12 in all).
    responses = await asyncio.gather(
        *(post(edge, serving, ONE_TOKEN) for edge in [first, second] * 6)
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 6 + [429] * 6
    refused = next(r for r in responses if r.status_code == 429)
    assert "6 requests per minute" in refused.json()["error"]["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60


async def test_tokens_spent_through_one_edge_count_at_the_other(edges, limited):
    first, second, _ = edges
    serving = await limited(tokens_per_minute=10)
    # The prompt alone is over 10 tokens: the first request spends the minute's budget.
    assert (await post(first, serving, ONE_TOKEN)).status_code == 200
    refused = await post(second, serving, ONE_TOKEN)
    assert refused.status_code == 429
    assert "10 tokens per minute" in refused.json()["error"]["message"]


async def test_a_killed_edge_frees_its_concurrency_permit_after_the_ttl(
    edges, limited, redis_server
):
    first, _, start_edge = edges
    doomed = await start_edge("doomed")
    serving = await limited(max_concurrent_requests=1)
    long_stream = {**ONE_TOKEN, "max_tokens": 2000, "ignore_eos": True, "stream": True}
    async with httpx.AsyncClient(base_url=doomed.url, headers=serving.headers) as client:
        async with client.stream("POST", serving.path, json=long_stream, timeout=60) as held:
            assert held.status_code == 200
            lines = held.aiter_lines()
            await anext(lines)
            # The other edge sees the permit the doomed one holds.
            other = await post(first, serving, ONE_TOKEN)
            permits = redis.Redis(port=redis_server.port)
            (key,) = permits.keys("llmserve:limits:*:permits")
            assert other.status_code == 429, (await anext(lines), permits.zrange(key, 0, -1))
            # The holder keeps pushing its permit's expiry back while the stream runs.
            (_, expiry), *_ = permits.zrange(key, 0, 0, withscores=True)

            async def refreshed() -> bool:
                return permits.zrange(key, 0, 0, withscores=True)[0][1] > expiry

            await eventually(refreshed, "the permit's expiry was pushed back")
            doomed.kill()

    # Nothing released it: its entry expires one TTL after the last refresh.
    async def admitted() -> bool:
        return (await post(first, serving, ONE_TOKEN)).status_code == 200

    await eventually(admitted, "the dead edge's permit expired")


async def test_redis_down_fails_open_to_limits_counted_in_each_edge(edges, limited, redis_server):
    first, _, _ = edges
    serving = await limited(requests_per_minute=1)
    redis_server.stop()
    try:
        # Admitted, counted in this edge: its own count then refuses the second request.
        assert (await post(first, serving, ONE_TOKEN)).status_code == 200
        assert (await post(first, serving, ONE_TOKEN)).status_code == 429
        assert "Redis unreachable" in first.log()
    finally:
        redis_server.start()
    # Back on Redis (a fresh, empty one): the shared count admits it again.
    assert (await post(first, serving, ONE_TOKEN)).status_code == 200
