"""The web console in a real browser: headless Chromium (Debian's `chromium`, driven by
Playwright by its path) against the whole stack. Sign in with the admin token, create a
serving, issue a key and chat with it in the playground (the answer streams in), then find
that request in the usage log and its charts. Every wait is Playwright's auto-wait on a
condition; the usage page refreshes itself while the record is written."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Page, expect, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
# Generation on a busy 2-core machine: room for a first request that loads the model.
ANSWER_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def browser() -> Browser:
    assert CHROMIUM.exists(), "make setup installs Debian's chromium"
    with sync_playwright() as playwright:
        # Root in a container has no user namespaces for Chromium's sandbox.
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, stack) -> Page:
    context = browser.new_context(base_url=stack.base_url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    # A CSP violation or a script error shows up here.
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    yield page
    context.close()
    assert not errors


def sign_in(page: Page, token: str) -> None:
    page.goto("/console/")
    page.get_by_label("Admin token or API key").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("navigation", name="Console pages")).to_be_visible()


def test_console_is_served_with_csp_and_cache_headers(stack):
    response = requests.get(f"{stack.base_url}/console/", timeout=10)
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response.headers["cache-control"] == "no-cache"
    again = requests.get(
        f"{stack.base_url}/console/",
        headers={"If-None-Match": response.headers["etag"]},
        timeout=10,
    )
    assert again.status_code == 304
    script = re.search(r'src="([^"]+/app\.js)"', response.text).group(1)
    asset = requests.get(f"{stack.base_url}{script}", timeout=10)
    assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert asset.headers["content-type"].startswith("text/javascript")
    stale = requests.get(f"{stack.base_url}/console/static/0000/app.js", timeout=10)
    assert stale.status_code == 404 and stale.json()["error"]["message"]
    assert "<script>" not in response.text


def test_sign_in_issue_a_key_chat_and_see_it_in_the_usage_log(page: Page, stack):
    sign_in(page, stack.admin_token)
    name = f"console-{uuid.uuid4().hex[:6]}"
    user = f"console-user-{uuid.uuid4().hex[:6]}"

    page.get_by_role("link", name="Servings").click()
    page.get_by_role("button", name="New serving").click()
    form = page.get_by_role("form", name="New serving")
    form.get_by_label("Name", exact=True).fill(name)
    form.get_by_label("Max new tokens (n_predict)").fill("8")
    form.get_by_role("button", name="Create serving").click()
    card = page.get_by_role("article").filter(has_text=name)
    expect(card).to_contain_text("/api/gateway/rep/serving/")
    card.get_by_role("button", name="API keys").click()

    page.get_by_label("Name", exact=True).fill("from the console")
    page.get_by_role("button", name="Issue key").click()
    secret = page.get_by_label("New API key")
    expect(secret).to_have_value(re.compile(r"^sk-llms-"))
    issued = secret.input_value()
    page.get_by_role("button", name="Use in playground").click()

    # The playground calls with the issued key, handed over in memory.
    expect(page.get_by_label("API key", exact=True)).to_have_value(issued)
    page.get_by_label("User id", exact=True).fill(user)
    page.get_by_label("Message", exact=True).fill("Say hello.")
    page.get_by_role("button", name="Send").click()
    answer = page.locator(".turn.assistant")
    expect(answer.locator(".meta.done")).to_contain_text(
        "completion tokens", timeout=ANSWER_TIMEOUT_MS
    )
    expect(answer.locator(".content")).not_to_be_empty()
    expect(answer.locator(".meta")).not_to_contain_text("blocked")

    page.get_by_role("link", name="Usage").click()
    page.get_by_text("More filters").click()
    page.get_by_label("User id", exact=True).fill(user)
    page.get_by_role("button", name="Apply").click()
    # The record arrives within the edge's flush interval; the page refreshes every 5 s.
    expect(page.get_by_role("table", name=re.compile("Newest requests"))).to_contain_text(
        user, timeout=30_000
    )
    requests_chart = page.get_by_role("img", name=re.compile("^Requests over time"))
    expect(requests_chart).to_have_attribute("aria-label", re.compile("requests 1$"))
    expect(requests_chart.locator("circle")).to_have_count(1)
    expect(page.get_by_role("img", name=re.compile("^Per user"))).to_have_attribute(
        "aria-label", re.compile(re.escape(user))
    )


def test_a_key_signs_in_by_keyboard_sees_its_serving_read_only_and_nothing_outlives_the_tab(
    page: Page, stack
):
    page.goto("/console/")
    # The token field has focus; Enter submits: no mouse needed.
    expect(page.get_by_label("Admin token or API key")).to_be_focused()
    page.keyboard.type(stack.api_key)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Playground")).to_be_focused()
    expect(page.locator("#who")).to_contain_text("serving ")

    page.get_by_role("link", name="Servings").click()
    expect(page.get_by_text("read-only")).to_be_visible()
    expect(page.get_by_role("article")).to_have_count(1)
    expect(page.get_by_role("button", name="Edit")).to_have_count(0)
    page.get_by_role("link", name="API keys").click()
    expect(page.get_by_text("needs the admin token")).to_be_visible()

    # Documents through the key: upload (progress, then the result), see it, delete it.
    page.get_by_role("link", name="Documents").click()
    upload = page.get_by_role("form", name="Upload a document")
    upload.get_by_label("Collection").fill("console_notes")
    upload.get_by_label("File").set_input_files(
        files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"The console works."}]
    )
    upload.get_by_role("button", name="Upload").click()
    expect(upload).to_contain_text("chunks added to console_notes", timeout=60_000)
    collections = page.get_by_role("table", name=re.compile("^Collections"))
    expect(collections).to_contain_text("console_notes")
    page.get_by_role("button", name="Show chunks of console_notes").click()
    chunks = page.get_by_role("region", name="Chunks of console_notes")
    expect(chunks).to_contain_text("notes.txt #0 The console works.")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete collection console_notes").click()
    expect(collections).not_to_contain_text("console_notes")

    # The key lives in this tab's sessionStorage only: no cookie, nothing in localStorage.
    assert page.evaluate("localStorage.length") == 0
    assert page.context.cookies() == []
    assert page.evaluate("Object.values(sessionStorage)") == [stack.api_key]
    page.get_by_role("button", name="Sign out").click()
    assert page.evaluate("sessionStorage.length") == 0
    expect(page.get_by_label("Admin token or API key")).to_be_visible()
