"""This process's connections to one lock file, its transactions, and sqlite3's errors translated.

Each call checks out a connection of its own from a small idle list and hands it back (one
connection per concurrently calling thread, reused by threads that come and go; the statement cache
makes every statement a prepared one). A forked child opens its own (SQLite connections must not
cross ``fork()``). Each checkout compares the file at the path with the one the connections have
open (one ``stat``): if it was deleted or replaced, they are dropped and the file at the path is
opened, so nobody keeps locking in a deleted file that the others no longer see.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..._errors import BackendError, BackendRejected, BackendUnavailable
from .schema import ensure_layout

__all__ = ["Connections", "switch_to_wal"]

T = TypeVar("T")

MAX_IDLE = 8
"""Idle connections kept per backend (more are closed when handed back)."""


def _file_id(path: str) -> tuple[int, int] | None:
    """Which file is at ``path`` now (device, inode); None when there is none (or it cannot be seen)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino



def switch_to_wal(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """Put the file in WAL mode (persistent: a no-op once set), then set ``busy_timeout`` (s).

    Switching a new file to WAL takes an exclusive lock. Two connections switching at once can each
    hold the shared lock the other waits on, and SQLite then fails one at once ("database is
    locked") or lets both wait out the whole busy timeout: so try without waiting, and back off
    between tries, for at most ``busy_timeout``. Also used by the demo's SQLite store."""
    conn.execute("PRAGMA busy_timeout = 0")
    end = time.monotonic() + busy_timeout
    for attempt in range(10_000):  # bounded by the busy timeout; the count is a backstop
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            break
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() >= end:
                raise
            time.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** min(attempt, 8))))
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")

class Connections:
    """The connections of one process to the lock file at ``path``."""

    def __init__(self, path: str, busy_timeout: float, clock: Callable[[], float]) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._clock = clock
        self._idle: list[sqlite3.Connection] = []
        self._idle_pid = os.getpid()
        self._file_id: tuple[int, int] | None = None  # (st_dev, st_ino) our connections have open
        self._generation = 0  # bumped when the file at ``path`` was deleted or replaced
        self._born: dict[int, int] = {}  # id(connection) -> generation it was opened in
        self._schema_ready = False
        self._closed = False

    def checkout(self) -> sqlite3.Connection:
        """An idle connection of this process, or a new one. A connection is used by one thread at a
        time and goes back to the idle list after each call, so threads that come and go (renewers,
        executor workers) reuse connections instead of leaking one each."""
        if self._closed:
            raise BackendUnavailable(f"the SQLite lock backend for {self.path} was closed; make a new one")
        if self._idle_pid != os.getpid():
            # Forked: the parent's connections must not be used (nor closed) here; open our own.
            self._idle, self._idle_pid, self._born = [], os.getpid(), {}
        if self._file_id is not None and self._file_id != _file_id(self.path):
            # The lock file was deleted or replaced. Open connections would go on using the old inode,
            # a lock universe nobody else sees; move to the file at the path instead. A holder's next
            # renewal then finds its lease gone and is told; fences stay increasing (clock floor).
            self._generation += 1
            self._file_id, self._schema_ready = None, False
            stale, self._idle = self._idle, []
            for conn in stale:
                self._discard(conn)
        try:
            return self._idle.pop()  # atomic under the GIL
        except IndexError:
            pass
        generation = self._generation
        conn = self._open()
        self._born[id(conn)] = generation
        if self._file_id is None:
            self._file_id = _file_id(self.path)
        return conn

    def checkin(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:  # only after an interrupted rollback: never keep the write lock
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        if (
            self._closed
            or self._idle_pid != os.getpid()
            or len(self._idle) >= MAX_IDLE
            or self._born.get(id(conn)) != self._generation
        ):
            self._discard(conn)
        else:
            self._idle.append(conn)

    def _discard(self, conn: sqlite3.Connection) -> None:
        self._born.pop(id(conn), None)
        with contextlib.suppress(sqlite3.Error):
            conn.close()

    def _open(self) -> sqlite3.Connection:
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        except OSError as err:
            raise BackendRejected(
                f"cannot create the directory of the SQLite lock database {self.path}: {err}; create it, "
                "or point sqlite:/// at a writable place"
            ) from err
        try:
            # isolation_level=None: we write BEGIN/COMMIT ourselves. timeout = SQLite's busy timeout.
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,  # handed between threads, one at a time
                cached_statements=64,
            )
        except sqlite3.Error as err:
            raise self.translate(err, "open") from err
        try:
            self._prepare(conn)
        except sqlite3.Error as err:
            conn.close()
            raise self.translate(err, "open") from err
        except BaseException:
            conn.close()
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """WAL mode, durability level, tables: safe when many processes open a new (or 0.1.0) file at once."""
        switch_to_wal(conn, self.busy_timeout)
        conn.execute("PRAGMA synchronous=NORMAL")  # per connection; see "Durability" in the package docstring
        if self._schema_ready:
            return
        ensure_layout(conn)  # creates the tables, or upgrades a 0.1.0 file, in one write transaction
        self._schema_ready = True

    def close(self) -> None:
        """Close this process's connections (one in use by a running call closes when it ends)."""
        self._closed = True
        idle, self._idle = self._idle, []
        if self._idle_pid == os.getpid():
            for conn in idle:
                self._discard(conn)

    # -- one place for transactions and error translation -----------------------------------------

    def run(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(conn)`` on a checked-out connection, in autocommit mode (each write statement is its
        own transaction); sqlite3 errors become fencelock's."""
        conn = self.checkout()
        try:
            return fn(conn)
        except sqlite3.Error as err:
            raise self.translate(err, what) from err
        finally:
            self.checkin(conn)

    def write(self, what: str, body: Callable[[sqlite3.Connection, float], T]) -> T:
        """Run ``body(conn, now)`` in one ``BEGIN IMMEDIATE`` transaction. ``now`` is read after the
        write lock is ours, so a long busy wait cannot make a lease look younger than it is."""

        def transaction(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = body(conn, self._clock())
                conn.execute("COMMIT")
            except BaseException:
                # Also on KeyboardInterrupt: an open transaction would keep the file's write lock.
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            return result

        return self.run(what, transaction)

    def one(self, what: str, sql: str, params: dict[str, Any] | tuple[Any, ...]) -> Any:
        """The first row of one read statement (or None)."""
        return self.run(what, lambda conn: conn.execute(sql, params).fetchone())

    def all(self, what: str, sql: str, params: dict[str, Any] | tuple[Any, ...]) -> list[Any]:
        """Every row of one read statement."""
        return self.run(what, lambda conn: conn.execute(sql, params).fetchall())

    def count(self, what: str, sql: str, params: dict[str, Any] | tuple[Any, ...]) -> int:
        """How many rows one write statement changed."""
        return self.run(what, lambda conn: conn.execute(sql, params).rowcount)

    def translate(self, err: sqlite3.Error, what: str) -> BackendError:
        """sqlite3's exceptions -> fencelock's tree, each with what to do about it."""
        code = str(getattr(err, "sqlite_errorname", ""))  # Python >= 3.11
        msg = str(err)
        path = self.path
        if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in msg:
            return BackendUnavailable(
                f"SQLite lock database {path} stayed locked longer than the busy timeout "
                f"({self.busy_timeout:g} s) during {what}: another connection holds a long write "
                f"transaction on it. Find it (fuser {path}), keep other data out of the lock file, or "
                "raise the limit with ?busy_timeout=SECONDS in the URL"
            )
        if code.startswith("SQLITE_READONLY") or "readonly" in msg:
            directory = os.path.dirname(path)
            if os.access(path, os.W_OK) and not os.access(directory, os.W_OK):
                return BackendRejected(
                    f"the directory {directory} of SQLite lock database {path} is read-only for this "
                    f"process (during {what}): SQLite must create {path}-wal and {path}-shm beside the "
                    "file; make the directory writable, or move the lock file to a writable one"
                )
            return BackendRejected(
                f"SQLite lock database {path} is read-only for this process (during {what}): give it write "
                f"permission on the file and on its directory (SQLite creates {path}-wal and {path}-shm "
                "beside it), or point sqlite:/// at a writable path"
            )
        if code.startswith("SQLITE_CANTOPEN") or "unable to open" in msg:
            return BackendRejected(
                f"cannot open or create the SQLite lock database {path} (during {what}): its directory "
                "must exist (or be creatable) and be writable by this process, and the path must not "
                "be a directory"
            )
        if code.startswith("SQLITE_NOTADB") or "not a database" in msg:
            return BackendRejected(
                f"{path} is not a SQLite database (during {what}): point sqlite:/// at a new path "
                "(fencelock creates the file), never at a file of another kind"
            )
        if code.startswith("SQLITE_CORRUPT") or "malformed" in msg:
            return BackendRejected(
                f"SQLite lock database {path} is corrupt (during {what}): stop every process using it, "
                "move it away and let fencelock create a new one (fences stay increasing: they are "
                "seeded from the clock)"
            )
        if code.startswith(("SQLITE_FULL", "SQLITE_IOERR")):
            return BackendUnavailable(f"I/O error on SQLite lock database {path} during {what}: {msg}")
        return BackendRejected(f"SQLite error during {what} on {path}: {msg}")
