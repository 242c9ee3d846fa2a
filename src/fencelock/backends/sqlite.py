"""Embedded SQLite backend: one lock file, many processes, **one host**, no server (stdlib ``sqlite3``).

URL: ``sqlite:///relative/locks.db`` (relative to the working directory when the backend is made) or
``sqlite:////absolute/locks.db``; ``?busy_timeout=SECONDS`` (default 5) bounds how long one call
waits for another process's write transaction. The file and its directory are created if missing.

Tables (all in the one file; names start with ``fencelock_`` but keep other data out of this file:
a long write transaction of your own would stall every lock call for up to the busy timeout)::

    fencelock_fence(name PK, last)                  last fence issued; never decreases, never deleted
    fencelock_lock(name PK, token, fence, label,    the current lease; ``deadline`` is on the host's
                   boot, deadline, ttl)             CLOCK_MONOTONIC of boot ``boot``
    fencelock_waiter(name, token PK, seq, boot,     FIFO queue of live waiters
                     alive)

Transactions. ``try_acquire`` is one ``BEGIN IMMEDIATE`` transaction (it takes SQLite's single write
lock at once, so reading the row and writing the new lease cannot interleave with another process);
``extend`` and ``release`` are one write statement each (an autocommit write statement takes the
write lock when it starts and commits when it ends: one transaction, no read-then-upgrade race).
``busy_timeout`` bounds every wait for the write lock; when it runs out the call raises
``BackendUnavailable``, never returns False.

Fences. ``max(last + 1, wall-clock microseconds)``, minted and stored in the acquire transaction. The
counter alone is durable against any process crash (see *Durability*); the clock term keeps fences
increasing when the counter is lost anyway: the file deleted, kept on a tmpfs across a reboot, or
its last commits lost in a power failure. **Assumption** (as for Redis): when the counter is lost,
the wall clock reads later than when the last fence was issued.

Deadlines. A lease ends at ``time.monotonic() + ttl`` measured inside the transaction. Every process
of one host reads the same ``CLOCK_MONOTONIC``, which never jumps with NTP or a manual clock change,
so expiry needs no wall clock. Hence **one host only**: never share the file between machines (NFS,
a volume shared by VMs: their monotonic clocks are unrelated, and SQLite's locking is unreliable on
network filesystems anyway). Processes in different Linux *time namespaces* (``unshare --time``)
have offset monotonic clocks and must not share a file either; ordinary containers on one kernel may.
A reboot resets the monotonic clock: every row carries the boot id (``/proc/sys/kernel/random/
boot_id``) and rows of another boot count as expired (their holders died with that boot). Where no
boot id exists, a row whose deadline lies further ahead than its own ``ttl`` cannot come from this
clock and counts as expired too; that bound also holds on Linux.

An unreadable boot id. Some sandboxes hide ``/proc/sys`` from a process of the same boot (systemd's
``ProcSubset=pid``, a chroot without ``/proc``): it records ``unknown``. Two *known* ids that differ
prove a reboot; ``unknown`` on either side proves nothing, so such a row is judged by its deadline
alone, never expired for its boot. Otherwise each side would take the other's live lease for one of
an earlier boot: two holders. The price is liveness only: after a reboot, a lease of an ``unknown``
row (or one read by an ``unknown`` process) lingers until its deadline, at most its ``ttl``, or is
expired at once by the "further ahead than its ttl" bound. No substitute id is derived from the
clocks: ``btime`` in ``/proc/stat`` (hidden by ``ProcSubset=pid`` too) and CLOCK_REALTIME minus
CLOCK_BOOTTIME both move when the wall clock is stepped, so two processes of one boot could compute
different ids, which is the very disagreement to avoid.

Waiting: first come first served; bounded polling, plus a doorbell. A contender that must wait
enqueues its token in ``fencelock_waiter`` (refreshing an ``alive`` stamp at least every ``REFRESH``
seconds); a free lock is granted only to the first live waiter, or to anyone when nobody waits, so
newcomers cannot barge in. ``wait()`` looks with cheap reads (WAL readers never block on the writer)
and sleeps between looks with full-jitter exponential backoff, never longer than the holder's
remaining lease or the timeout. The sleep is cut short by a doorbell: on Linux each waiter listens
on an abstract unix datagram socket named after its token (no file; it vanishes with the process),
and ``release``/``abandon`` ring the first waiter's after their commit. The doorbell is only a hint,
correctness never depends on it: without one (not Linux) the first waiter polls every ``HEAD_POLL``
seconds; a ring that cannot arrive (waiter in another network namespace) costs the first waiter at
most ``HEAD_CAP``, its longest sleep. A waiter that stops polling
(killed, paused) loses its turn ``REGISTRATION`` seconds after its last poll; until then a free lock
may sit idle.

Durability. WAL with ``synchronous=NORMAL``: a commit is appended to the WAL file with ``write()``
and no ``fsync``; the data is in the kernel's page cache the moment the call returns, so a crash of
any or every *process* (SIGKILL included) loses nothing. Only an OS crash or power cut can lose the
last commits; then every holder died too, and the clock seed keeps the fences increasing.
``synchronous=FULL`` would fsync every acquire (milliseconds on a disk) for no gain in that case.
An uncommitted transaction of a killed process is discarded by SQLite and its write lock freed by
the kernel.

Threads and processes: each call checks out a connection of its own from a small idle list and hands
it back (one connection per concurrently calling thread, reused by threads that come and go; the
statement cache makes every statement here a prepared one). A forked child opens its own (SQLite
connections must not cross ``fork()``). Each checkout compares the file at the path with the one the
connections have open (one ``stat``): if it was deleted or replaced, they are dropped and the file at
the path is opened, so nobody keeps locking in a deleted file that the others no longer see.
``AsyncSqliteBackend`` runs the same calls in
the default executor, as ``asyncio.to_thread`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import math
import os
import random
import select
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote

from .._errors import BackendError, BackendRejected, BackendUnavailable, ConfigurationError
from .base import Attempt, LockInfo

__all__ = ["AsyncSqliteBackend", "SqliteBackend", "parse_sqlite_url"]

T = TypeVar("T")
Clock = Callable[[], float]

DEFAULT_BUSY_TIMEOUT = 5.0
"""Seconds one call may wait for another connection's write transaction before it raises."""

REGISTRATION = 2.0
"""A waiter counts as alive this long after its last ``try_acquire`` (it refreshes every REFRESH)."""

REFRESH = 0.5
"""Longest ``retry_after`` we hand out, so a waiting lock calls ``try_acquire`` (which refreshes its
``alive`` stamp) at least this often."""

HEAD_POLL = 0.001
"""Poll interval of the first waiter when doorbells cannot ring (not Linux): the one that takes the
lock next must notice a release fast."""

BACKOFF_BASE = 0.002
BACKOFF_CAP = 0.05
"""Full-jitter backoff between looks: uniform in [0, min(CAP, BASE * 2**n)]."""

HEAD_CAP = 0.01
"""The first waiter's backoff cap when it has a doorbell: a ring that could not arrive costs it at
most this."""

MAX_IDLE = 8
"""Idle connections kept per backend (more are closed when handed back)."""

_EPSILON = 0.001
"""Float slack in the "deadline at most ttl ahead" check (both sides come from one clock)."""

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS fencelock_fence (
        name TEXT PRIMARY KEY,
        last INTEGER NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS fencelock_lock (
        name TEXT PRIMARY KEY,
        token TEXT NOT NULL,
        fence INTEGER NOT NULL,
        label TEXT NOT NULL,
        boot TEXT NOT NULL,
        deadline REAL NOT NULL,
        ttl REAL NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS fencelock_waiter (
        name TEXT NOT NULL,
        token TEXT NOT NULL,
        seq INTEGER NOT NULL,
        boot TEXT NOT NULL,
        alive REAL NOT NULL,
        PRIMARY KEY (name, token)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS fencelock_waiter_order ON fencelock_waiter (name, seq)",
)

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
UNKNOWN_BOOT = "unknown"
"""The boot id recorded by a process that cannot read one (see "An unreadable boot id" above)."""

# A row is of this boot unless both ids are known and differ: "unknown" proves no reboot.
_SAME_BOOT = f"(boot = :boot OR boot = '{UNKNOWN_BOOT}' OR :boot = '{UNKNOWN_BOOT}')"

# A lease row is live when it may come from this boot, has not reached its deadline, and its
# deadline is not further ahead than its own ttl (which only a row written on another clock can be).
_LIVE = f"{_SAME_BOOT} AND deadline > :now AND deadline <= :now + ttl + {_EPSILON}"

_SELECT_LOCK = "SELECT token, fence, boot, deadline, ttl, label FROM fencelock_lock WHERE name = ?"
_SELECT_HEAD = "SELECT token, boot, alive FROM fencelock_waiter WHERE name = ? ORDER BY seq LIMIT 1"
_SELECT_FENCE = "SELECT last FROM fencelock_fence WHERE name = ?"
_STORE_FENCE = "INSERT OR REPLACE INTO fencelock_fence (name, last) VALUES (?, ?)"
_STORE_LOCK = (
    "INSERT OR REPLACE INTO fencelock_lock (name, token, fence, label, boot, deadline, ttl) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_ENQUEUE = (
    "INSERT INTO fencelock_waiter (name, token, seq, boot, alive) "
    "VALUES (:name, :token, (SELECT COALESCE(MAX(seq), 0) + 1 FROM fencelock_waiter WHERE name = :name), "
    ":boot, :alive) ON CONFLICT (name, token) DO UPDATE SET alive = excluded.alive, boot = excluded.boot"
)
_DEQUEUE = "DELETE FROM fencelock_waiter WHERE name = ? AND token = ?"
_EXTEND = (
    f"UPDATE fencelock_lock SET deadline = :now + :ttl, ttl = :ttl WHERE name = :name AND token = :token AND {_LIVE}"
)
_RELEASE = f"DELETE FROM fencelock_lock WHERE name = :name AND token = :token AND {_LIVE}"
_DROP_OWN = "DELETE FROM fencelock_lock WHERE name = ? AND token = ?"
_COUNT_WAITERS = f"SELECT COUNT(*) FROM fencelock_waiter WHERE name = :name AND {_SAME_BOOT} AND alive > :now"

log = logging.getLogger("fencelock")
_told_unknown = False


def read_boot_id(path: str | None = None) -> str:
    """This boot's id: changes at every reboot, which resets ``CLOCK_MONOTONIC``.

    ``UNKNOWN_BOOT`` where it cannot be read (not Linux, or hidden by a sandbox): then the "deadline
    at most ttl ahead" check and the deadline itself make rows of an earlier boot expire (at the
    latest ``ttl`` after the reboot), and a live row is never taken for one of another boot.
    ``path`` is for tests; the default is ``BOOT_ID_PATH``.
    """
    global _told_unknown
    source = BOOT_ID_PATH if path is None else path
    try:
        with open(source, encoding="ascii") as f:
            boot = f.read().strip()
        problem = "it is empty"
    except (OSError, UnicodeDecodeError) as err:
        boot, problem = "", f"{type(err).__name__}: {err}"
    if boot and boot != UNKNOWN_BOOT:
        return boot
    if not _told_unknown and sys.platform.startswith("linux"):
        _told_unknown = True
        log.info(
            "cannot read the boot id from %s (%s): SQLite leases are judged by their deadlines alone, "
            "so after a reboot an old lease lingers until its ttl ends (safe, only slower); "
            "show the file to this process (e.g. systemd ProcSubset=all) to expire them at once",
            source, problem,
        )
    return UNKNOWN_BOOT


def _file_id(path: str) -> tuple[int, int] | None:
    """Which file is at ``path`` now (device, inode); None when there is none (or it cannot be seen)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def parse_sqlite_url(url: str) -> tuple[str, float]:
    """``sqlite:///rel/path.db`` or ``sqlite:////abs/path.db`` [``?busy_timeout=SECONDS``] ->
    (absolute path, busy timeout). Raises ``ConfigurationError`` before any I/O."""
    if not url.startswith("sqlite://"):
        raise ConfigurationError(f"not a SQLite URL: {url!r} (use sqlite:///path/to/locks.db)")
    rest, _, query = url[len("sqlite://") :].partition("?")
    if not rest.startswith("/") or rest in ("/", "//"):
        raise ConfigurationError(
            f"SQLite lock URL {url!r} needs a file path: sqlite:///relative/locks.db or "
            "sqlite:////absolute/locks.db (three slashes, then the path; no host)"
        )
    path = unquote(rest[1:])
    if path in (":memory:", "") or path.startswith("file:"):
        raise ConfigurationError(
            f"SQLite lock URL {url!r}: an in-memory or URI database is private to one connection and "
            "cannot lock anything between processes; give a file path"
        )
    busy = DEFAULT_BUSY_TIMEOUT
    params = parse_qs(query, keep_blank_values=True)
    unknown = set(params) - {"busy_timeout"}
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {sorted(unknown)} in SQLite lock URL; the only option is busy_timeout=SECONDS"
        )
    if "busy_timeout" in params:
        busy = _busy_timeout(params["busy_timeout"][-1])
    return os.path.abspath(path), busy


def _busy_timeout(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not 0 < seconds < 3600:
        raise ConfigurationError(
            f"busy_timeout must be a number of seconds between 0 and 3600, got {value!r}; it bounds how "
            "long a call waits for another process's write transaction"
        )
    return seconds


class Doorbells:
    """Wake-ups between the processes of one host, best effort (see "Waiting" above).

    A waiter listens on the abstract unix datagram socket ``\\0fencelock-wake-<token>`` while it
    waits; ``ring(token)`` sends it one byte. Abstract names need no file and disappear when their
    socket is closed or the process dies. Anyone on the host could ring: a spurious ring only costs
    one refused attempt.
    """

    enabled = sys.platform.startswith("linux")

    def __init__(self) -> None:
        self._listening: dict[str, socket.socket] = {}
        self._mutex = threading.Lock()
        self._sender: tuple[int, socket.socket] | None = None

    @staticmethod
    def address(token: str) -> str:
        return "\0fencelock-wake-" + token

    def listen(self, token: str) -> socket.socket | None:
        """The socket ``token`` waits on (bound on first use); None where doorbells cannot work."""
        sock = self._listening.get(token)
        if sock is not None or not self.enabled:
            return sock
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(self.address(token))
            sock.setblocking(False)
        except OSError:
            return None  # e.g. a sandbox without unix sockets: polling only
        with self._mutex:
            self._listening[token] = sock
        return sock

    def hang_up(self, token: str) -> None:
        """Stop listening for ``token`` (its acquire ended: granted or given up)."""
        if token in self._listening:
            with self._mutex:
                sock = self._listening.pop(token, None)
            if sock is not None:
                sock.close()

    def wait(self, token: str, seconds: float) -> bool:
        """Sleep up to ``seconds``, less if ``token``'s bell rings; True if it rang."""
        sock = self.listen(token)
        if sock is None:
            time.sleep(seconds)
            return False
        poller = select.poll()  # not select.select: it fails on descriptors above 1023
        poller.register(sock, select.POLLIN)
        if poller.poll(math.ceil(max(0.0, seconds) * 1000)):
            drain(sock)
            return True
        return False

    def ring(self, token: str) -> None:
        """Wake ``token``'s waiter if it listens; silently nothing otherwise."""
        if not self.enabled:
            return
        pid = os.getpid()
        try:
            if self._sender is None or self._sender[0] != pid:
                sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sender.setblocking(False)
                self._sender = (pid, sender)
            self._sender[1].sendto(b"!", self.address(token))
        except OSError:
            pass  # nobody listening (ECONNREFUSED), buffer full (already rung): the waiter polls anyway

    def close(self) -> None:
        with self._mutex:
            socks, self._listening = list(self._listening.values()), {}
        if self._sender is not None and self._sender[0] == os.getpid():
            socks.append(self._sender[1])
        self._sender = None
        for sock in socks:
            sock.close()


def drain(sock: socket.socket) -> None:
    """Read every ring that queued up, so the next wait sleeps until a new one."""
    for _ in range(64):
        try:
            sock.recv(16)
        except OSError:  # BlockingIOError: empty
            return


class SqliteBackend:
    """Blocking fencelock backend on one SQLite file (see the module docstring for how it works).

    ``clock`` and ``boot_id`` exist for tests (simulated reboots): every process sharing a file must
    use the host's ``time.monotonic`` and its real boot id, which are the defaults.
    """

    name = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        clock: Clock = time.monotonic,
        boot_id: str | None = None,
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.busy_timeout = _busy_timeout(busy_timeout)
        self._clock = clock
        self.boot = read_boot_id() if boot_id is None else boot_id
        self._idle: list[sqlite3.Connection] = []
        self._idle_pid = os.getpid()
        self._file_id: tuple[int, int] | None = None  # (st_dev, st_ino) our connections have open
        self._generation = 0  # bumped when the file at ``path`` was deleted or replaced
        self._born: dict[int, int] = {}  # id(connection) -> generation it was opened in
        self._schema_ready = False
        self._closed = False
        self.bells = Doorbells()

    @classmethod
    def from_url(cls, url: str) -> SqliteBackend:
        path, busy = parse_sqlite_url(url)
        return cls(path, busy_timeout=busy)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path!r}>"

    # -- connections -----------------------------------------------------------------------------

    def _checkout(self) -> sqlite3.Connection:
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

    def _checkin(self, conn: sqlite3.Connection) -> None:
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
            raise self._translate(err, "open") from err
        try:
            self._prepare(conn)
        except sqlite3.Error as err:
            conn.close()
            raise self._translate(err, "open") from err
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """WAL mode, durability level, schema: safe when many processes open a new file at once."""
        # Switching a new file to WAL takes an exclusive lock. Two connections switching at once can
        # each hold the shared lock the other waits on, and SQLite's busy handler would let both
        # wait out the whole busy timeout: so try without waiting, and back off between tries.
        conn.execute("PRAGMA busy_timeout = 0")
        end = time.monotonic() + self.busy_timeout
        for attempt in range(10_000):  # bounded by the busy timeout; the count is a backstop
            try:
                conn.execute("PRAGMA journal_mode=WAL").fetchone()  # persistent: a no-op once set
                break
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() >= end:
                    raise
                time.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** min(attempt, 8))))
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        conn.execute("PRAGMA synchronous=NORMAL")  # per connection; see "Durability" above
        if self._schema_ready:
            return
        present = conn.execute(
            "SELECT COUNT(*) FROM sqlite_master WHERE name IN "
            "('fencelock_fence', 'fencelock_lock', 'fencelock_waiter', 'fencelock_waiter_order')"
        ).fetchone()[0]
        if present < 4:  # create in one write transaction (readers of a read-only file skip this)
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        self._schema_ready = True

    def close(self) -> None:
        """Close this process's connections (one in use by a running call closes when it ends)."""
        self._closed = True
        idle, self._idle = self._idle, []
        if self._idle_pid == os.getpid():
            for conn in idle:
                self._discard(conn)
        self.bells.close()

    # -- one place for transactions and error translation -----------------------------------------

    def _run(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(conn)`` on a checked-out connection, in autocommit mode (each write statement is its
        own transaction); sqlite3 errors become fencelock's."""
        conn = self._checkout()
        try:
            return fn(conn)
        except sqlite3.Error as err:
            raise self._translate(err, what) from err
        finally:
            self._checkin(conn)

    def _write(self, what: str, body: Callable[[sqlite3.Connection, float], T]) -> T:
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

        return self._run(what, transaction)

    def _one(self, what: str, sql: str, params: dict[str, Any] | tuple[Any, ...]) -> Any:
        """The first row of one read statement (or None)."""
        return self._run(what, lambda conn: conn.execute(sql, params).fetchone())

    def _count(self, what: str, sql: str, params: dict[str, Any] | tuple[Any, ...]) -> int:
        """How many rows one write statement changed."""
        return self._run(what, lambda conn: conn.execute(sql, params).rowcount)

    def _translate(self, err: sqlite3.Error, what: str) -> BackendError:
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

    # -- the primitives ---------------------------------------------------------------------------

    def _same_boot(self, boot: Any) -> bool:
        """Same rule as ``_SAME_BOOT``: only two known, different ids prove a reboot."""
        return bool(boot == self.boot or UNKNOWN_BOOT in (boot, self.boot))

    def _live(self, row: tuple[Any, ...], now: float) -> bool:
        """Same rule as ``_LIVE`` (token, fence, boot, deadline, ttl, ...)."""
        return self._same_boot(row[2]) and bool(now < row[3] <= now + row[4] + _EPSILON)

    def _waiting(self, row: tuple[Any, ...], now: float) -> bool:
        """Is the waiter row (token, boot, alive) live: of this boot, and polled lately on this clock."""
        return self._same_boot(row[1]) and bool(now < row[2] <= now + REGISTRATION + _EPSILON)

    def try_acquire(self, key: str, token: str, ttl_ms: int, label: str, queue: bool) -> Attempt:
        ttl = ttl_ms / 1000

        def body(conn: sqlite3.Connection, now: float) -> Attempt:
            row = conn.execute(_SELECT_LOCK, (key,)).fetchone()
            if row is not None and self._live(row, now):
                if row[0] == token:  # ours already (a repeated request): refresh and answer again
                    conn.execute(_STORE_LOCK, (key, token, row[1], label, self.boot, now + ttl, ttl))
                    return Attempt(fence=int(row[1]))
                if queue:
                    self._enqueue(conn, key, token, now)
                return Attempt(fence=None, retry_after=min(row[3] - now, REFRESH))
            head = self._head(conn, key, now)
            if head is not None and head != token:  # free, but others were waiting first
                if queue:
                    self._enqueue(conn, key, token, now)
                return Attempt(fence=None, retry_after=REFRESH)
            last = conn.execute(_SELECT_FENCE, (key,)).fetchone()
            fence = max((last[0] if last else 0) + 1, time.time_ns() // 1000)
            conn.execute(_STORE_FENCE, (key, fence))
            conn.execute(_STORE_LOCK, (key, token, fence, label, self.boot, now + ttl, ttl))
            if head is not None:
                conn.execute(_DEQUEUE, (key, token))
            return Attempt(fence=fence)

        attempt = self._write("acquire", body)
        if attempt.fence is not None:
            self.bells.hang_up(token)
        return attempt

    def _enqueue(self, conn: sqlite3.Connection, key: str, token: str, now: float) -> None:
        conn.execute(_ENQUEUE, {"name": key, "token": token, "boot": self.boot, "alive": now + REGISTRATION})

    def _head(self, conn: sqlite3.Connection, key: str, now: float) -> str | None:
        """The first live waiter's token; drops dead ones on the way (bounded work per call: after
        32 dead ones, the next in line counts as first). Inside a write transaction only."""
        for _ in range(32):
            row = conn.execute(_SELECT_HEAD, (key,)).fetchone()
            if row is None:
                return None
            if self._waiting(row, now):
                return str(row[0])
            conn.execute(_DEQUEUE, (key, row[0]))
        row = conn.execute(_SELECT_HEAD, (key,)).fetchone()
        return None if row is None else str(row[0])

    def probe(self, key: str, token: str) -> tuple[bool, bool, float | None]:
        """A read-only look (no write lock, never blocks on the writer in WAL mode): is it worth
        calling ``try_acquire`` now, are we first in line, and how long the holder has left."""

        def look(conn: sqlite3.Connection) -> tuple[Any, Any]:
            return conn.execute(_SELECT_LOCK, (key,)).fetchone(), conn.execute(_SELECT_HEAD, (key,)).fetchone()

        row, head = self._run("wait", look)
        now = self._clock()  # after the read: a row written meanwhile is not "ahead of our clock"
        if row is not None and self._live(row, now):
            return False, head is not None and head[0] == token, float(row[3] - now)
        if head is None or head[0] == token:
            return True, True, None
        live = self._waiting(head, now)
        return not live, not live, None  # a dead head is dropped by the next try_acquire

    def wait(self, key: str, token: str, timeout: float) -> None:
        """Look (see "Waiting" above) until the lock seems takeable for us or ``timeout`` passes.
        Always None: this backend never hands a lock over, the caller takes it with try_acquire."""
        end = self._clock() + max(0.0, timeout)
        rung = self.bells.listen(token) is not None  # listen before looking: no ring is missed
        for attempt in range(1_000_000):  # bounded by the clock below; the count is a backstop
            ready, first, holder_left = self.probe(key, token)
            left = end - self._clock()
            if ready or left <= 0:
                return None
            if self.bells.wait(token, poll_delay(attempt, first, holder_left, left, rung)):
                return None  # rung: the lock was just freed for us, try at once (no look first)
        return None

    def ring_first(self, key: str) -> None:
        """After a commit that may have freed the lock: wake the first waiter (best effort)."""
        if not self.bells.enabled:
            return
        with contextlib.suppress(BackendError):
            head = self._one("wake", _SELECT_HEAD, (key,))
            if head is not None:
                self.bells.ring(str(head[0]))

    def abandon(self, key: str, token: str) -> None:
        """Leave the queue; drop the lock too if an acquire of ``token`` succeeded unseen."""

        def body(conn: sqlite3.Connection, now: float) -> None:
            conn.execute(_DEQUEUE, (key, token))
            conn.execute(_DROP_OWN, (key, token))

        self.bells.hang_up(token)
        self._write("abandon", body)
        self.ring_first(key)  # we may have been first in line, or held it: the next one goes

    def extend(self, key: str, token: str, ttl_ms: int) -> bool:
        params = {"name": key, "token": token, "ttl": ttl_ms / 1000, "boot": self.boot, "now": self._clock()}
        return self._count("extend", _EXTEND, params) == 1

    def release(self, key: str, token: str) -> bool:
        params = {"name": key, "token": token, "boot": self.boot, "now": self._clock()}
        released = self._count("release", _RELEASE, params) == 1
        if released:
            self.ring_first(key)
        return released

    def inspect(self, key: str) -> LockInfo | None:
        row = self._one("inspect", _SELECT_LOCK, (key,))
        now = self._clock()  # after the read, as in probe()
        if row is None or not self._live(row, now):
            return None
        waiters = self._one("inspect", _COUNT_WAITERS, {"name": key, "boot": self.boot, "now": now})[0]
        return LockInfo(key, int(row[1]), str(row[5]), max(0.0, row[3] - now), int(waiters))

    def last_fence(self, key: str) -> int:
        """The last fence issued for ``key`` (0 when none): for tests and monitoring."""
        row = self._one("read fence", _SELECT_FENCE, (key,))
        return 0 if row is None else int(row[0])

    def force_release(self, key: str) -> str | None:
        """Operator's override: delete the lock row whatever its token. Returns the holder's label,
        or None when the lock was not held (an expired row is deleted too, silently)."""

        def body(conn: sqlite3.Connection, now: float) -> str | None:
            row = conn.execute(_SELECT_LOCK, (key,)).fetchone()
            conn.execute("DELETE FROM fencelock_lock WHERE name = ?", (key,))
            return str(row[5]) if row is not None and self._live(row, now) else None

        return self._write("force release", body)



def poll_delay(attempt: int, first: bool, holder_left: float | None, left: float, rung: bool) -> float:
    """How long ``wait`` sleeps before its next look: full-jitter backoff (the first waiter's capped
    at ``HEAD_CAP``, or a fixed ``HEAD_POLL`` when no doorbell can wake it); never past the holder's
    deadline or the caller's timeout."""
    if first and not rung:
        delay = HEAD_POLL * random.uniform(0.5, 1.0)
    else:
        cap = HEAD_CAP if first else BACKOFF_CAP
        delay = random.uniform(0, min(cap, BACKOFF_BASE * 2 ** min(attempt, 16)))
    if holder_left is not None:
        delay = min(delay, holder_left)
    return min(left, max(0.0002, delay))  # a floor against busy loops; never past the timeout


async def _off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking call in a worker thread. If the caller is cancelled meanwhile, still wait for
    the thread (it cannot be stopped, and each call is bounded by the busy timeout) before passing
    the cancellation on: the lock's cleanup that follows (``abandon``) then sees what the call did,
    so a lock granted to a cancelled acquire is dropped, not left behind until its TTL."""
    # What asyncio.to_thread does (default executor, caller's contextvars), minus the task it wraps
    # around the future: the future alone is enough to shield.
    call = functools.partial(contextvars.copy_context().run, fn, *args)
    task = asyncio.get_running_loop().run_in_executor(None, call)
    interrupted: BaseException | None = None
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as err:
            interrupted = err
    if interrupted is not None:
        if not task.cancelled():
            task.exception()  # retrieved: the cancellation wins
        raise interrupted
    return task.result()


class AsyncSqliteBackend:
    """asyncio twin of ``SqliteBackend``: the same calls in worker threads; sleeps on the loop."""

    name = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        clock: Clock = time.monotonic,
        boot_id: str | None = None,
    ) -> None:
        self.sync = SqliteBackend(path, busy_timeout=busy_timeout, clock=clock, boot_id=boot_id)
        self._clock = clock

    @classmethod
    def from_url(cls, url: str) -> AsyncSqliteBackend:
        path, busy = parse_sqlite_url(url)
        return cls(path, busy_timeout=busy)

    @property
    def path(self) -> str:
        return self.sync.path

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.sync.path!r}>"

    async def try_acquire(self, key: str, token: str, ttl_ms: int, label: str, queue: bool) -> Attempt:
        return await _off_loop(self.sync.try_acquire, key, token, ttl_ms, label, queue)

    async def wait(self, key: str, token: str, timeout: float) -> None:
        """Same polling as the blocking ``wait``; the reads run in a thread, the sleeps on the loop
        (so cancelling a waiter is immediate and leaves nothing behind: a read changes nothing)."""
        end = self._clock() + max(0.0, timeout)
        bell = self.sync.bells.listen(token)
        loop = asyncio.get_running_loop()
        for attempt in range(1_000_000):
            ready, first, holder_left = await _off_loop(self.sync.probe, key, token)
            left = end - self._clock()
            if ready or left <= 0:
                return None
            delay = poll_delay(attempt, first, holder_left, left, bell is not None)
            if bell is None:
                await asyncio.sleep(delay)
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(loop.sock_recv(bell, 16), delay)
                drain(bell)
                return None  # rung: try at once
        return None

    async def abandon(self, key: str, token: str) -> None:
        await _off_loop(self.sync.abandon, key, token)

    async def extend(self, key: str, token: str, ttl_ms: int) -> bool:
        return await _off_loop(self.sync.extend, key, token, ttl_ms)

    async def release(self, key: str, token: str) -> bool:
        return await _off_loop(self.sync.release, key, token)

    async def inspect(self, key: str) -> LockInfo | None:
        return await _off_loop(self.sync.inspect, key)

    async def last_fence(self, key: str) -> int:
        return await _off_loop(self.sync.last_fence, key)

    async def force_release(self, key: str) -> str | None:
        return await _off_loop(self.sync.force_release, key)

    async def aclose(self) -> None:
        await _off_loop(self.sync.close)  # the last close of a file checkpoints it: blocking I/O
