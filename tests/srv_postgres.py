"""A real PostgreSQL for the test run, from ``fencelock_chaos.servers.Postgres`` (the newest major
version installed, ``initdb`` into a temp dir, trust auth, run as the ``postgres`` user when we are
root, stopped by its pid): here with a unix socket only, no TCP port.

    from srv_postgres import postgres_url  # noqa: F401   (in a test module)

    def test_x(postgres_url: str) -> None: ...   # postgresql://postgres@/fencelock_test?host=/tmp/...
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import servers
from fencelock_chaos.servers import Postgres
from servers import LockServer

DB_NAME = "fencelock_test"


class PostgresServer(Postgres):
    """The launcher of ``fencelock_chaos.servers`` (one for tests, bench and harness), unix socket
    only, with the test database created at start."""

    def __init__(self) -> None:
        super().__init__(tcp=False)

    @property
    def admin_url(self) -> str:
        return self.dsn("postgres")

    @property
    def url(self) -> str:
        return self.dsn(DB_NAME)

    def start(self) -> PostgresServer:
        """initdb, launch, create the test database."""
        super().start()
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"CREATE DATABASE {DB_NAME}")
        return self


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
    request_timeout = 2.1  # request_timeout, plus the watchdog's tick
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
        if self.server.owner is not None:
            _chown_tree(self._snapshot, *self.server.owner)
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
        return ("unix", str(self.server.socket))

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


servers.register("postgres", "postgres_server", PostgresLockServer)
