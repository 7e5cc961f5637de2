"""A private PostgreSQL server for the test suite and bench/: the machine's PostgreSQL 15
`initdb`/`pg_ctl`, a data directory in a fresh temp dir, a free loopback port, and its unix
socket in that temp dir (never /var/run/postgresql, which another server may own).

PostgreSQL refuses to run as root; as root, the server runs as the `postgres` user (`nobody`
where there is none), which owns the temp dir.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import sqlalchemy as sa

from services.common.database import database_url
from services.common.local import free_port

START_TIMEOUT_S = 60


class LocalPostgres:
    """Started by start(), removed with its data by stop(); `url(database)` to connect."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="llmserve-postgres-"))
        self._user = _server_user() if os.geteuid() == 0 else None
        self._databases = 0

    def _run(self, *argv: str) -> None:
        result = subprocess.run(argv, capture_output=True, text=True, user=self._user, timeout=120)
        if result.returncode != 0:
            log = self.root / "log"
            server_log = log.read_text() if log.exists() else ""
            raise RuntimeError(f"{argv[0]} failed: {result.stderr}{server_log}")

    def start(self) -> LocalPostgres:
        if self._user:
            account = pwd.getpwnam(self._user)
            os.chown(self.root, account.pw_uid, account.pw_gid)
        data = self.root / "data"
        self._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run(
            "pg_ctl", "-D", str(data), "-o", options, "-l", str(self.root / "log"),
            "-w", "-t", str(START_TIMEOUT_S), "start",
        )  # fmt: skip
        return self

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        self._databases += 1
        name = f"llmserve_{self._databases}"
        engine = sa.create_engine(database_url(self.url()), isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
        engine.dispose()
        return self.url(name)


def _server_user() -> str:
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "nobody"
    return "postgres"
