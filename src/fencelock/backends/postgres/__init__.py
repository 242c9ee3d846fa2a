"""PostgreSQL backend (psycopg 3): the lock, its fence and your data in one database.

    schema.py    the protocol itself: tables and SQL functions (one call per primitive)
    urls.py      postgresql:// URLs and fencelock's options, validated before any I/O
    errors.py    psycopg's exceptions translated into fencelock's tree, in one place
    watchdog.py  the bound on every call (a call past request_timeout has its socket cut)
    listen.py    LISTEN/NOTIFY wake-ups: one listening connection per backend, a thread
    _async.py    the I/O: ``AsyncPostgresBackend`` runs the functions (source of truth)
    _sync.py     ``PostgresBackend``, GENERATED from ``_async.py`` by scripts/unasync.py

URL ``postgresql://`` / ``postgres://`` (libpq's: host or ``?host=/socket/dir``, user, password,
sslmode, ...), plus ``?schema=`` (default ``fencelock``), ``request_timeout=`` (seconds, default 2),
``listen=off`` and ``durable=on``. Or your own ``psycopg.Connection`` / ``AsyncConnection``
(autocommit) or ``psycopg_pool`` pool, used as is.

Tables, in the schema (created with its functions on first use, by a role that may create it):

    fence(name PK, last,            one row per name, never deleted: ``last`` is the last fence issued
          token, hfence, label,     (never decreases); the mutex's holder (limit 1) lives in the same
          expires)                  row: its token, fence, label and ``expires`` (server time)
    lease(name, token PK, fence,    the holders of counted names (limit > 1), one row each
          label, expires, weight,
          lim)
    waiter(name, token PK, since,   the FIFO queue of every name, with what each waiter asks for;
           alive, ttl_ms, label,    ``alive`` is refreshed by every poll
           weight, lim)

One round trip per primitive. Every primitive is one call of a SQL function (``SECURITY DEFINER``:
users need only ``USAGE`` on the schema, and never see the tables). The name's ``fence`` row is the
lock of the lock: the common acquire (a free mutex, nobody queued) is one ``UPDATE ... WHERE token
IS NULL`` of it, which mints the fence and writes the holder; PostgreSQL's row lock, and its re-check
of the ``WHERE`` on the newest row after waiting for it, is the mutual exclusion. Every other path
locks the row ``FOR UPDATE`` first (so the calls on one name take turns, and no lock order can
deadlock), then judges the holders on ``clock_timestamp()`` read *after* that lock, clears expired
ones, and grants or queues: all in the one call. ``extend`` is one ``UPDATE`` of the token's own
row, only while it has not expired; ``release`` likewise (the mutex's is an ``UPDATE`` that clears
the holder: HOT, no index change, so churn on one name leaves no dead index entries): a release or
extend after expiry changes nothing and returns False (the handle raises ``LeaseLost``), as on the
other backends. Lease deadlines on the client run from before the request, as everywhere.

Fences. ``max(last + 1, server clock in microseconds)``, minted in the acquire's transaction. The
counter alone would go back when the server loses its last commits: a crash with asynchronous
commit (below), or a **failover to an asynchronous replica that had not received the last fence
writes** (streaming replication is asynchronous by default). The clock term then restarts the
fences above every one issued before, *provided the new primary's clock reads later than the old
one's did at the last lost grant*: true with NTP-synchronised hosts and a failover that takes longer
than their clock skew; not if a clock was stepped backwards across the failover. With synchronous
replication (``synchronous_commit = on`` plus ``synchronous_standby_names``) and ``durable=on``
nothing acknowledged is lost at all. What such a loss still does to *exclusion*: a lease written
only to the lost commits is gone, so a second holder may be granted while the first believes; the
first learns at its next renewal (``LeaseLost``), and its writes are refused by the storage through
the fence (``fencing.admit``) or by ``fencing.holds``.

Durability. By default every writing call commits with ``synchronous_commit = off`` for its own
transaction, set by the calling statement itself (``SELECT f(...), set_config('synchronous_commit',
'off', true)``; not inside the function, whose ``SET search_path`` clause would undo it before the
commit): an acquire costs no WAL flush, like the advisory lock a
user would otherwise take, which writes no WAL at all. A crash of the server may lose the last
~0.6 s of lock changes (``3 * wal_writer_delay``): leases granted or renewed in that window, which
is the loss described above and protected the same way, by the clock term. ``?durable=on`` (or
``durable=True``) keeps the server's own setting.

Waiting: FIFO, woken by LISTEN/NOTIFY. A contender that must wait is queued (``waiter``, ordered by
arrival on the server's clock). Free permits go only to the first live waiters (a newcomer never
barges past them). ``release`` (and ``abandon``, and a grant that leaves permits free) *hands the
permits over* inside its transaction: to the live waiters at the head of the queue, in order, as many
as fit, stopping at the first that does not (a reader behind a waiting writer waits: writers do not
starve; the readers queued behind a writer get in together). Each grantee gets its own fence and a
lease of its own TTL, and a notification ``md5(token) fence`` on the schema's channel; its ``wait``
returns that fence without another round trip. Every waiter polls (``try_acquire``) at least every
``REFRESH_MS``, which refreshes its ``alive`` stamp; one silent for ``REGISTRATION_MS`` (crashed,
paused) is skipped and dropped. A waiter handed a lock just before it died holds it until its TTL,
like any crashed holder. How strict: FIFO among live waiters by arrival at the server.

Without LISTEN (``listen=off``, or your own single connection, or while the listening connection
reconnects) a waiter polls the lease table for its handoff with jittered exponential backoff (4 ms
doubling to 100 ms) within each ``wait``; a handoff is a lease row, so a missed notification
costs time, never the lock.

Connection poolers. Holding a lock depends on no session state: no advisory lock is held across
calls, no temporary table, no ``SET``; each call is one autocommit statement, so any connection may
serve any call (a pooled connection per call holds the lock as well as one connection). PgBouncer in
*transaction* mode hands each transaction to any server connection: ``LISTEN`` there registers on a
server connection that the next client transaction may not get, so notifications go missing or to
another client. Behind such a pooler use ``?listen=off`` (waiters poll), or point the backend's
listener at the server directly (a URL without the pooler); PgBouncer in *session* mode is like a
direct connection. psycopg prepares statements it runs often; PgBouncer before 1.21 in transaction
mode does not support that: give your connections ``prepare_threshold=None``.

``fencing.holds`` (the write transaction checks the lock in the same database) pins a name with a
shared, transaction-scoped advisory lock (``PIN_CLASS``, ``hashtext('<schema>:<name>')``) before it
reads the holder. A takeover of an *expired* holder tries that advisory lock exclusively
(``pg_try_advisory_xact_lock``, never waiting) and, while a writer pins the name, counts the expired
holder as still holding (its waiters poll again 10 ms later). Nothing else looks at it: renewals and
the holder's own release never wait for a writer. Both locks end with their transactions: nothing
outlives a call, so a pooler cannot strand one.

Counted leases. Every lease row carries its weight and the limit it was granted under, and every
waiter row the limit it asked with: the limit binds exactly while the name has live holders or live
waiters (a request with another raises ``LimitMismatch`` and changes nothing), and an idle name takes
the limit of its next user. A request is granted when no live waiter is ahead of it and its weight
fits beside the live holders'. Every grant, whatever its weight, mints the name's next fence.

Bounded time. libpq has no read timeout, so every call is armed with ``request_timeout``: past it a
watchdog thread shuts the connection's socket down, the call raises ``BackendUnavailable`` and the
connection is dropped (see watchdog.py). Connecting is bounded by libpq's ``connect_timeout``
(default 2 s when the URL gives none). Errors: privileges missing -> ``BackendRejected`` naming them;
a read-only standby -> ``BackendRejected``; a refused password -> ``AuthenticationFailed``.
"""

from __future__ import annotations

from typing import Any

from .schema import DEFAULT_SCHEMA, REFRESH_MS, REGISTRATION_MS, channel, check_schema, ddl
from .urls import DEFAULT_REQUEST_TIMEOUT, PgOptions, parse_postgres_url

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_SCHEMA",
    "REFRESH_MS",
    "REGISTRATION_MS",
    "AsyncPostgresBackend",
    "PgOptions",
    "PostgresBackend",
    "channel",
    "check_schema",
    "ddl",
    "parse_postgres_url",
]


def __getattr__(name: str) -> Any:
    # The I/O classes import psycopg: load only the one asked for.
    if name == "PostgresBackend":
        from ._sync import PostgresBackend

        return PostgresBackend
    if name == "AsyncPostgresBackend":
        from ._async import AsyncPostgresBackend

        return AsyncPostgresBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
