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

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import servers
from fencelock_chaos.servers import postgres_bin_dir
from servers import LockServer

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


# -- the lock server of the contract suite -------------------------------------------------------


class PostgresLockServer(LockServer):
    """The contract suite's handle on a private PostgreSQL (the lock tables in schema ``fencelock``).

    Capabilities, honestly:
      pause             SIGSTOP of the postmaster *and every process it forked* (the backends serving
                        the open connections, the WAL writer...). Stopping the postmaster alone
                        would only stop *new* connections: open ones are served by their own backend
                        process and would go on answering. Resumed in the reverse order.
      restart_empty     stop the server, delete the cluster, initdb again: the server lost its data
                        (a failover to a replica that had nothing, a restore of nothing).
      restart_snapshot  snapshot = a copy of the data directory of the stopped server (a backup);
                        restart_from_snapshot = stop, put the copy back, start (a restore of an
                        older backup, or a failover to a replica that lagged).
      delete_key        DELETE the lease rows of a name (an operator or a bug).
      expire_key        set the leases' expiry into the past on the server's clock.
      fifo, counted     waiters are served first come, first served; semaphores and RW locks.
    Not ``password``: the test cluster trusts local connections (no wrong password to be refused).
    """

    kind = "postgres"
    capabilities = frozenset(
        {"pause", "restart_empty", "restart_snapshot", "delete_key", "expire_key", "fifo", "counted"}
    )
    SCHEMA = "fencelock"

    def __init__(self) -> None:
        self.server = PostgresServer().start()
        self._stopped: list[int] = []
        self._snapshot: Path | None = None

    @property
    def url(self) -> str:
        return self.server.url

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.server.url, autocommit=True, connect_timeout=5)

    def _tree(self) -> list[int]:
        """The postmaster's pid and its children's (every backend, the background workers)."""
        assert self.server.process is not None
        root = self.server.process.pid
        kids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == root:
                kids.append(int(entry))
        return [root, *kids]

    def pause(self) -> None:
        assert not self._stopped, "already paused"
        for pid in self._tree():  # the postmaster first: it forks no new backend while we stop the others
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                self._stopped.append(pid)

    def resume(self) -> None:
        for pid in reversed(self._stopped):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._stopped = []

    def restart_empty(self) -> None:
        self.server.halt()
        shutil.rmtree(self.server.data, ignore_errors=True)
        self.server.start()

    def snapshot(self) -> None:
        self.server.halt()
        self._snapshot = self.server.dir / "snapshot"
        shutil.rmtree(self._snapshot, ignore_errors=True)
        shutil.copytree(self.server.data, self._snapshot, symlinks=True)
        _chown_tree(self._snapshot, self.server.user.pw_uid, self.server.user.pw_gid)
        self.server.launch()

    def restart_from_snapshot(self) -> None:
        assert self._snapshot is not None, "snapshot() first"
        self.server.halt()
        shutil.rmtree(self.server.data)
        shutil.move(str(self._snapshot), str(self.server.data))
        self._snapshot = None
        self.server.launch()

    def delete_lock(self, name: str) -> None:
        """Every holder of the name: the mutex's (columns of its fence row), a counted name's rows."""
        s = self.SCHEMA
        with self.admin() as conn:
            mutex = conn.execute(
                f"UPDATE {s}.fence SET token = NULL, hfence = NULL, label = NULL, expires = NULL "
                "WHERE name = %s AND token IS NOT NULL", (name,),
            ).rowcount
            counted = conn.execute(f"DELETE FROM {s}.lease WHERE name = %s", (name,)).rowcount
            assert mutex + counted >= 1

    def expire_lock(self, name: str) -> None:
        s = self.SCHEMA
        past = "clock_timestamp() - interval '1 ms'"
        with self.admin() as conn:
            mutex = conn.execute(
                f"UPDATE {s}.fence SET expires = {past} WHERE name = %s AND token IS NOT NULL", (name,)
            ).rowcount
            counted = conn.execute(f"UPDATE {s}.lease SET expires = {past} WHERE name = %s", (name,)).rowcount
            assert mutex + counted >= 1

    def last_fence(self, name: str) -> int:
        with self.admin() as conn:
            try:
                row = conn.execute(f"SELECT last FROM {self.SCHEMA}.fence WHERE name = %s", (name,)).fetchone()
            except psycopg.errors.UndefinedTable:  # no schema yet: nothing was ever issued
                return 0
        return 0 if row is None else int(row[0])

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.admin() as conn:
            cur = conn.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []

    @property
    def upstream(self) -> tuple[str, str]:
        return ("unix", str(self.server.dir / ".s.PGSQL.5432"))

    def url_through(self, port: int) -> str:
        return f"postgresql://postgres@127.0.0.1:{port}/{DB_NAME}"

    def stop(self) -> None:
        self.resume()
        self.server.stop()


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    """The copy belongs to the server's user, as the original does (postgres refuses root's files)."""
    os.chown(root, uid, gid)
    for path in root.rglob("*"):
        os.chown(path, uid, gid, follow_symlinks=False)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresLockServer]:
    """The contract suite's PostgreSQL (one per session), stopped by its pid at the end."""
    server = PostgresLockServer()
    try:
        yield server
    finally:
        server.stop()


servers.BACKENDS["postgres"] = "postgres_server"
servers.CAPABILITIES["postgres"] = PostgresLockServer.capabilities
