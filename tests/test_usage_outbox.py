"""The edge's on-disk usage outbox: a kill -9 under load loses no record of a finished
request, and the restarted edge ships them (real edge processes, the suite's registry)."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from edge.outbox import OutboxInUse, UsageOutbox
from services.common.records import UsageQuery
from services.common.registry_client import RegistryClient
from services.registry.defaults import DEFAULT_CHAT_MODEL
from tests.edges import EdgeProcess, eventually, serving_with_key

ONE_TOKEN = {
    "model": DEFAULT_CHAT_MODEL,
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "max_tokens": 1,
}


async def test_kill_9_under_load_loses_no_finished_request_and_a_restart_ships_them(
    tmp_path, registry_server, generation_server
):
    settings = {
        "registry_addr": registry_server,
        "generation_addr": generation_server[0],
        "usage_outbox_path": str(tmp_path / "outbox.db"),
    }
    # Shipping held back (an hour's interval, a batch never filled): at the kill, every
    # finished request's record is in the outbox and nowhere else.
    edge = EdgeProcess(
        tmp_path / "edge.log", usage_flush_interval_s="3600", usage_batch_size="1000000", **settings
    )
    await edge.start()
    serving = await serving_with_key(edge)
    user = f"outbox-{uuid.uuid4().hex[:8]}"
    headers = {**serving.headers, "x-genos-user-id": user}
    finished: list[str] = []

    async def client() -> None:
        async with httpx.AsyncClient(base_url=edge.url, headers=headers) as http:
            while True:
                try:
                    response = await http.post(serving.path, json=ONE_TOKEN, timeout=60)
                except httpx.TransportError:
                    return  # the edge died under this request
                assert response.status_code == 200, response.text
                finished.append(response.json()["id"])

    clients = [asyncio.create_task(client()) for _ in range(4)]

    async def some_finished() -> bool:
        return len(finished) >= 8

    await eventually(some_finished, "requests answered")
    edge.kill()
    await asyncio.gather(*clients)

    registry = RegistryClient(registry_server)
    query = UsageQuery(user_id=user, limit=1000)
    assert (await registry.query_usage(query)).total_requests == 0
    restarted = EdgeProcess(tmp_path / "restarted.log", **settings)
    await restarted.start()
    try:

        async def all_shipped() -> bool:
            return (await registry.query_usage(query)).total_requests >= len(finished)

        await eventually(all_shipped, "the restarted edge shipped the outbox")
        shipped = await registry.query_usage(query)
        assert {record.request_id for record in shipped.records} >= set(finished)
        assert "shipping" in restarted.log() and "left in the outbox" in restarted.log()
    finally:
        await restarted.stop()
        await registry.close()


def test_two_edges_cannot_share_one_outbox(tmp_path):
    first = UsageOutbox(tmp_path / "outbox.db")
    with pytest.raises(OutboxInUse, match="EDGE_USAGE_OUTBOX_PATH"):
        UsageOutbox(tmp_path / "outbox.db")
    first.close()
    # Once its holder is gone, the file opens again (a restarted edge).
    UsageOutbox(tmp_path / "outbox.db").close()
