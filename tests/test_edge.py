"""The edge app in-process (ASGI) against real registry and unreachable generation services."""

from __future__ import annotations

import uuid

import httpx

from edge.app import build_app
from edge.settings import EdgeSettings
from services.common.local import free_port
from services.common.records import UsageRecord, UsageStatus
from services.common.registry_client import RegistryClient
from services.registry.defaults import DEFAULT_CHAT_MODEL


async def test_generation_down_is_503_with_envelope(registry_server, tmp_path):
    settings = EdgeSettings(
        data_dir=tmp_path,
        registry_addr=registry_server,
        generation_addr=f"127.0.0.1:{free_port()}",
        auth_enabled=False,
    )
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            response = await client.post(
                "/v1/chat/completions",
                json={"model": DEFAULT_CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]},
            )
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["type"] == "service_unavailable_error"
    assert "unavailable" in error["message"]


async def test_admin_usage_filters_by_route_and_totals_per_route(registry_server, tmp_path):
    registry = RegistryClient(registry_server)
    # The session's registry is shared: a user id of this test's own keeps its records apart.
    user = f"routes-{uuid.uuid4().hex}"
    await registry.record_usage(
        [
            UsageRecord(
                request_id=f"{user}-{n}",
                created_at_unix_ms=1_000 + n,
                serving_id=0,
                model=DEFAULT_CHAT_MODEL,
                api_key_id="",
                user_id=user,
                prompt_tokens=10,
                completion_tokens=completion_tokens,
                latency_ms=50,
                ttft_ms=0,
                status=UsageStatus.OK,
                blocked=False,
                endpoint=endpoint,
            )
            for n, (endpoint, completion_tokens) in enumerate(
                [("/v1/chat/completions", 4), ("/v1/chat/completions", 6), ("/v1/embeddings", 0)]
            )
        ]
    )
    await registry.close()
    settings = EdgeSettings(
        data_dir=tmp_path,
        registry_addr=registry_server,
        generation_addr=f"127.0.0.1:{free_port()}",
        admin_token="test-admin-token",
    )
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://edge",
            headers={"Authorization": "Bearer test-admin-token"},
        ) as client:
            everything = await client.get("/admin/v1/usage", params={"user_id": user, "limit": 1})
            embeddings = await client.get(
                "/admin/v1/usage", params={"user_id": user, "route": "/v1/embeddings"}
            )

    assert everything.status_code == 200, everything.text
    body = everything.json()
    # Totals per route cover every match, not just the one record returned.
    assert [r["request_id"] for r in body["data"]] == [f"{user}-2"]
    assert body["by_route"] == [
        {
            "route": "/v1/chat/completions",
            "requests": 2,
            "prompt_tokens": 20,
            "completion_tokens": 10,
        },
        {"route": "/v1/embeddings", "requests": 1, "prompt_tokens": 10, "completion_tokens": 0},
    ]
    assert (body["total_requests"], body["total_prompt_tokens"]) == (3, 30)
    assert body["total_completion_tokens"] == 10
    body = embeddings.json()
    assert [r["endpoint"] for r in body["data"]] == ["/v1/embeddings"]
    assert [r["route"] for r in body["by_route"]] == ["/v1/embeddings"]
    assert body["total_requests"] == 1
