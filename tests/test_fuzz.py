"""Property-based fuzzing of the edge's HTTP API with schemathesis, from the app's own OpenAPI
document: every route, valid and invalid inputs, with a key (the admin token on /admin).

Properties: no 5xx; every 4xx is an OpenAI error envelope; no body carries a traceback or a
server path. Deterministic (derandomized), so a run is reproducible and never flakes.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
import requests
import schemathesis
from schemathesis import GenerationMode

from edge.app import build_app
from edge.settings import EdgeSettings
from tests.gateway import Admin

EXAMPLES_PER_OPERATION = 25
# A fuzzed chat may ask for long completions; these caps keep each case to a few tokens.
MAX_FUZZED_TOKENS = 4
MAX_FUZZED_N = 2
LEAKS = re.compile(
    r"Traceback|File \"|site-packages|\.py\b|"
    + "|".join(re.escape(str(p)) for p in {Path.home(), Path(__file__).resolve().parents[1]})
)

# A model import reads whatever path it is given on the registry's machine and exports it for
# minutes: no input for a fuzzer (tests/test_admin_models.py sends it bad bodies instead).
schema = schemathesis.openapi.from_dict(build_app(EdgeSettings()).openapi()).exclude(
    method="POST", path="/admin/v1/models"
)
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=EXAMPLES_PER_OPERATION,
    deterministic=True,
)
cases_run: list[str] = []
FUZZ_CASES = pytest.StashKey[int]()


@pytest.fixture(scope="module")
def fuzz_target(stack, request):
    """A serving of its own (so fuzzed writes stay in its namespace) with a short default
    completion, a key for it, and a throwaway serving for the admin routes to mangle."""
    admin = Admin(stack)
    serving = admin.create_serving(
        name=f"fuzz-{uuid.uuid4().hex[:6]}", default_sampling={"n_predict": MAX_FUZZED_TOKENS}
    )
    victim = admin.create_serving(name="fuzz-admin-target")
    key = admin.issue_key(serving["id"])
    yield {"serving": serving["id"], "victim": victim["id"], "key": key["secret"]}
    # Printed in the terminal summary (conftest.py), where captured output cannot hide it.
    request.config.stash[FUZZ_CASES] = len(cases_run)


def _bounded(case) -> None:
    body = case.body
    if not (case.path.endswith("/chat/completions") and isinstance(body, dict)):
        return
    for field, cap in (
        ("max_tokens", MAX_FUZZED_TOKENS),
        ("max_completion_tokens", MAX_FUZZED_TOKENS),
        ("n", MAX_FUZZED_N),
    ):
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > cap:
            body[field] = cap


@schema.parametrize()
def test_no_input_breaks_the_edge(case, stack, fuzz_target):
    admin_route = case.path.startswith("/admin/")
    if "serving_id" in (case.path_parameters or {}):
        target = fuzz_target["victim"] if admin_route else fuzz_target["serving"]
        case.path_parameters["serving_id"] = target
    _bounded(case)
    token = stack.admin_token if admin_route else fuzz_target["key"]
    response = case.call(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=120
    )
    cases_run.append(case.path)
    described = (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
    )
    assert response.status_code < 500, described
    assert not LEAKS.search(response.text), described
    if response.status_code >= 400:
        error = response.json().get("error")
        assert isinstance(error, dict), described
        assert set(error) == {"message", "type", "param", "code"}, described
        assert isinstance(error["message"], str) and error["message"], described


def test_the_stack_still_answers_after_fuzzing(stack):
    assert requests.get(f"{stack.base_url}/health", timeout=10).status_code == 200
