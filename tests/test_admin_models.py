"""The admin API's models on the whole stack: listing, importing with progress streamed as
SSE, deleting; the engine metrics the console shows; the usage log's buckets and per-user
totals. Admin token only; bad input is an OpenAI error envelope."""

from __future__ import annotations

import json
import uuid

import pytest
import requests

from edge.engine_metrics import summarize
from services.registry.defaults import (
    DEFAULT_CHAT_MODEL,
    DEFAULT_EMBEDDING_MODEL,
    minilm_checkpoint,
)
from tests.gateway import Admin, wait_for_usage


def _envelope(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def _events(response: requests.Response) -> list:
    lines = [line for line in response.iter_lines(decode_unicode=True) if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


@pytest.fixture(scope="module")
def models_url(stack) -> str:
    return f"{stack.base_url}/admin/v1/models"


def test_models_need_the_admin_token(stack, models_url):
    for headers in ({}, stack.headers):
        _envelope(requests.get(models_url, headers=headers, timeout=10), 401)
        body = {"name": "x", "kind": "chat", "source": "/x.gguf"}
        _envelope(requests.post(models_url, json=body, headers=headers, timeout=10), 401)
        _envelope(requests.delete(f"{models_url}/x", headers=headers, timeout=10), 401)
    listed = requests.get(models_url, headers=stack.admin_headers, timeout=10).json()["data"]
    kinds = {m["name"]: m["kind"] for m in listed}
    assert kinds[DEFAULT_CHAT_MODEL] == "chat"
    assert kinds[DEFAULT_EMBEDDING_MODEL] == "embedding"


IMPORT = {"name": "x", "kind": "chat", "source": "/x.gguf"}


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"name": None}, "name"),
        ({"kind": "vision"}, "kind"),
        ({"source": ""}, "source"),
        ({"context_length": -1}, "context_length"),
        ({"source_format": "onnx"}, "source_format"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_import_bodies_are_400(stack, models_url, changes, param):
    body = {k: v for k, v in {**IMPORT, **changes}.items() if v is not None}
    response = requests.post(models_url, json=body, headers=stack.admin_headers, timeout=10)
    assert _envelope(response, 400)["param"] == param


def test_refusals_before_the_export_keep_their_status(stack, models_url):
    """A missing source is found before the stream starts: a plain 400, not an SSE error."""
    body = {"name": "ghost", "kind": "chat", "source": "/no/such/model.gguf"}
    response = requests.post(models_url, json=body, headers=stack.admin_headers, timeout=30)
    assert _envelope(response, 400)["param"] == "source"
    in_use = requests.delete(f"{models_url}/{DEFAULT_CHAT_MODEL}", headers=stack.admin_headers)
    _envelope(in_use, 400)
    _envelope(requests.delete(f"{models_url}/ghost", headers=stack.admin_headers, timeout=10), 404)


def test_import_streams_progress_then_the_model_and_delete_forgets_it(stack, models_url):
    """The embedding checkpoint again under a new name: its export is cached, so this is quick
    but goes the whole way (hash, reuse, record)."""
    name = f"minilm-{uuid.uuid4().hex[:6]}"
    body = {"name": name, "kind": "embedding", "source": str(minilm_checkpoint())}
    with requests.post(
        models_url, json=body, headers=stack.admin_headers, stream=True, timeout=300
    ) as response:
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response)
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert "model" not in events[0]
    assert events[-1]["model"]["name"] == name
    assert events[-1]["model"]["kind"] == "embedding"
    # The source by its name only: no server path in a response.
    assert events[-1]["model"]["source"] == minilm_checkpoint().name
    listed = requests.get(models_url, headers=stack.admin_headers, timeout=10).json()["data"]
    assert name in [m["name"] for m in listed]
    taken = requests.post(models_url, json=body, headers=stack.admin_headers, timeout=30)
    assert _envelope(taken, 409)["param"] == "name"

    deleted = requests.delete(f"{models_url}/{name}", headers=stack.admin_headers, timeout=10)
    assert deleted.json() == {"name": name, "deleted": True}
    listed = requests.get(models_url, headers=stack.admin_headers, timeout=10).json()["data"]
    assert name not in [m["name"] for m in listed]


def test_engine_metrics_sum_the_generation_replicas(stack, admin):
    serving = admin.create_serving(name="metrics")
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "model": "x"}
    url = f"{stack.base_url}/api/gateway/rep/serving/{serving['id']}/v1/chat/completions"
    reply = requests.post(url, json=chat, headers=stack.admin_headers, timeout=120)
    assert reply.status_code == 200, reply.text
    summary = requests.get(
        f"{stack.base_url}/admin/v1/engine/metrics", headers=stack.admin_headers, timeout=10
    ).json()
    assert summary["configured"] and summary["replicas"] == summary["reachable"] == 1
    engine = summary["models"][DEFAULT_CHAT_MODEL]
    assert engine["generated_tokens"] >= reply.json()["usage"]["completion_tokens"] > 0
    assert engine["kv_slots"] >= 1
    assert 0 <= engine["kv_slots_used"] <= engine["kv_slots"]


def test_summarize_adds_replicas_and_counts_prefix_hits():
    exposition = (
        "# TYPE llmserve_generation_generated_tokens counter\n"
        'llmserve_generation_generated_tokens_total{model="m"} 10\n'
        "# TYPE llmserve_generation_waiting_sequences gauge\n"
        'llmserve_generation_waiting_sequences{model="m"} 2\n'
        "# TYPE llmserve_generation_prefix_cache_lookups counter\n"
        'llmserve_generation_prefix_cache_lookups_total{model="m",result="hit"} 3\n'
        'llmserve_generation_prefix_cache_lookups_total{model="m",result="miss"} 1\n'
        "# TYPE other_metric gauge\n"
        'other_metric{model="m"} 99\n'
    )
    summary = summarize([exposition, exposition])
    assert summary == {
        "m": {
            "generated_tokens": 20,
            "waiting": 4,
            "prefix_cache_lookups": 8,
            "prefix_cache_hits": 6,
        }
    }


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"bucket": 0}, "query.bucket"),
        ({"bucket": "day"}, "query.bucket"),
        ({"status": "fine"}, "query.status"),
    ],
)
def test_bad_usage_queries_are_400(stack, params, param):
    response = requests.get(
        f"{stack.base_url}/admin/v1/usage", params=params, headers=stack.admin_headers, timeout=10
    )
    assert _envelope(response, 400)["param"] == param


def test_usage_totals_per_bucket_and_user(stack, admin: Admin):
    serving = admin.create_serving(name="buckets")
    key = admin.issue_key(serving["id"])
    user = f"bucket-user-{uuid.uuid4().hex[:6]}"
    url = f"{stack.base_url}/api/gateway/rep/serving/{serving['id']}/v1/chat/completions"
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "model": "x"}
    headers = {"Authorization": f"Bearer {key['secret']}", "x-genos-user-id": user}
    for _ in range(2):
        assert requests.post(url, json=chat, headers=headers, timeout=120).status_code == 200
    usage = wait_for_usage(admin, 2, serving_id=serving["id"], bucket=3600)
    assert sum(b["requests"] for b in usage["by_time"]) == 2
    assert all(b["start"] % 3600 == 0 for b in usage["by_time"])
    assert usage["by_user"] == [
        {
            "user_id": user,
            "requests": 2,
            "prompt_tokens": usage["total_prompt_tokens"],
            "completion_tokens": usage["total_completion_tokens"],
        }
    ]
    failed = wait_for_usage(admin, 0, serving_id=serving["id"], status="client_error")
    assert failed["total_requests"] == 0
    keys = requests.get(
        f"{admin.base}/servings/{serving['id']}/keys", headers=admin.headers, timeout=10
    ).json()["data"]
    assert keys[0]["last_used_at"] == usage["data"][0]["created_at_unix_ms"] // 1000
    assert keys[0]["prefix"] == key["prefix"] == key["secret"][: len("sk-llms-") + 4]
