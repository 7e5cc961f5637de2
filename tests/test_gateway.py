"""The enterprise gateway and MaaS features on the whole stack: servings, keys, usage,
limits, body size, moderation and roles."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import uuid

import openai
import pytest
import requests

from services.registry.defaults import DEFAULT_CHAT_MODEL
from tests.gateway import Admin, bearer, route, wait_for_usage

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


def test_seed_client_code_on_a_serving_route_leaves_usage_records(stack, admin):
    serving = admin.create_serving(name="seed")
    key = admin.issue_key(serving["id"], name="seed-client")
    assert key["secret"].startswith("sk-")
    base = route(stack, serving["id"])
    headers = {**bearer(key["secret"]), "x-genos-user-id": "alice"}

    # The seeds' requests example: find the model id, then chat with it.
    models = requests.get(f"{base}/models", headers=headers, timeout=10).json()
    model_id = models["data"][0]["id"]
    assert [m["id"] for m in models["data"] if m["kind"] == "chat"] == [DEFAULT_CHAT_MODEL]
    body = {"model": model_id, "messages": CAPITAL, "temperature": 0}
    answer = requests.post(f"{base}/chat/completions", json=body, headers=headers, timeout=60)
    assert answer.status_code == 200
    assert "Paris" in answer.json()["choices"][0]["message"]["content"]
    with requests.post(
        f"{base}/chat/completions",
        json={**body, "stream": True},
        headers=headers,
        stream=True,
        timeout=60,
    ) as streamed:
        lines = [line for line in streamed.iter_lines(decode_unicode=True) if line]
    assert lines[-1] == "data: [DONE]"

    usage = wait_for_usage(admin, 2, serving_id=serving["id"], user_id="alice")
    assert usage["total_requests"] == 2
    records = usage["data"]
    assert {r["api_key_id"] for r in records} == {key["id"]}
    assert all(r["status"] == "ok" and r["model"] == DEFAULT_CHAT_MODEL for r in records)
    assert all(r["prompt_tokens"] > 0 and r["completion_tokens"] > 0 for r in records)
    assert usage["total_completion_tokens"] == sum(r["completion_tokens"] for r in records)
    assert usage["by_route"] == [
        {
            "route": "/v1/chat/completions",
            "requests": 2,
            "prompt_tokens": usage["total_prompt_tokens"],
            "completion_tokens": usage["total_completion_tokens"],
        }
    ]
    assert any(r["ttft_ms"] > 0 for r in records)
    assert not any(r["blocked"] for r in records)
    # Keys never show up in the logs.
    assert key["secret"] not in stack.log()


def test_serving_route_answers_with_its_own_model(stack, admin):
    serving = admin.create_serving(name="fixed-model")
    key = admin.issue_key(serving["id"])
    client = openai.OpenAI(base_url=route(stack, serving["id"]), api_key=key["secret"])
    completion = client.chat.completions.create(model="gpt-4o", messages=CAPITAL, max_tokens=3)
    assert completion.model == DEFAULT_CHAT_MODEL
    # Plain /v1 routes keep 404 for a model that does not exist.
    plain = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key["secret"])
    with pytest.raises(openai.NotFoundError):
        plain.chat.completions.create(model="gpt-4o", messages=CAPITAL)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer"}, bearer("sk-llms-wrong")],
)
@pytest.mark.parametrize("path", ["/v1/models", "/v1/chat/completions"])
def test_missing_or_bad_keys_are_401(stack, headers, path):
    response = requests.post(f"{stack.base_url}{path}", json={}, headers=headers, timeout=10)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "authentication_error"
    assert error["code"] in ("missing_api_key", "invalid_api_key")


def test_key_of_another_serving_is_403_and_unknown_serving_404_for_the_admin(stack, admin):
    first = admin.create_serving(name="first")
    second = admin.create_serving(name="second")
    key = admin.issue_key(first["id"])
    response = requests.post(
        f"{route(stack, second['id'])}/chat/completions",
        json={"model": DEFAULT_CHAT_MODEL, "messages": CAPITAL},
        headers=bearer(key["secret"]),
        timeout=10,
    )
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_error"
    # A key learns nothing about servings that are not its own, not even whether they exist.
    missing = requests.get(
        f"{route(stack, 999999)}/models", headers=bearer(key["secret"]), timeout=10
    )
    assert missing.status_code == 403
    missing = requests.get(f"{route(stack, 999999)}/models", headers=admin.headers, timeout=10)
    assert missing.status_code == 404


def test_revocation_and_expiry(stack, admin):
    serving = admin.create_serving(name="revoked")
    key = admin.issue_key(serving["id"])
    models = f"{route(stack, serving['id'])}/models"
    assert requests.get(models, headers=bearer(key["secret"]), timeout=10).status_code == 200
    admin.revoke(key["id"])
    # The edge trusts a verified key for EDGE_KEY_CACHE_TTL_S (1 s in this stack).
    time.sleep(1.2)
    assert requests.get(models, headers=bearer(key["secret"]), timeout=10).status_code == 401

    expired = admin.issue_key(serving["id"], expires_at=int(time.time()) - 1)
    assert requests.get(models, headers=bearer(expired["secret"]), timeout=10).status_code == 401

    listed = requests.get(
        f"{admin.base}/servings/{serving['id']}/keys", headers=admin.headers, timeout=10
    ).json()["data"]
    assert {k["id"] for k in listed} == {key["id"], expired["id"]}
    assert all("secret" not in k for k in listed)
    assert next(k for k in listed if k["id"] == key["id"])["revoked_at"]


def test_admin_api_requires_the_admin_token(stack):
    assert requests.get(f"{stack.base_url}/admin/v1/servings", timeout=10).status_code == 401
    wrong = requests.get(f"{stack.base_url}/admin/v1/servings", headers=stack.headers, timeout=10)
    assert wrong.status_code == 401


def test_requests_per_minute_per_key_gives_429_with_retry_after(stack, admin):
    serving = admin.create_serving(name="limited", limits={"key_requests_per_minute": 2})
    key = admin.issue_key(serving["id"])
    url = f"{route(stack, serving['id'])}/chat/completions"
    body = {"model": DEFAULT_CHAT_MODEL, "messages": CAPITAL, "max_tokens": 1}
    statuses = [
        requests.post(url, json=body, headers=bearer(key["secret"]), timeout=30) for _ in range(3)
    ]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert int(statuses[2].headers["Retry-After"]) >= 1
    assert statuses[2].json()["error"]["type"] == "rate_limit_error"
    # Another key of the same serving has its own budget.
    other = admin.issue_key(serving["id"])
    assert requests.post(url, json=body, headers=bearer(other["secret"]), timeout=30).ok


def test_concurrent_requests_per_serving_gives_429(stack, admin):
    serving = admin.create_serving(name="one-at-a-time", limits={"max_concurrent_requests": 1})
    key = admin.issue_key(serving["id"])
    url = f"{route(stack, serving['id'])}/chat/completions"
    body = {
        "model": DEFAULT_CHAT_MODEL,
        "messages": [{"role": "user", "content": "Write a long essay about the sea."}],
        "max_tokens": 200,
        "stream": True,
    }
    with requests.post(
        url, json=body, headers=bearer(key["secret"]), stream=True, timeout=60
    ) as first:
        # Keep the iterator: dropping it closes the connection, which cancels the stream.
        lines = first.iter_lines()
        next(lines)
        second = requests.post(url, json=body, headers=bearer(key["secret"]), timeout=30)
        assert second.status_code == 429
    # Once the first stream is gone, its slot is free again.
    time.sleep(0.5)
    third = requests.post(
        url,
        json={**body, "stream": False, "max_tokens": 1},
        headers=bearer(key["secret"]),
        timeout=30,
    )
    assert third.status_code == 200


def test_tokens_per_minute_per_serving_gives_429(stack, admin):
    serving = admin.create_serving(name="token-budget", limits={"tokens_per_minute": 10})
    key = admin.issue_key(serving["id"])
    url = f"{route(stack, serving['id'])}/chat/completions"
    body = {"model": DEFAULT_CHAT_MODEL, "messages": CAPITAL, "max_tokens": 2}
    assert requests.post(url, json=body, headers=bearer(key["secret"]), timeout=30).ok
    limited = requests.post(url, json=body, headers=bearer(key["secret"]), timeout=30)
    assert limited.status_code == 429
    assert "tokens per minute" in limited.json()["error"]["message"]


def test_body_over_the_limit_is_413(stack):
    big = "x" * (9 * 1024 * 1024)
    response = requests.post(
        f"{stack.base_url}/v1/chat/completions",
        data=json.dumps(
            {"model": DEFAULT_CHAT_MODEL, "messages": [{"role": "user", "content": big}]}
        ),
        headers={**stack.headers, "content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    # Uploads have their own, larger limit: this one reaches the retrieval service.
    upload = stack.http.post(
        f"{stack.base_url}/v1/files",
        files={"file": ("big.txt", b"word " * (2 * 1024 * 1024))},
        data={"purpose": "assistants"},
        timeout=60,
    )
    assert upload.status_code == 200, upload.text
    too_big = stack.http.post(
        f"{stack.base_url}/v1/files",
        files={"file": ("huge.txt", b"x" * (34 * 1024 * 1024))},
        timeout=60,
    )
    assert too_big.status_code == 413


def moderated(admin: Admin, action: str, terms: list[str]) -> tuple[dict, dict]:
    serving = admin.create_serving(
        name=f"moderated-{action}",
        moderation={"enabled": True, "blocked_terms": terms, "action": action},
    )
    return serving, admin.issue_key(serving["id"])


def test_output_moderation_cuts_non_stream_and_stops_stream(stack, admin):
    serving, key = moderated(admin, "cut", ["Paris"])
    client = openai.OpenAI(base_url=route(stack, serving["id"]), api_key=key["secret"])
    completion = client.chat.completions.create(model="x", messages=CAPITAL, temperature=0)
    body = completion.model_dump()
    assert body["blocked"] is True
    content = completion.choices[0].message.content
    assert "Paris" not in content and content.startswith("The capital of France")
    assert completion.choices[0].finish_reason == "content_filter"

    chunks = list(
        client.chat.completions.create(model="x", messages=CAPITAL, temperature=0, stream=True)
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" not in streamed and "capital" in streamed
    assert chunks[-1].model_dump().get("blocked") is True
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert not any(c.model_dump().get("blocked") for c in chunks[:-1])

    usage = wait_for_usage(admin, 2, serving_id=serving["id"])
    assert [r["blocked"] for r in usage["data"]] == [True, True]


def test_output_moderation_withhold_returns_no_text(stack, admin):
    serving, key = moderated(admin, "withhold", ["paris"])
    client = openai.OpenAI(base_url=route(stack, serving["id"]), api_key=key["secret"])
    completion = client.chat.completions.create(model="x", messages=CAPITAL, temperature=0)
    assert completion.model_dump()["blocked"] is True
    assert completion.choices[0].message.content == ""


def test_input_moderation_blocks_before_generation(stack, admin):
    serving, key = moderated(admin, "cut", ["forbidden topic"])
    client = openai.OpenAI(base_url=route(stack, serving["id"]), api_key=key["secret"])
    messages = [{"role": "user", "content": "Tell me about the Forbidden Topic, please."}]
    completion = client.chat.completions.create(model="x", messages=messages)
    assert completion.model_dump()["blocked"] is True
    assert completion.usage.completion_tokens == 0
    chunks = list(client.chat.completions.create(model="x", messages=messages, stream=True))
    assert chunks[-1].model_dump()["blocked"] is True
    # Not flagged: no `blocked` field at all.
    clean = client.chat.completions.create(model="x", messages=CAPITAL, max_tokens=2)
    assert "blocked" not in clean.model_dump() or clean.model_dump()["blocked"] is None


def test_all_openai_roles_render_and_unknown_role_is_named(stack):
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.api_key)
    messages = [
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "Let me check."},
        {"role": "tool", "content": "4", "tool_call_id": "call_1"},
        {"role": "function", "content": "4", "name": "add"},
    ]
    completion = client.chat.completions.create(
        model=DEFAULT_CHAT_MODEL, messages=messages, max_tokens=4
    )
    assert completion.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model=DEFAULT_CHAT_MODEL, messages=[{"role": "narrator", "content": "x"}]
        )
    assert "narrator" in bad.value.message


def test_usage_survives_kill_9_of_the_registry_under_load(stack, admin):
    user = f"load-{uuid.uuid4().hex[:8]}"
    url = f"{stack.base_url}/v1/chat/completions"
    body = {"model": DEFAULT_CHAT_MODEL, "messages": CAPITAL, "max_tokens": 4}
    headers = {**stack.headers, "x-genos-user-id": user}
    statuses, successes = [], []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            response = requests.post(url, json=body, headers=headers, timeout=60)
            statuses.append(response.status_code)
            if response.status_code == 200:
                successes.append(response.json()["id"])

    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
    # The load runs from before the kill until after the restarted registry is healthy, so
    # requests finish while it is down however fast the engine answers.
    wait_for(lambda: len(successes) >= 3, "first requests answered")
    registry_pid = int(re.findall(r"started registry \(pid (\d+)\)", stack.log())[-1])
    healthy_before = stack.log().count("registry is healthy")
    os.kill(registry_pid, signal.SIGKILL)
    wait_for(lambda: stack.log().count("registry is healthy") > healthy_before, "registry back")
    answered_after_restart = len(successes)
    wait_for(lambda: len(successes) >= answered_after_restart + 3, "requests after the restart")
    stop.set()
    for thread in threads:
        thread.join()
    # Verified keys and the catalog outlive a registry outage, so every request succeeded.
    assert set(statuses) == {200}
    # The edge kept what it could not deliver and delivered it to the restarted registry.
    usage = wait_for_usage(admin, len(successes), user_id=user, limit=1000)
    assert {r["request_id"] for r in usage["data"]} >= set(successes)
    assert "usage write failed" in stack.log()
    assert stack.log().count("started registry (pid") >= 2


def wait_for(condition, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s:.0f}s: {what}"
        time.sleep(0.05)


def test_edge_metrics_need_a_key_and_count_requests(stack):
    assert requests.get(f"{stack.base_url}/metrics", timeout=10).status_code == 401
    requests.get(f"{stack.base_url}/v1/models", headers=stack.headers, timeout=10)
    metrics = requests.get(f"{stack.base_url}/metrics", headers=stack.headers, timeout=10).text
    assert 'llmserve_edge_requests_total{route="/v1/models",status="200"}' in metrics
    assert "llmserve_edge_request_seconds_bucket" in metrics
