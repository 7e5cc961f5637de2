"""The `llmserve` command line, run as a user runs it (the installed `llmserve` script, from
outside the repository) against the session's stack: servings, keys and usage through the
edge's admin API, models through the registry's gRPC API, chat through the public OpenAI API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from services.cli.__main__ import build_parser
from services.cli.config import Defaults
from services.common.local import free_port
from services.registry.defaults import DEFAULT_CHAT_MODEL, DEFAULT_EMBEDDING_MODEL

CAPITAL = "What is the capital of France?"


# What `make setup` installed (pyproject.toml's [project.scripts]).
LLMSERVE = Path(sys.executable).parent / "llmserve"


def llmserve(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LLMSERVE), *args],
        cwd=tempfile.gettempdir(),
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def succeeds(*args: str, env: dict[str, str]) -> str:
    result = llmserve(*args, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def fails(exit_code: int, *args: str, env: dict[str, str]) -> str:
    """The one-line error on stderr of a command that exits with `exit_code`."""
    result = llmserve(*args, env=env)
    assert result.returncode == exit_code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def cli_env(stack) -> dict[str, str]:
    """The stack's environment: the CLI's defaults find its edge, registry, admin token and
    development key the way they find `make run`'s."""
    return {**stack.env, "OPENAI_API_KEY": ""}


@pytest.fixture(scope="module")
def serving(cli_env) -> dict:
    created = succeeds(
        "servings", "create", "--model", DEFAULT_CHAT_MODEL, "--name", "cli", "--json", env=cli_env
    )
    return json.loads(created)


@pytest.fixture(scope="module")
def key(cli_env, serving) -> dict:
    issued = succeeds("keys", "issue", str(serving["id"]), "--name", "cli", "--json", env=cli_env)
    return json.loads(issued)


def test_keys_issue_list_and_revoke(stack, cli_env, serving):
    # Explicit flags beat the environment.
    env = {k: v for k, v in cli_env.items() if k not in ("EDGE_PORT", "EDGE_ADMIN_TOKEN")}
    flags = ["--url", stack.base_url, "--admin-token", stack.admin_token]
    issued = succeeds(
        "keys", "issue", str(serving["id"]), "--name", "ops", "--expires", "2999-01-01", *flags,
        env=env,
    )  # fmt: skip
    first, secret = issued.strip().splitlines()
    key_id = first.split()[1]
    assert secret.startswith("sk-") and f"for serving {serving['id']}" in first
    listing = succeeds("keys", "list", str(serving["id"]), env=cli_env).splitlines()
    row = next(line.split() for line in listing if line.startswith(key_id))
    assert row[1] == "active" and row[3:] == ["2999-01-01T00:00:00Z", "ops"]
    assert succeeds("keys", "revoke", key_id, env=cli_env).strip() == f"revoked {key_id}"
    listed = json.loads(succeeds("keys", "list", str(serving["id"]), "--json", env=cli_env))
    assert next(k for k in listed if k["id"] == key_id)["revoked_at"] is not None
    assert "does not exist" in fails(1, "keys", "revoke", "key_missing", env=cli_env)


def test_servings_create_show_update_and_rm(cli_env):
    created = json.loads(
        succeeds(
            "servings", "create", "--model", DEFAULT_CHAT_MODEL, "--name", "brief",
            "--system-prompt", "Be brief.", "--n-predict", "7", "--rpm", "60", "--json",
            env=cli_env,
        )
    )  # fmt: skip
    serving_id = str(created["id"])
    assert created["default_sampling"] == {"n_predict": 7}
    shown = succeeds("servings", "show", serving_id, env=cli_env)
    assert "system_prompt:    Be brief." in shown
    assert f"/api/gateway/rep/serving/{serving_id}/v1" in shown
    # An update changes what its flags name and keeps the rest.
    updated = json.loads(
        succeeds(
            "servings", "update", serving_id, "--temperature", "0.5", "--moderation", "on",
            "--blocked-term", "spam", "--blocked-term", "scam", "--json",
            env=cli_env,
        )
    )  # fmt: skip
    assert updated["system_prompt"] == "Be brief."
    assert updated["default_sampling"] == {"n_predict": 7, "temperature": 0.5}
    assert updated["moderation"] == {
        "enabled": True,
        "blocked_terms": ["spam", "scam"],
        "action": "cut",
    }
    assert updated["limits"]["requests_per_minute"] == 60
    listed = succeeds("servings", "list", env=cli_env)
    assert [serving_id, "brief", DEFAULT_CHAT_MODEL, "-", "on"] in [
        line.split()[:5] for line in listed.splitlines()
    ]
    # The server's validation message, not a traceback.
    refused = fails(1, "servings", "update", serving_id, "--temperature", "9", env=cli_env)
    assert "temperature" in refused and "(HTTP 400)" in refused
    assert "deleted serving" in succeeds("servings", "rm", serving_id, env=cli_env)
    assert "does not exist" in fails(1, "servings", "show", serving_id, env=cli_env)


def test_chat_message_streams_an_answer_that_usage_then_shows(cli_env, serving, key):
    answer = llmserve(
        "chat", "--serving", str(serving["id"]), "--api-key", key["secret"],
        "--message", CAPITAL, "--temperature", "0", "--max-tokens", "12", "--show-usage",
        env=cli_env,
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr
    assert "Paris" in answer.stdout
    assert "completion tokens]" in answer.stderr

    [record] = usage_of(key["id"], 1, cli_env)["data"]
    assert record["endpoint"] == "/v1/chat/completions"
    assert record["serving_id"] == serving["id"] and record["model"] == DEFAULT_CHAT_MODEL
    assert 0 < record["completion_tokens"] <= 12 and record["status"] == "ok"
    table = succeeds("usage", "--serving", str(serving["id"]), "--since", "2026-01-01", env=cli_env)
    assert key["id"] in table
    assert f"total: 1 requests, {record['prompt_tokens']} prompt" in table


def usage_of(key_id: str, requests: int, env: dict[str, str]) -> dict:
    """The usage report of a key once it holds `requests` records (the edge writes them in
    the background)."""
    deadline = time.monotonic() + 30
    while True:
        report = json.loads(succeeds("usage", "--key", key_id, "--json", env=env))
        if report["total_requests"] >= requests or time.monotonic() > deadline:
            return report
        time.sleep(0.2)


def test_interactive_chat_keeps_the_conversation_and_leaves_cleanly(cli_env, serving):
    key = json.loads(succeeds("keys", "issue", str(serving["id"]), "--json", env=cli_env))
    args = ["chat", "--serving", str(serving["id"]), "--api-key", key["secret"]]
    args += ["--temperature", "0", "--max-tokens", "8"]
    session = llmserve(*args, env=cli_env, stdin="My name is Ada.\nWhat is my name?\n/exit\nNo.\n")
    assert session.returncode == 0, session.stderr
    # A prompt before each question and before /exit; nothing is asked after it.
    assert session.stdout.count("> ") == 3
    # Ctrl-D (end of input) leaves too; without --api-key the development key is used (a
    # missing or wrong key would fail listing the models).
    ended = llmserve("chat", env=cli_env)
    assert ended.returncode == 0, ended.stderr
    assert f"chatting with {DEFAULT_CHAT_MODEL}" in ended.stderr

    # Ctrl-C while an answer streams stops it (its generation is cancelled); Ctrl-C at the
    # prompt leaves. Greedy, this question's answer runs the whole 400 tokens.
    long_answer = [*args[:-2], "--max-tokens", "400"]
    # As from an interactive shell: a suite started in the background (`./.ci/run &`) runs
    # with SIGINT ignored, which a child inherits, and Python then never raises Ctrl-C.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(
            [str(LLMSERVE), *long_answer],
            cwd=tempfile.gettempdir(),
            env=cli_env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    finally:
        signal.signal(signal.SIGINT, inherited)
    read_until(process, lambda shown: shown.endswith(b"> "))
    process.stdin.write(b"Write a long essay about the history of France.\n")
    process.stdin.flush()
    answer = read_until(process, lambda shown: len(shown.strip()) > 20)
    process.send_signal(signal.SIGINT)
    answer += read_until(process, lambda shown: shown.endswith(b"> "))
    process.send_signal(signal.SIGINT)
    _, errors = process.communicate(timeout=30)
    assert process.returncode == 0
    assert b"[answer stopped]" in errors and b"Traceback" not in errors, (answer, errors)

    # Newest first.
    stopped, second, first = usage_of(key["id"], 3, cli_env)["data"]
    assert stopped["status"] == "cancelled" and stopped["completion_tokens"] < 400
    # The second question was sent with the first and its answer.
    assert second["prompt_tokens"] > first["prompt_tokens"] + first["completion_tokens"]


def read_until(process: subprocess.Popen, done) -> bytes:
    """Reads the process's stdout until `done(what was read)`."""
    shown = b""
    while not done(shown):
        chunk = os.read(process.stdout.fileno(), 1024)
        assert chunk, process.stderr.read()
        shown += chunk
    return shown


def test_bad_arguments_exit_2_with_a_message(cli_env, tmp_path):
    assert "invalid int value: 'x'" in fails(2, "keys", "issue", "x", env=cli_env)
    assert "ISO 8601" in fails(2, "usage", "--since", "yesterday", env=cli_env)
    assert "--model" in fails(2, "servings", "create", env=cli_env)
    assert "cannot read" in fails(
        2, "models", "import", "m", "f", "--chat-template", str(tmp_path / "none"), env=cli_env
    )
    # No admin token anywhere: say where one comes from.
    bare = {**cli_env, "EDGE_ADMIN_TOKEN": "", "REGISTRY_DEV_KEY_PATH": str(tmp_path / "key")}
    assert "no admin token" in fails(2, "servings", "list", env=bare)
    # The token file the launcher writes beside the development key is the local default.
    (tmp_path / "admin-token").write_text(cli_env["EDGE_ADMIN_TOKEN"] + "\n")
    assert DEFAULT_CHAT_MODEL in succeeds("servings", "list", env=bare)


def test_unreachable_servers_exit_3(cli_env):
    nowhere = f"127.0.0.1:{free_port()}"
    assert "cannot connect" in fails(
        3, "servings", "list", "--url", f"http://{nowhere}", env=cli_env
    )
    assert "cannot connect" in fails(
        3, "chat", "--message", "hi", "--api-key", "k", "--url", f"http://{nowhere}", env=cli_env
    )
    assert "cannot connect" in fails(3, "models", "list", "--registry", nowhere, env=cli_env)


def test_models_list_shows_the_default_models(cli_env):
    rows = [line.split() for line in succeeds("models", "list", env=cli_env).splitlines()]
    assert [DEFAULT_CHAT_MODEL, "chat"] in [row[:2] for row in rows]
    models = {m["name"]: m for m in json.loads(succeeds("models", "list", "--json", env=cli_env))}
    assert models[DEFAULT_EMBEDDING_MODEL]["kind"] == "embedding"
    assert models[DEFAULT_CHAT_MODEL]["chat_template"]
    assert "does not exist" in fails(1, "models", "rm", "no-such-model", env=cli_env)


def test_models_import_shows_progress_and_takes_a_template_file(
    cli_env, tiny_base_checkpoint, tmp_path
):
    template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"
    (tmp_path / "template.jinja").write_text(template)
    imported = llmserve(
        "models", "import", "tiny-cli", str(tiny_base_checkpoint),
        "--chat-template", str(tmp_path / "template.jinja"),
        env=cli_env,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    assert "imported tiny-cli (gqa graph)" in imported.stdout
    # The bar goes to stderr and reaches 100%.
    assert "tiny-cli: 100%" in imported.stderr
    models = {m["name"]: m for m in json.loads(succeeds("models", "list", "--json", env=cli_env))}
    assert models["tiny-cli"]["chat_template"] == template
    assert "already" in fails(
        1, "models", "import", "tiny-cli", str(tiny_base_checkpoint), env=cli_env
    )
    assert "removed tiny-cli" in succeeds("models", "rm", "tiny-cli", env=cli_env)
    assert "tiny-cli" not in succeeds("models", "list", env=cli_env)


def _commands(parser, path=()):
    yield path, parser
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        for name, child in action.choices.items():
            yield from _commands(child, (*path, name))


def test_every_command_has_help_with_the_exit_codes(tmp_path, monkeypatch):
    monkeypatch.setenv("REGISTRY_DEV_KEY_PATH", str(tmp_path / "dev-api-key"))
    commands = dict(_commands(build_parser(Defaults.from_environment())))
    assert {
        ("run",), ("models", "import"), ("models", "list"), ("models", "rm"),
        ("servings", "list"), ("servings", "create"), ("servings", "show"),
        ("servings", "update"), ("servings", "rm"), ("keys", "issue"), ("keys", "list"),
        ("keys", "revoke"), ("usage",), ("chat",),
    } <= set(commands)  # fmt: skip
    for path, parser in commands.items():
        text = parser.format_help()
        assert "3  cannot connect to the server" in text, path
        assert parser.description or not path, path
