"""Helpers for processes on one machine: free ports, owner-only secret files and the
environment of a whole stack that clashes with no other."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_secret_file(path: Path, secret: str) -> None:
    """Writes `secret` to a file only its owner can read, atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secret + "\n")
    os.replace(temporary, path)


def admin_token_path(dev_key_path: Path) -> Path:
    """Where the launcher keeps the local admin token (beside the development API key), so
    the command line finds it too."""
    return dev_key_path.parent / "admin-token"


def isolated_stack_env(data: Path, admin_token: str) -> dict[str, str]:
    """The environment of `python -m services.launcher` with every service on a free port and
    every file under `data` (tests and benchmarks start stacks side by side with `make run`)."""
    return {
        **os.environ,
        "REGISTRY_DB_PATH": str(data / "registry.db"),
        "REGISTRY_DEV_KEY_PATH": str(data / "dev-api-key"),
        "REGISTRY_PORT": str(free_port()),
        "GENERATION_PORT": str(free_port()),
        "EMBEDDING_PORT": str(free_port()),
        "RETRIEVAL_PORT": str(free_port()),
        "RETRIEVAL_DATA_DIR": str(data / "retrieval"),
        "EDGE_PORT": str(free_port()),
        "EDGE_DATA_DIR": str(data / "edge"),
        "EDGE_ADMIN_TOKEN": admin_token,
    }
