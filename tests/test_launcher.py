"""`python -m services.launcher` stops every service it started, whichever way it ends.

The services run in sessions of their own (so a Ctrl-C reaches only the launcher), so a
service the launcher does not stop outlives it. The registry starts in seconds without its
default models (REGISTRY_BOOTSTRAP_DEFAULTS=false), which is all these tests need.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from services.common.local import free_port, isolated_stack_env

STARTED = re.compile(r"started (\S+) \(pid (\d+)\)")


def launcher_env(data: Path) -> dict[str, str]:
    """Every port free and every file in `data`, so nothing clashes with another stack."""
    return {
        **isolated_stack_env(data, "test-admin-token"),
        "REGISTRY_BOOTSTRAP_DEFAULTS": "false",
        "GENERATION_METRICS_PORT": str(free_port()),
        "ENVOY_GRPC_PORT": str(free_port()),
        "ENVOY_ADMIN_PORT": str(free_port()),
    }


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for_log(log_path: Path, pattern: re.Pattern, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not pattern.search(log_path.read_text(errors="replace")):
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no {pattern.pattern!r} in the log:\n{log_path.read_text()}")
        time.sleep(0.1)


def run_launcher(tmp_path: Path, extra_env: dict[str, str], end) -> tuple[int, list[str]]:
    """Starts the launcher, lets `end(process, log_path)` end it, and returns its exit status
    and the services it started. Asserts that none of them still runs (and kills any that
    does)."""
    log_path = tmp_path / "launcher.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.launcher"],
            cwd=REPO,
            env={**launcher_env(tmp_path), **extra_env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        end(process, log_path)
        status = process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
        started = [(name, int(pid)) for name, pid in STARTED.findall(log_path.read_text())]
        leaked = [(name, pid) for name, pid in started if running(pid)]
        for _, pid in leaked:
            os.kill(pid, signal.SIGKILL)
    assert started, log_path.read_text()
    assert not leaked, f"still running after the launcher ended: {leaked}\n{log_path.read_text()}"
    return status, [name for name, _ in started]


def test_an_unexpected_error_stops_the_services_already_started(tmp_path):
    # The registry starts first; a missing Envoy config then fails the launcher with an
    # OSError, not one of its own RuntimeErrors.
    missing = tmp_path / "no-such-envoy.yaml"
    status, started = run_launcher(
        tmp_path,
        {"ENVOY_ENABLED": "true", "ENVOY_CONFIG": str(missing)},
        lambda process, log_path: None,
    )
    assert status == 1
    assert "registry" in started


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_stops_the_services_already_started(tmp_path, sig):
    def signal_once_the_registry_started(process, log_path):
        wait_for_log(log_path, re.compile(r"started registry \(pid \d+\)"), process)
        process.send_signal(sig)

    _, started = run_launcher(tmp_path, {}, signal_once_the_registry_started)
    assert "registry" in started


def test_registry_replicas_start_one_after_another_on_one_database(tmp_path, postgres):
    """REGISTRY_REPLICAS=2: the first replica starts alone (it may import the default models),
    the second once the first is healthy, both on the one PostgreSQL; both are stopped."""

    def stop_once_the_second_is_healthy(process, log_path):
        wait_for_log(log_path, re.compile(r"registry-2 is healthy"), process)
        process.send_signal(signal.SIGTERM)

    env = {"REGISTRY_REPLICAS": "2", "REGISTRY_DATABASE_URL": postgres.create_database()}
    _, started = run_launcher(tmp_path, env, stop_once_the_second_is_healthy)
    assert started[:2] == ["registry-1", "registry-2"]
    log = (tmp_path / "launcher.log").read_text()
    assert log.index("registry-1 is healthy") < log.index("started registry-2")
