"""The primitives of the SQLite backend (see the package docstring for how it works)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from ..._core.params import backoff
from ..._errors import BackendError, LimitMismatch
from ..base import RW_LIMIT, Attempt, HolderInfo, LockInfo, check_counted
from ..offload import Offloaded, off_loop
from .boot import UNKNOWN_BOOT, read_boot_id
from .doorbell import Doorbells, drain
from .pool import Connections
from .schema import (
    _COUNT_WAITERS,
    _DEQUEUE,
    _DROP_DEAD,
    _DROP_EXPIRED,
    _DROP_NAME,
    _DROP_OWN,
    _ENQUEUE,
    _EXTEND,
    _LIVE_HEAD,
    _LIVE_QUEUE,
    _REFRESH,
    _RELEASE,
    _SELECT_FENCE,
    _SELECT_HEAD,
    _SELECT_HOLDERS,
    _STORE_FENCE,
    _STORE_LEASE,
    EPSILON,
)
from .urls import DEFAULT_BUSY_TIMEOUT, check_busy_timeout, parse_sqlite_url

__all__ = ["AsyncSqliteBackend", "SqliteBackend", "poll_delay"]

Clock = Callable[[], float]

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

RING_MAX = 256
"""Most waiters one commit rings (readers let in together); those behind are rung by the grants of
the first ones, or find out by polling."""

MAX_LIMIT = RW_LIMIT
"""The largest limit a name can have (a read-write lock's)."""


class SqliteBackend:
    """Blocking fencelock backend on one SQLite file (see the package docstring for how it works).

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
        self.busy_timeout = check_busy_timeout(busy_timeout)
        self.request_timeout = self.busy_timeout
        self._clock = clock
        self.boot = read_boot_id() if boot_id is None else boot_id
        self.db = Connections(self.path, self.busy_timeout, clock)
        self.bells = Doorbells()

    @classmethod
    def from_url(cls, url: str) -> SqliteBackend:
        path, busy = parse_sqlite_url(url)
        return cls(path, busy_timeout=busy)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path!r}>"

    def close(self) -> None:
        """Close this process's connections (one in use by a running call closes when it ends)."""
        self.db.close()
        self.bells.close()

    # -- the primitives ---------------------------------------------------------------------------

    def _same_boot(self, boot: Any) -> bool:
        """Same rule as ``_SAME_BOOT``: only two known, different ids prove a reboot."""
        return bool(boot == self.boot or UNKNOWN_BOOT in (boot, self.boot))

    def _live(self, row: tuple[Any, ...], now: float) -> bool:
        """Same rule as ``_LIVE`` (token, fence, boot, deadline, ttl, ...)."""
        return self._same_boot(row[2]) and bool(now < row[3] <= now + row[4] + EPSILON)

    def _waiting(self, row: tuple[Any, ...], now: float) -> bool:
        """Is the waiter row (token, boot, alive, ...) live: of this boot, and polled lately on this clock."""
        return self._same_boot(row[1]) and bool(now < row[2] <= now + REGISTRATION + EPSILON)

    def try_acquire(
        self, key: str, token: str, ttl_ms: int, label: str, queue: bool, limit: int = 1, weight: int = 1
    ) -> Attempt:
        if limit != 1 or weight != 1:
            check_counted(limit, weight)
        ttl = ttl_ms / 1000

        def body(conn: sqlite3.Connection, now: float) -> tuple[Attempt, list[str]]:
            # The holders: the live ones' weights and limit, the earliest end, and whether dead rows
            # (expired, crashed holders) are left to clear. A mutex has zero or one row here.
            used, current, soonest, expired = 0, 0, 0.0, False
            for row in conn.execute(_SELECT_HOLDERS, (key,)).fetchall():
                if not self._live(row, now):
                    expired = True
                    continue
                if row[0] == token:  # ours already (a repeated request): refresh and answer again
                    if row[7] != limit:
                        raise LimitMismatch(key, limit, int(row[7]))
                    conn.execute(_REFRESH, (label, self.boot, now + ttl, ttl, key, token))
                    return Attempt(fence=int(row[1])), []
                used += row[6]
                current = row[7]
                soonest = row[3] if soonest == 0.0 else min(soonest, row[3])
            if current and current != limit:
                raise LimitMismatch(key, limit, int(current))  # rolled back: nothing changed
            if used + weight > limit:  # no room (held, for a mutex): wait for a release or an expiry
                if queue:
                    self._enqueue(conn, key, token, now, limit, weight)
                return Attempt(fence=None, retry_after=min(soonest - now, REFRESH)), []
            head = self._head(conn, key, now)
            if head is not None:
                if not current and head[2] != limit:  # the queue binds the limit of a name nobody holds
                    raise LimitMismatch(key, limit, int(head[2]))
                if head[0] != token:  # room, but a live waiter came first (FIFO: no barging)
                    if queue:
                        self._enqueue(conn, key, token, now, limit, weight)
                    retry = REFRESH if not used else min(soonest - now, REFRESH)
                    return Attempt(fence=None, retry_after=retry), []
            last = conn.execute(_SELECT_FENCE, (key,)).fetchone()
            fence = max((last[0] if last else 0) + 1, time.time_ns() // 1000)
            conn.execute(_STORE_FENCE, (key, fence))
            if expired:  # rows of dead holders would count against nobody, but they clutter the name
                conn.execute(_DROP_EXPIRED, {"name": key, "boot": self.boot, "now": now})
            conn.execute(_STORE_LEASE, (key, token, fence, label, self.boot, now + ttl, ttl, weight, limit))
            ring: list[str] = []
            if head is not None:
                conn.execute(_DEQUEUE, (key, token))
                free = limit - used - weight
                if free > 0:  # room left (readers, permits): the waiters behind us may get in too
                    ring = self._fitting(conn, key, now, free)
            return Attempt(fence=fence), ring

        attempt, ring = self.db.write("acquire", body)
        if attempt.fence is not None:
            self.bells.hang_up(token)
            for other in ring:
                self.bells.ring(other)
        return attempt

    def _enqueue(self, conn: sqlite3.Connection, key: str, token: str, now: float, limit: int, weight: int) -> None:
        params = {
            "name": key,
            "token": token,
            "boot": self.boot,
            "alive": now + REGISTRATION,
            "weight": weight,
            "lim": limit,
        }
        conn.execute(_ENQUEUE, params)

    def _head(self, conn: sqlite3.Connection, key: str, now: float) -> tuple[str, int, int] | None:
        """The first live waiter (token, weight, limit), or None when nobody lives in the queue; drops
        the dead ones (crashed or paused waiters) in one statement. Inside a write transaction only.

        One indexed statement, not a bounded loop: a queue full of crashed waiters (a fleet
        restart) must never make a dead one look first, nor the queue look empty."""
        first = conn.execute(_SELECT_HEAD, (key,)).fetchone()
        if first is None:
            return None  # nobody queued: the common case costs one indexed look
        if self._waiting(first, now):
            return str(first[0]), int(first[3]), int(first[4])
        params = {"name": key, "boot": self.boot, "now": now, "registration": REGISTRATION}
        row = conn.execute(_LIVE_HEAD, params).fetchone()
        conn.execute(_DROP_DEAD, params)  # dead ones ahead of it (or only dead ones): clear them
        return None if row is None else (str(row[0]), int(row[1]), int(row[2]))

    def _fitting(self, conn: sqlite3.Connection, key: str, now: float, free: int) -> list[str]:
        """The live waiters at the head of the queue that ``free`` permits admit, in order, stopping
        at the first that does not fit (a reader behind a waiting writer never goes first). At most
        RING_MAX: the rest are woken by the grants of those (or by their own polling)."""
        params = {"name": key, "boot": self.boot, "now": now, "registration": REGISTRATION, "n": RING_MAX}
        tokens = []
        for token, weight, _lim in conn.execute(_LIVE_QUEUE, params).fetchall():
            if weight > free:
                break
            free -= weight
            tokens.append(str(token))
        return tokens

    def probe(self, key: str, token: str) -> tuple[bool, bool, float | None]:
        """A read-only look (no write lock, never blocks on the writer in WAL mode): is it worth
        calling ``try_acquire`` now, are we first in line, and how long until a holder's lease ends
        (the earliest, while there is no room for us)."""

        def look(conn: sqlite3.Connection) -> tuple[list[Any], Any]:
            return conn.execute(_SELECT_HOLDERS, (key,)).fetchall(), conn.execute(_SELECT_HEAD, (key,)).fetchone()

        rows, head = self.db.run("wait", look)
        now = self._clock()  # after the read: a row written meanwhile is not "ahead of our clock"
        if head is not None and head[0] != token and self._waiting(head, now):
            first, weight = False, 1  # someone is ahead of us: not before it goes
        else:
            first = True  # no one queued, we are first, or the first one is dead (try_acquire drops it)
            weight = int(head[3]) if head is not None and head[0] == token else 1
        live = [row for row in rows if self._live(row, now)]
        if not live:
            return first, first, None
        room = int(live[0][7]) - sum(int(row[6]) for row in live) >= weight
        holder_left = None if room else float(min(row[3] for row in live) - now)
        return first and room, first, holder_left

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

    def ring_heads(self, key: str) -> None:
        """After a commit that may have freed permits: wake every waiter that may now get in, in
        queue order as far as the free permits go (best effort: a hint, never needed for safety).
        The common case, nobody queued, costs one indexed read; a mutex's queue one more ring."""
        if not self.bells.enabled:
            return
        with contextlib.suppress(BackendError):
            head = self.db.one("wake", _SELECT_HEAD, (key,))
            if head is None:
                return
            if head[4] == 1:  # a mutex: exactly the first one may get in
                self.bells.ring(str(head[0]))
                return

            def look(conn: sqlite3.Connection) -> list[str]:
                rows = conn.execute(_SELECT_HOLDERS, (key,)).fetchall()
                now = self._clock()  # after the read, as in probe(): no fresh row looks "ahead of our clock"
                live = [row for row in rows if self._live(row, now)]
                limit = int(live[0][7]) if live else int(head[4])
                return self._fitting(conn, key, now, limit - sum(int(row[6]) for row in live))

            for token in self.db.run("wake", look):
                self.bells.ring(token)

    def abandon(self, key: str, token: str) -> None:
        """Leave the queue; drop our lease too if an acquire of ``token`` succeeded unseen."""

        def body(conn: sqlite3.Connection, now: float) -> None:
            conn.execute(_DEQUEUE, (key, token))
            conn.execute(_DROP_OWN, (key, token))

        self.bells.hang_up(token)
        self.db.write("abandon", body)
        self.ring_heads(key)  # we may have stood in front, or held permits: the next ones go

    def extend(self, key: str, token: str, ttl_ms: int) -> bool:
        params = {"name": key, "token": token, "ttl": ttl_ms / 1000, "boot": self.boot, "now": self._clock()}
        return self.db.count("extend", _EXTEND, params) == 1

    def release(self, key: str, token: str) -> bool:
        params = {"name": key, "token": token, "boot": self.boot, "now": self._clock()}
        released = self.db.count("release", _RELEASE, params) == 1
        if released:
            self.ring_heads(key)
        return released

    def inspect(self, key: str) -> LockInfo | None:
        rows = self.db.all("inspect", _SELECT_HOLDERS, (key,))
        now = self._clock()  # after the read, as in probe()
        live = sorted((row for row in rows if self._live(row, now)), key=lambda row: row[1])  # oldest grant first
        if not live:
            return None
        waiters = self.db.one("inspect", _COUNT_WAITERS, {"name": key, "boot": self.boot, "now": now})[0]
        holders = tuple(HolderInfo(int(row[1]), str(row[5]), max(0.0, row[3] - now), int(row[6])) for row in live)
        newest = holders[-1]
        return LockInfo(key, newest.fence, newest.holder, newest.ttl_remaining, int(waiters), holders, int(live[-1][7]))

    def last_fence(self, key: str) -> int:
        """The last fence issued for ``key`` (0 when none): for tests and monitoring."""
        row = self.db.one("read fence", _SELECT_FENCE, (key,))
        return 0 if row is None else int(row[0])

    def force_release(self, key: str) -> str | None:
        """Operator's override: delete every lease of the name whatever its token. Returns the
        holders' labels (oldest grant first, comma-separated), or None when the name was not held
        (expired rows are deleted too, silently)."""

        def body(conn: sqlite3.Connection, now: float) -> str | None:
            rows = conn.execute(_SELECT_HOLDERS, (key,)).fetchall()
            conn.execute(_DROP_NAME, (key,))
            labels = [str(row[5]) for row in sorted(rows, key=lambda row: row[1]) if self._live(row, now)]
            return ", ".join(labels) if labels else None

        return self.db.write("force release", body)

    async def async_wait(self, key: str, token: str, timeout: float) -> None:
        """``wait`` for asyncio: the same looks, each in a worker thread, the sleeps on the event loop
        listening to the doorbell there (so cancelling a waiter is immediate and leaves nothing
        behind: a look changes nothing)."""
        end = self._clock() + max(0.0, timeout)
        bell = self.bells.listen(token)
        loop = asyncio.get_running_loop()
        for attempt in range(1_000_000):  # bounded by the clock below; the count is a backstop
            ready, first, holder_left = await off_loop(self.probe, key, token)
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


def poll_delay(attempt: int, first: bool, holder_left: float | None, left: float, rung: bool) -> float:
    """How long ``wait`` sleeps before its next look: full-jitter backoff (the first waiter's capped
    at ``HEAD_CAP``, or a fixed ``HEAD_POLL`` when no doorbell can wake it); never past the holder's
    deadline or the caller's timeout."""
    if first and not rung:
        delay = HEAD_POLL * random.uniform(0.5, 1.0)
    else:
        cap = HEAD_CAP if first else BACKOFF_CAP
        delay = backoff(attempt, BACKOFF_BASE, cap)
    if holder_left is not None:
        delay = min(delay, holder_left)
    return min(left, max(0.0002, delay))  # a floor against busy loops; never past the timeout


class AsyncSqliteBackend(Offloaded):
    """The asyncio SQLite backend: ``SqliteBackend``'s calls in worker threads, its waits on the loop."""

    sync: SqliteBackend

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        clock: Clock = time.monotonic,
        boot_id: str | None = None,
    ) -> None:
        super().__init__(SqliteBackend(path, busy_timeout=busy_timeout, clock=clock, boot_id=boot_id))

    @classmethod
    def from_url(cls, url: str) -> AsyncSqliteBackend:
        path, busy = parse_sqlite_url(url)
        return cls(path, busy_timeout=busy)

    @property
    def path(self) -> str:
        return self.sync.path
