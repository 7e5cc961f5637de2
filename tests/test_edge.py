"""The edge app in-process (ASGI) against real registry and unreachable generation services."""

from __future__ import annotations

import httpx

from edge.app import build_app
from edge.settings import EdgeSettings
from services.registry.defaults import DEFAULT_CHAT_MODEL
from tests.conftest import free_port


async def test_generation_down_is_503_with_envelope(registry_server):
    settings = EdgeSettings(
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
