"""The SQLite "server" for the contract suite: a lock file in a temp dir (there is no process).

Registers itself (``servers.register``) at import (conftest imports it). Capabilities: only what a
file honestly has: an operator can delete a lock row (``delete_key``) or make it expire now
(``expire_key``); waiters are served in arrival order (``fifo``); names hold counted leases
(semaphores, read-write locks: ``counted``). There is no server to pause,
restart, snapshot or protect with a password.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

import servers
from servers import LockServer

__all__ = ["SqliteLockServer", "sqlite_server"]


class SqliteLockServer(LockServer):
    """A fresh SQLite lock file; fault hooks go through a connection of their own."""

    kind = "sqlite"
    capabilities = frozenset({"counted", "delete_key", "expire_key", "fifo"})

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def url(self) -> str:
        # path is absolute, so this is the four-slash form sqlite:////abs/path
        return f"sqlite:///{self.path}"

    def _admin(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30, isolation_level=None)

    def delete_lock(self, name: str) -> None:
        with closing(self._admin()) as db:
            # every lease of the name (a counted name has one row per holder)
            assert db.execute("DELETE FROM fencelock_lease WHERE name = ?", (name,)).rowcount >= 1

    def expire_lock(self, name: str) -> None:
        # A deadline in the past of CLOCK_MONOTONIC: every process sees the lease as over.
        with closing(self._admin()) as db:
            cur = db.execute("UPDATE fencelock_lease SET deadline = -1 WHERE name = ?", (name,))
            assert cur.rowcount >= 1

    def last_fence(self, name: str) -> int:
        with closing(self._admin()) as db:
            try:
                row = db.execute("SELECT last FROM fencelock_fence WHERE name = ?", (name,)).fetchone()
            except sqlite3.OperationalError:  # no table yet: nothing was ever issued
                return 0
        return 0 if row is None else int(row[0])


@pytest.fixture(scope="session")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteLockServer]:
    """One lock file for the session (tests use fresh lock names, as on the Redis servers)."""
    yield SqliteLockServer(tmp_path_factory.mktemp("sqlite") / "locks.db")


servers.register("sqlite", "sqlite_server", SqliteLockServer)
