"""A real PostgreSQL for the test run (the newest major version installed, see
``fencelock_chaos.servers.postgres_bin_dir``): ``initdb`` into a temp dir, a unix socket only, trust auth.

PostgreSQL refuses to run as root, so the server runs as the existing ``postgres`` user (through
``Popen(user=...)``: the pid we hold is the postmaster's own, and we stop it by that pid). No TCP
port is opened (``listen_addresses=''``); the socket lives in the temp dir. ``fsync=off``: a test
cluster need not survive a power cut, and it spares the shared machine's disk.

    from srv_postgres import postgres_url  # noqa: F401   (in a test module)

    def test_x(postgres_url: str) -> None: ...   # postgresql://postgres@/fencelock_test?host=/tmp/...
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from fencelock_chaos.servers import postgres_bin_dir

DB_NAME = "fencelock_test"


class PostgresServer:
    def __init__(self) -> None:
        self.user = pwd.getpwnam("postgres")
        self.dir = Path(tempfile.mkdtemp(prefix="fencelock-pg-"))
        os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self.data = self.dir / "data"
        self.process: subprocess.Popen[bytes] | None = None
        self.bin = postgres_bin_dir()  # the newest major version installed (scripts/test installs one)

    def _run_as_postgres(self, args: list[str]) -> None:
        subprocess.run(
            args, check=True, user=self.user.pw_uid, group=self.user.pw_gid, cwd=self.dir,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120, env=self._env(),
        )

    def _env(self) -> dict[str, str]:
        return {"PATH": f"{self.bin}:/usr/bin:/bin", "HOME": str(self.dir), "LC_ALL": "C.UTF-8"}

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.dir}"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@/{DB_NAME}?host={self.dir}"

    def start(self) -> PostgresServer:
        """initdb, launch, create the test database."""
        self._run_as_postgres(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-sync"]
        )
        self.launch()
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"CREATE DATABASE {DB_NAME}")
        return self

    def launch(self) -> None:
        """Start the server on the existing data directory; return once it accepts connections."""
        log = open(self.dir / "server.log", "ab")
        self.process = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.data), "-k", str(self.dir), "-c", "listen_addresses=",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=100"],
            user=self.user.pw_uid, group=self.user.pw_gid, cwd=self.dir, env=self._env(),
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )
        log.close()
        end = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {(self.dir / 'server.log').read_text()[-2000:]}")
            try:
                with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > end:
                    self.stop()
                    raise
                time.sleep(0.05)

    def halt(self) -> None:
        """Stop the server by its pid ("fast" shutdown: sessions are rolled back), keep the data."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self.process = None

    def stop(self) -> None:
        self.halt()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a fresh database on a private PostgreSQL, stopped (by pid) at the end of the session.
    Each test module that imports this fixture gets its own server (about a second to start)."""
    server = PostgresServer().start()
    try:
        yield server.url
    finally:
        server.stop()
