"""The admin API as the gateway tests drive it: servings, keys and the usage log over HTTP."""

from __future__ import annotations

import time

import requests

from services.registry.defaults import DEFAULT_CHAT_MODEL


class Admin:
    def __init__(self, stack):
        self.base = f"{stack.base_url}/admin/v1"
        self.headers = stack.admin_headers

    def create_serving(self, **settings) -> dict:
        body = {"model": DEFAULT_CHAT_MODEL, **settings}
        response = requests.post(
            f"{self.base}/servings", json=body, headers=self.headers, timeout=10
        )
        assert response.status_code == 201, response.text
        return response.json()

    def issue_key(self, serving_id: int, **fields) -> dict:
        response = requests.post(
            f"{self.base}/servings/{serving_id}/keys", json=fields, headers=self.headers, timeout=10
        )
        assert response.status_code == 201, response.text
        return response.json()

    def revoke(self, key_id: str) -> None:
        response = requests.delete(f"{self.base}/keys/{key_id}", headers=self.headers, timeout=10)
        assert response.status_code == 200, response.text


def route(stack, serving_id: int) -> str:
    return f"{stack.base_url}/api/gateway/rep/serving/{serving_id}/v1"


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def wait_for_usage(admin: Admin, expected: int, **filters) -> dict:
    """Usage is written in the background; wait for it (and for a restarting registry)."""
    deadline = time.monotonic() + 30
    while True:
        response = requests.get(
            f"{admin.base}/usage", params=filters, headers=admin.headers, timeout=10
        )
        if response.status_code == 200 and response.json()["total_requests"] >= expected:
            return response.json()
        if time.monotonic() > deadline:
            assert response.status_code == 200, response.text
            return response.json()
        time.sleep(0.2)
