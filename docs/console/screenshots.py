"""Screenshots of every console page, for docs/console/ and the README.

Drives headless Chromium (Debian's, by its path, as tests/test_console.py does) against a
running stack: it first makes a little traffic (a serving grounded in a small handbook,
chats from three users) so the charts have something to show, then visits each page.

    python docs/console/screenshots.py --base-url http://127.0.0.1:8080 \
        --admin-token "$(cat ~/.local/share/llmserve/admin-token)"

PNGs are reduced to a 256-colour palette (Pillow), which keeps each well under 200 KB.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import requests
from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright

OUT = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
HANDBOOK = (
    "Employee handbook. Every employee gets 25 vacation days a year. Vacation requests go to "
    "your manager two weeks ahead. Remote work is allowed three days a week. The office opens "
    "at 8 am and closes at 7 pm. Expenses are reimbursed within 30 days of a receipt."
)
QUESTIONS = {
    "alice": ["How many vacation days do I get?", "When does the office open?"],
    "bob": ["Can I work from home?", "How are expenses paid back?", "Hi!"],
    "carol": ["Who approves vacation?"],
}


def seed(base: str, admin: dict) -> dict:
    """A grounded serving, its documents and some chats; returns the serving."""
    models = requests.get(f"{base}/admin/v1/models", headers=admin, timeout=30).json()["data"]
    model = next(m["name"] for m in models if m["kind"] == "chat")
    serving = requests.post(
        f"{base}/admin/v1/servings",
        headers=admin,
        timeout=30,
        json={
            "name": "support-bot",
            "model": model,
            "system_prompt": "You answer questions about the company handbook, briefly.",
            "rag_collection": "handbook",
            "default_sampling": {"n_predict": 48, "temperature": 0.2},
            "moderation": {"enabled": True, "blocked_terms": ["password"], "action": "cut"},
        },
    ).json()
    route = f"{base}/api/gateway/rep/serving/{serving['id']}/v1"
    requests.post(
        f"{route}/create/rag",
        headers=admin,
        files={"file": ("handbook.txt", HANDBOOK.encode())},
        data={"vdb_collection_name": "handbook"},
        timeout=120,
    ).raise_for_status()
    for user, questions in QUESTIONS.items():
        for question in questions:
            requests.post(
                f"{route}/chat/completions",
                headers={**admin, "x-genos-user-id": user},
                json={
                    "model": model,
                    "max_tokens": 24,
                    "messages": [{"role": "user", "content": question}],
                },
                timeout=300,
            ).raise_for_status()
    return serving


def shoot(page: Page, name: str) -> None:
    path = OUT / f"{name}.png"
    page.screenshot(path=path)
    # A palette image: UI screenshots have few colours, so this loses nothing visible.
    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)
    print(f"{path.relative_to(OUT.parents[1])}: {path.stat().st_size // 1024} KB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8080")
    default_token = os.environ.get("EDGE_ADMIN_TOKEN") or ""
    token_file = Path("~/.local/share/llmserve/admin-token").expanduser()
    if not default_token and token_file.exists():
        default_token = token_file.read_text().strip()
    parser.add_argument("--admin-token", default=default_token)
    args = parser.parse_args()
    base, admin = args.base_url.rstrip("/"), {"Authorization": f"Bearer {args.admin_token}"}
    serving = seed(base, admin)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(base_url=base, viewport={"width": 1280, "height": 860})
        page.goto("/console/")
        page.get_by_label("Admin token or API key").fill(args.admin_token)
        shoot(page, "sign-in")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("img", name=re.compile("^Per user"))).to_be_visible()
        shoot(page, "usage")

        page.get_by_role("link", name="Servings").click()
        expect(page.get_by_role("article").filter(has_text="support-bot")).to_be_visible()
        page.get_by_role("article").filter(has_text="support-bot").get_by_text(
            "Python requests snippet"
        ).click()
        page.get_by_role("article").filter(has_text="support-bot").scroll_into_view_if_needed()
        shoot(page, "servings")

        page.goto("/console/#/keys")
        page.get_by_label("Serving").select_option(str(serving["id"]))
        page.get_by_label("Name").fill("mobile-app")
        page.get_by_role("button", name="Issue key").click()
        expect(page.get_by_label("New API key")).to_be_visible()
        shoot(page, "keys")

        page.get_by_role("button", name="Use in playground").click()
        page.get_by_label("User id").fill("dana")
        page.get_by_label("Message", exact=True).fill("How many vacation days do I get?")
        page.get_by_role("button", name="Send").click()
        expect(page.locator(".meta.done")).to_be_visible(timeout=300_000)
        page.get_by_text("Retrieved context").click()
        shoot(page, "playground")

        page.goto("/console/#/documents")
        page.get_by_label("Serving").select_option(str(serving["id"]))
        page.get_by_role("button", name="Show chunks of handbook").click()
        page.get_by_label("Query").fill("vacation")
        page.get_by_role("button", name="Search").click()
        expect(page.locator(".chunks li").first).to_be_visible()
        page.evaluate("window.scrollTo(0, 0)")
        shoot(page, "documents")

        page.goto("/console/#/models")
        expect(page.get_by_text("Tokens / s")).to_be_visible()
        # The second poll gives tokens/s.
        expect(page.get_by_text("measuring…")).to_have_count(0, timeout=30_000)
        shoot(page, "models")

        phone = browser.new_page(base_url=base, viewport={"width": 390, "height": 844})
        phone.goto("/console/")
        phone.get_by_label("Admin token or API key").fill(args.admin_token)
        phone.get_by_role("button", name="Sign in").click()
        expect(phone.get_by_role("img", name=re.compile("^Requests"))).to_be_visible()
        shoot(phone, "usage-phone")
        browser.close()


if __name__ == "__main__":
    main()
