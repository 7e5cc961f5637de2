"""Tenancy on the whole stack: a serving is the tenant. Its key acts only for it, on every
route; another serving's collections and files are unknown to it; only the admin token
crosses tenants. The authorization matrix is built from the app's own route table, so a new
route cannot be added without a row here."""

from __future__ import annotations

import time
import uuid

import pytest
import requests

from edge.app import SERVING_PREFIX, build_app
from edge.settings import EdgeSettings
from services.registry.defaults import DEFAULT_CHAT_MODEL, DEFAULT_EMBEDDING_MODEL
from tests.gateway import bearer, route, wait_for_usage

SECRET = "The vault code of Serving A is 7431 and only serving A may know it."
QUESTION = [{"role": "user", "content": "What is the vault code?"}]
CHAT = {"model": DEFAULT_CHAT_MODEL, "messages": QUESTION, "max_tokens": 1}
SERVING_ROUTES = SERVING_PREFIX.replace(":int", "")

# One cheap request per operation: what each caller sends on every route.
ROWS: dict[tuple[str, str], dict] = {
    ("post", "/v1/chat/completions"): {"json": CHAT},
    ("post", "/v1/completions"): {
        "json": {"model": DEFAULT_CHAT_MODEL, "prompt": "Hi", "max_tokens": 1}
    },
    ("post", "/tokenize"): {"json": {"model": DEFAULT_CHAT_MODEL, "prompt": "Hi"}},
    ("post", "/detokenize"): {"json": {"model": DEFAULT_CHAT_MODEL, "tokens": [28]}},
    ("get", "/v1/models"): {},
    ("post", "/v1/models"): {},
    ("post", "/v1/embeddings"): {"json": {"model": DEFAULT_EMBEDDING_MODEL, "input": "hi"}},
    ("post", "/v1/retrieve"): {"json": {"messages": QUESTION}},
    ("get", "/v1/files"): {},
    ("post", "/v1/files"): {"files": {"file": ("matrix.txt", b"matrix")}},
    ("delete", "/v1/files/{file_id}"): {},
    ("post", "/v1/create/rag"): {
        "files": {"file": ("matrix.txt", b"A row of the matrix.")},
        "data": {"vdb_collection_name": "matrix"},
    },
    ("get", "/v1/collections"): {},
    ("post", "/v1/collections"): {"json": {"name": "matrix_empty"}},
    ("get", "/v1/collections/{name}/chunks"): {},
    ("delete", "/v1/collections/{name}"): {},
    ("get", "/v1/info"): {},
    ("post", "/v1/info"): {},
    ("get", "/metrics"): {},
    ("get", "/console/v1/session"): {},
}
ADMIN_ROWS: dict[tuple[str, str], dict] = {
    ("get", "/admin/v1/servings"): {},
    ("post", "/admin/v1/servings"): {"json": {"model": "no-such-model"}},
    ("get", "/admin/v1/servings/{serving_id}"): {},
    ("put", "/admin/v1/servings/{serving_id}"): {"json": {"model": DEFAULT_CHAT_MODEL}},
    ("delete", "/admin/v1/servings/{serving_id}"): {},
    ("get", "/admin/v1/servings/{serving_id}/keys"): {},
    ("post", "/admin/v1/servings/{serving_id}/keys"): {"json": {}},
    ("delete", "/admin/v1/keys/{key_id}"): {},
    ("get", "/admin/v1/usage"): {},
    ("get", "/admin/v1/models"): {},
    ("post", "/admin/v1/models"): {
        "json": {"name": "matrix", "kind": "chat", "source": "/no/such/model.gguf"}
    },
    ("delete", "/admin/v1/models/{name}"): {},
    ("get", "/admin/v1/engine/metrics"): {},
}
PUBLIC = {("get", "/health")}
# Plain routes that have no per-serving twin.
NOT_PER_SERVING = {"/metrics", "/console/v1/session"}


def route_table() -> set[tuple[str, str]]:
    app = build_app(EdgeSettings())
    return {(method, path) for path, ops in app.openapi()["paths"].items() for method in ops}


def test_every_route_has_a_row():
    table = route_table()
    serving_paths = {(m, p) for m, p in table if p.startswith(SERVING_ROUTES)}
    plain = table - serving_paths
    assert plain == set(ROWS) | set(ADMIN_ROWS) | PUBLIC
    # Every plain API route exists for a serving too, and nothing else does.
    assert serving_paths == {(m, SERVING_ROUTES + p) for m, p in ROWS if p not in NOT_PER_SERVING}


@pytest.fixture(scope="module")
def tenants(stack, admin):
    """Servings A and B with a key each, and a revoked key of A."""
    a = admin.create_serving(name="tenant-a")
    b = admin.create_serving(name="tenant-b")
    key_a, key_b = admin.issue_key(a["id"]), admin.issue_key(b["id"])
    revoked = admin.issue_key(a["id"])
    admin.revoke(revoked["id"])
    time.sleep(1.2)  # the edge trusts a verified key for EDGE_KEY_CACHE_TTL_S (1 s here)
    return {"a": a, "b": b, "key_a": key_a, "key_b": key_b, "revoked": revoked}


def _call(stack, method: str, url: str, headers: dict, row: dict) -> requests.Response:
    url = url.format(file_id="file-nope", name="nope", serving_id=999999, key_id="key_nope")
    return requests.request(method, url, headers=headers, timeout=120, **row)


def _allowed(response: requests.Response) -> bool:
    return response.status_code not in (401, 403) and response.status_code < 500


MATRIX = [
    pytest.param(operation, serving_route, id=f"{operation[0]} {prefix}{operation[1]}")
    for operation in sorted(ROWS)
    for serving_route, prefix in ((False, ""), (True, "serving:"))
    if operation[1] not in NOT_PER_SERVING or not serving_route
]


@pytest.mark.parametrize(("operation", "serving_route"), MATRIX)
def test_authorization_matrix(stack, tenants, operation, serving_route):
    method, path = operation
    base = route(stack, tenants["a"]["id"])[: -len("/v1")] if serving_route else stack.base_url
    url = base + path
    callers = {
        "own key": bearer(tenants["key_a"]["secret"]),
        "other serving's key": bearer(tenants["key_b"]["secret"]),
        "no key": {},
        "revoked key": bearer(tenants["revoked"]["secret"]),
        "admin token": stack.admin_headers,
    }
    row = ROWS[operation]
    got = {who: _call(stack, method, url, headers, row) for who, headers in callers.items()}
    assert got["no key"].status_code == 401
    assert got["revoked key"].status_code == 401
    assert _allowed(got["own key"]), got["own key"].text
    assert _allowed(got["admin token"]), got["admin token"].text
    other = got["other serving's key"]
    if serving_route:
        assert other.status_code == 403, other.text
        assert other.json()["error"]["type"] == "permission_error"
    else:
        # On a plain route the key acts for its own serving.
        assert _allowed(other), other.text


@pytest.mark.parametrize("operation", sorted(ADMIN_ROWS), ids=lambda op: f"{op[0]} {op[1]}")
def test_admin_routes_take_only_the_admin_token(stack, tenants, operation):
    method, path = operation
    url = stack.base_url + path
    row = ADMIN_ROWS[operation]
    for headers in ({}, bearer(tenants["key_a"]["secret"])):
        assert _call(stack, method, url, headers, row).status_code == 401
    assert _allowed(_call(stack, method, url, stack.admin_headers, row))


@pytest.fixture(scope="module")
def a_private(stack, tenants):
    """Serving A's private collection and file."""
    headers = bearer(tenants["key_a"]["secret"])
    ingested = requests.post(
        f"{stack.base_url}/v1/create/rag",
        files={"file": ("vault.txt", SECRET.encode())},
        data={"vdb_collection_name": "private"},
        headers={**headers, "x-genos-user-id": "alice"},
        timeout=120,
    )
    assert ingested.status_code == 200, ingested.text
    uploaded = requests.post(
        f"{stack.base_url}/v1/files",
        files={"file": ("notes.txt", b"A's notes")},
        headers=headers,
        timeout=30,
    )
    assert uploaded.status_code == 200, uploaded.text
    return uploaded.json()["id"]


def _without_name(error: dict, name: str) -> dict:
    return {**error, "message": error["message"].replace(name, "<name>")}


def test_another_servings_documents_do_not_exist_for_a_key(stack, tenants, a_private):
    a, b = bearer(tenants["key_a"]["secret"]), bearer(tenants["key_b"]["secret"])
    base = stack.base_url
    listed = requests.get(f"{base}/v1/collections", headers=b, timeout=10).json()["data"]
    assert "private" not in [c["name"] for c in listed]
    files = requests.get(f"{base}/v1/files", headers=b, timeout=10).json()["data"]
    assert a_private not in [f["id"] for f in files]

    # Naming A's collection is answered exactly as naming one that does not exist.
    def retrieve(name):
        body = {"messages": QUESTION, "vdb_collection_name": name}
        return requests.post(f"{base}/v1/retrieve", json=body, headers=b, timeout=60)

    def chat(name):
        body = {**CHAT, "vdb_collection_name": name}
        return requests.post(f"{base}/v1/chat/completions", json=body, headers=b, timeout=60)

    for operation in (retrieve, chat):
        taken, missing = operation("private"), operation("never_made")
        assert taken.status_code == missing.status_code == 404
        assert _without_name(taken.json()["error"], "private") == _without_name(
            missing.json()["error"], "never_made"
        )
    chunks = requests.get(f"{base}/v1/collections/private/chunks", headers=b, timeout=10)
    assert chunks.status_code == 404
    own = requests.get(f"{base}/v1/collections/private/chunks", headers=a, timeout=10).json()
    assert own["total"] == 1 and own["data"][0]["text"] == SECRET
    deleted = requests.delete(f"{base}/v1/collections/private", headers=b, timeout=10)
    assert deleted.status_code == 404
    gone = requests.delete(f"{base}/v1/files/{a_private}", headers=b, timeout=10)
    assert gone.status_code == 404
    ingest = requests.post(
        f"{base}/v1/create/rag", data={"file_id": a_private}, headers=b, timeout=30
    )
    assert ingest.status_code == 404

    # B may have a `private` of its own; A's is untouched and still answers A.
    made = requests.post(f"{base}/v1/collections", json={"name": "private"}, headers=b, timeout=30)
    assert made.status_code == 200, made.text
    found = requests.post(
        f"{base}/v1/retrieve",
        json={"messages": QUESTION, "vdb_collection_name": "private"},
        headers=a,
        timeout=60,
    ).json()
    assert any("7431" in p["source"] for p in found["points"])
    mine = requests.get(f"{base}/v1/files", headers=a, timeout=10).json()["data"]
    assert a_private in [f["id"] for f in mine]


def test_the_admin_token_sees_every_servings_documents(stack, tenants, a_private):
    listed = requests.get(
        f"{stack.base_url}/v1/collections", headers=stack.admin_headers, timeout=10
    ).json()["data"]
    assert {"name": "private", "serving_id": tenants["a"]["id"]}.items() <= next(
        c for c in listed if c.get("serving_id") == tenants["a"]["id"] and c["name"] == "private"
    ).items()
    # On a serving's route it acts for that serving.
    found = requests.post(
        f"{route(stack, tenants['a']['id'])}/retrieve",
        json={"messages": QUESTION, "vdb_collection_name": "private"},
        headers=stack.admin_headers,
        timeout=60,
    ).json()
    assert any("7431" in p["source"] for p in found["points"])


def test_a_new_servings_default_collection_exists_and_is_empty(stack, admin):
    serving = admin.create_serving(name=f"fresh-{uuid.uuid4().hex[:6]}")
    key = admin.issue_key(serving["id"])
    answer = requests.post(
        f"{route(stack, serving['id'])}/retrieve",
        json={"messages": QUESTION},
        headers=bearer(key["secret"]),
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"points": [], "limit": 5, "score_threshold": 0.3}


def test_a_failed_ingestion_leaves_no_collection_behind(stack, tenants):
    headers = bearer(tenants["key_b"]["secret"])
    failed = requests.post(
        f"{stack.base_url}/v1/create/rag",
        files={"file": ("image.png", b"\x89PNG not a document")},
        data={"vdb_collection_name": "never_filled"},
        headers=headers,
        timeout=30,
    )
    assert failed.status_code == 400
    listed = requests.get(f"{stack.base_url}/v1/collections", headers=headers, timeout=10)
    assert "never_filled" not in [c["name"] for c in listed.json()["data"]]


def test_every_billable_route_leaves_a_usage_record_with_its_user(stack, admin, tenants):
    headers = {**bearer(tenants["key_b"]["secret"]), "x-genos-user-id": "bob"}
    base = stack.base_url
    embedded = requests.post(
        f"{base}/v1/embeddings",
        json={"model": DEFAULT_EMBEDDING_MODEL, "input": ["one", "two words"]},
        headers=headers,
        timeout=60,
    ).json()
    ingested = requests.post(
        f"{base}/v1/create/rag",
        files={"file": ("bob.txt", b"Bob keeps his notes here.")},
        data={"vdb_collection_name": "bobs"},
        headers=headers,
        timeout=120,
    ).json()
    retrieved = requests.post(
        f"{base}/v1/retrieve",
        json={"messages": QUESTION, "vdb_collection_name": "bobs"},
        headers=headers,
        timeout=60,
    )
    assert retrieved.status_code == 200
    usage = wait_for_usage(admin, 3, serving_id=tenants["b"]["id"], user_id="bob")
    by_endpoint = {r["endpoint"]: r for r in usage["data"]}
    assert by_endpoint["/v1/embeddings"]["prompt_tokens"] == embedded["usage"]["prompt_tokens"]
    assert by_endpoint["/v1/embeddings"]["model"] == DEFAULT_EMBEDDING_MODEL
    assert by_endpoint["/v1/create/rag"]["prompt_tokens"] == ingested["usage"]["prompt_tokens"]
    assert by_endpoint["/v1/retrieve"]["prompt_tokens"] > 0
    assert all(r["api_key_id"] == tenants["key_b"]["id"] for r in usage["data"])
