"""PostgreSQL backend I/O. Source: ``_async.py``; ``_sync.py`` is generated from it (scripts/unasync.py).

The protocol lives in ``schema.py`` (SQL functions, one call per primitive); this class runs them on
a connection (its own, or the user's connection or pool), each call bounded by the watchdog.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import time
import weakref
from collections.abc import Callable
from typing import Any

import psycopg

from ..._core.params import backoff
from ..._errors import BackendRejected, BackendUnavailable, ConfigurationError, LimitMismatch
from ..base import Attempt, HolderInfo, LockInfo, check_counted
from .errors import map_errors
from .listen import AsyncPause, AsyncWaiter, Listener, token_hash
from .schema import DEFAULT_SCHEMA, MISMATCH_BASE, REFRESH_MS, channel, check_schema, ddl, stamp
from .urls import DEFAULT_REQUEST_TIMEOUT, check_timeout, parse_postgres_url
from .watchdog import WATCHDOG

__all__ = ["AsyncPostgresBackend"]

IDLE_MAX = 8
"""Idle connections a URL-made backend keeps per process (one per concurrently calling thread)."""
MAX_NAME_BYTES = 2000
"""Longest lock name (UTF-8 bytes): btree index entries are limited to about 2.7 kB."""
WAIT_CAP = REFRESH_MS / 1000
"""Longest single ``wait``: the waiter then polls, which refreshes its place in the queue."""


class _MissingLayout(Exception):
    """The schema or its functions are not there yet (first use), or are another fencelock
    version's (``schema.stamp``): create them, then ask again. ``schema_exists``: only functions
    are missing (an upgrade, when the schema was made before)."""

    def __init__(self, message: str, schema_exists: bool) -> None:
        super().__init__(message)
        self.schema_exists = schema_exists


class _Conflict(Exception):
    """The server rolled our statement back for a serialization failure or a deadlock (a database or
    role whose ``default_transaction_isolation`` is repeatable read or serializable), or for waiting
    on a row longer than the session's ``lock_timeout``: nothing of it took effect, so it is asked
    again, within ``request_timeout`` (the bound of every call, whatever the server's settings)."""


CONFLICT_RETRIES = 100
"""Most attempts of one call that the server rolled back for a conflict (bounded by time too)."""


class AsyncPostgresBackend:
    """fencelock on one PostgreSQL database (see the package docstring for the protocol).

    ``client``: your own ``psycopg.AsyncConnection`` (in autocommit mode; calls from many tasks take
    turns on it, and waiters poll, since a connection you share cannot also LISTEN) or
    ``psycopg_pool.AsyncConnectionPool`` (a connection per call; waiters LISTEN on a connection of
    their own made from the pool's conninfo), used as is and never closed by us. Or ``from_url``:
    then fencelock keeps a few autocommit connections of its own and closes them.

    ``request_timeout`` bounds every call (a call past it has its connection cut and raises
    ``BackendUnavailable``); ``listen=False`` polls instead of LISTEN (a pooler in transaction mode);
    ``durable=True`` commits lock changes with the server's ``synchronous_commit`` instead of off.
    """

    name = "postgres"

    def __init__(
        self,
        client: Any,
        *,
        schema: str = DEFAULT_SCHEMA,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        listen: bool = True,
        durable: bool = False,
        owns_client: bool = False,
        conninfo: str | None = None,
    ) -> None:
        self.schema = check_schema(schema)
        self.request_timeout = check_timeout(request_timeout)
        self.durable = bool(durable)
        self._owns = owns_client
        self._pool: Any = None
        self._conn: Any = None
        self._conninfo = conninfo
        if conninfo is not None:
            pass  # ours: connections made on demand from conninfo
        elif callable(getattr(client, "connection", None)) and hasattr(client, "conninfo"):
            self._pool = client
        elif hasattr(client, "pgconn") and hasattr(client, "autocommit"):
            if not client.autocommit:
                raise ConfigurationError(
                    "a psycopg connection used for locks must be in autocommit mode (connect with "
                    "autocommit=True): otherwise every lock change would wait for your transaction's commit; "
                    "or pass a connection pool"
                )
            self._conn = client
        else:
            raise ConfigurationError(
                f"expected a psycopg (3) connection or psycopg_pool pool, got {type(client).__name__}"
            )
        s = self.schema
        # Lock changes commit asynchronously unless durable (see the package docstring): set for this
        # statement's own transaction, by the statement itself (one round trip, no session state).
        fast = "" if self.durable else ", set_config('synchronous_commit', 'off', true)"
        # Every call names this version's stamp (schema.stamp): functions another version wrote are
        # brought up to date before the first call runs, as missing ones are.
        up = f" WHERE {stamp(s)}"
        self._q_acquire = (
            f"SELECT {s}.acquire(%s::text, %s::text, %s::bigint, %s::text, %s::boolean, %s::integer, "
            f"%s::integer){fast}{up}"
        )
        self._q_extend = f"SELECT {s}.extend(%s::text, %s::text, %s::bigint){fast}{up}"
        self._q_release = f"SELECT {s}.release(%s::text, %s::text){fast}{up}"
        self._q_abandon = f"SELECT {s}.abandon(%s::text, %s::text){fast}{up}"
        self._q_granted = f"SELECT {s}.granted(%s::text, %s::text){up}"
        self._q_inspect = f"SELECT * FROM {s}.inspect(%s::text){up}"
        self._q_last = f"SELECT {s}.last_fence(%s::text){up}"
        self._q_force = f"SELECT {s}.force_release(%s::text){up}"
        self._idle: list[Any] = []
        self._cursors: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._pid = os.getpid()
        self._listener: Listener | None = None
        if listen and (conninfo is not None or self._pool is not None):
            self._listener = Listener(_listen_connector(conninfo, self._pool), channel(s))
        # A backend nobody closes (a Lock made from a URL and dropped) must not keep its connections
        # and listener thread: both are released when it is garbage collected. Neither refers to it.
        weakref.finalize(self, _release, self._idle, self._listener, self._pid)

    @classmethod
    def from_url(cls, url: str) -> AsyncPostgresBackend:
        """``postgresql://user:pass@host:5432/db?schema=fencelock&request_timeout=2`` (see urls.py)."""
        opts = parse_postgres_url(url)
        return cls(
            None, schema=opts.schema, request_timeout=opts.request_timeout, listen=opts.listen,
            durable=opts.durable, owns_client=True, conninfo=opts.conninfo,
        )  # fmt: skip

    # -- connections --------------------------------------------------------------------------

    async def _checkout(self) -> Any:
        if self._conn is not None:
            return self._conn
        if self._pid != os.getpid():
            # Inherited through fork(): never use (nor close: that would end the parent's sessions).
            self._idle.clear()
            self._pid = os.getpid()
        while self._idle:
            conn = self._idle.pop()
            if not _stale(conn):
                return conn
            _drop(conn)
        assert self._conninfo is not None
        with map_errors("connect", self.schema):
            conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True, prepare_threshold=1)
        self._cursors[conn] = conn.cursor()
        return conn

    def _checkin(self, conn: Any) -> None:
        if conn is self._conn or self._pid != os.getpid():
            return
        if len(self._idle) < IDLE_MAX and not conn.closed:
            self._idle.append(conn)
        else:
            _drop(conn)

    async def _run(self, conn: Any, what: str, query: str, params: tuple[Any, ...]) -> list[Any]:
        """One statement on ``conn``, bounded by ``request_timeout`` (the watchdog cuts the socket).

        On a pool's connection that is not in autocommit (psycopg_pool's default) psycopg opens a
        transaction around the statement: it is committed here, inside the same bound, so the lock
        change is durable-as-configured before we answer and the pool's own commit at the end of its
        block has nothing left to wait for (a server that stops answering then would block it for
        ever). On the user's own connection, a transaction of theirs would contain our statement
        (and roll it back with theirs): refused before, and any call that ended inside one fails."""
        shared = conn is self._conn
        if shared:
            _refuse_user_transaction(conn, what, before=True)
        ticket = WATCHDOG.arm(conn.pgconn.socket, self.request_timeout)
        fired = abandoned = False
        try:
            try:
                cur = self._cursors.get(conn)  # our own connections keep one cursor (a new one costs)
                if cur is None:
                    cur = await conn.execute(query, params)
                else:
                    await cur.execute(query, params)
                if shared:  # at once: on an event loop no other task has run on it since our answer
                    _refuse_user_transaction(conn, what, before=False)
                rows: list[Any] = await cur.fetchall()
                if not conn.autocommit:
                    await conn.commit()
            except Exception:
                if not conn.autocommit and not conn.closed:
                    with contextlib.suppress(Exception):  # a cut socket fails at once
                        await conn.rollback()
                raise
            except BaseException:
                if not conn.autocommit:
                    abandoned = True  # cancelled mid-transaction: closed below (its pool discards it)
                raise
            finally:
                fired = WATCHDOG.disarm(ticket)
                # After disarm: a closed fd may be reused, the watchdog must not touch it. A socket
                # the watchdog shut down as the answer arrived (the call still succeeds) is dead
                # too: closed here, so a pool discards it rather than hand it to the next call.
                if abandoned or fired:
                    _drop(conn)
        except (psycopg.errors.UndefinedFunction, psycopg.errors.InvalidSchemaName) as err:
            raise _MissingLayout(str(err), isinstance(err, psycopg.errors.UndefinedFunction)) from err
        except (
            psycopg.errors.SerializationFailure,
            psycopg.errors.DeadlockDetected,
            psycopg.errors.LockNotAvailable,
        ) as err:
            if fired:
                raise BackendUnavailable(
                    f"postgresql did not answer {what} within request_timeout={self.request_timeout:g} s "
                    "(connection cut)"
                ) from err
            raise _Conflict(str(err).strip()) from err
        except psycopg.Error as err:
            if fired:
                raise BackendUnavailable(
                    f"postgresql did not answer {what} within request_timeout={self.request_timeout:g} s "
                    "(connection cut)"
                ) from err
            with map_errors(what, self.schema):
                raise
        return rows

    async def _call(self, what: str, query: str, params: tuple[Any, ...]) -> list[Any]:
        created = False
        end = time.monotonic() + self.request_timeout
        for attempt in range(CONFLICT_RETRIES):
            try:
                return await self._call_once(what, query, params)
            except _MissingLayout as err:
                if created:
                    raise BackendRejected(
                        f"postgresql: the fencelock functions in schema {self.schema} are missing after "
                        f"creating them ({err}); is another fencelock version using this schema?"
                    ) from err
                created = True
                try:
                    await self.create_schema()
                except BackendRejected as refused:
                    if not err.schema_exists:
                        raise
                    # The schema is there, its functions are another version's (or some are gone):
                    # this role may lock in it but not replace them; say what to do, not "create".
                    raise BackendRejected(
                        f"postgresql: the fencelock functions in schema {self.schema} are from another "
                        "fencelock version (or missing), and this role cannot replace them: have the "
                        "schema's owner bring them up to date once (any fencelock call as that role, or "
                        "PostgresBackend(...).create_schema())"
                    ) from refused
            except _Conflict as err:
                # Rolled back whole (its own transaction): safe to ask again. The lock functions
                # expect READ COMMITTED, where this does not happen; under repeatable read or
                # serializable, concurrent calls on one name conflict on its row.
                left = end - time.monotonic()
                if left <= 0 or attempt == CONFLICT_RETRIES - 1:
                    raise BackendUnavailable(
                        f"postgresql rolled {what} back for conflicts with concurrent lock calls until "
                        f"request_timeout={self.request_timeout:g} s ({err}); is default_transaction_isolation "
                        "serializable for this database or role? fencelock's calls work best at read committed"
                    ) from err
                await AsyncPause.sleep(min(left, backoff(attempt, 0.001, 0.02)))
        raise AssertionError("unreachable")

    async def _call_once(self, what: str, query: str, params: tuple[Any, ...]) -> list[Any]:
        if self._pool is not None:
            with map_errors(what, self.schema):
                async with self._pool.connection(timeout=self.request_timeout) as conn:
                    return await self._run(conn, what, query, params)
        conn = await self._checkout()
        try:
            rows = await self._run(conn, what, query, params)
        except (_MissingLayout, _Conflict):
            self._checkin(conn)
            raise
        except BaseException:
            # Broken, cut by the watchdog, or interrupted mid-call (cancelled): its state is unknown.
            if conn is not self._conn:
                _drop(conn)
            raise
        self._checkin(conn)
        return rows

    async def create_schema(self) -> None:
        """Create (or bring up to date) the schema, tables and functions; what the first call does by
        itself. Needs a role with CREATE on the database (or on the existing schema). Many processes
        may do it at once: a transaction-scoped advisory lock lets one at a time in."""
        statements = ddl(self.schema)
        lock = f"SELECT pg_advisory_xact_lock(hashtext('fencelock layout {self.schema}'))"
        if self._pool is not None:
            with map_errors("create schema", self.schema):
                async with self._pool.connection(timeout=self.request_timeout) as conn:
                    await self._create_on(conn, lock, statements)
            return
        conn = await self._checkout()
        try:
            with map_errors("create schema", self.schema):
                await self._create_on(conn, lock, statements)
        except BaseException:
            if conn is not self._conn:
                _drop(conn)
            raise
        self._checkin(conn)

    async def _create_on(self, conn: Any, lock: str, statements: str) -> None:
        ticket = WATCHDOG.arm(conn.pgconn.socket, max(self.request_timeout, 30.0))
        try:
            async with conn.transaction():
                # Many first users queue here for the one that creates: bounded by our watchdog (30 s),
                # not by a lock_timeout or statement_timeout of the user's meant for their own work.
                await conn.execute("SET LOCAL lock_timeout = 0")
                await conn.execute("SET LOCAL statement_timeout = 0")
                await conn.execute(lock)
                await conn.execute(statements)
        finally:
            if WATCHDOG.disarm(ticket):  # cut as it finished: dead, closed so no pool reuses it
                _drop(conn)

    # -- the primitives -------------------------------------------------------------------------

    async def try_acquire(
        self, key: str, token: str, ttl_ms: int, label: str, queue: bool, limit: int = 1, weight: int = 1
    ) -> Attempt:
        if limit != 1 or weight != 1:
            check_counted(limit, weight)
        if len(key) > MAX_NAME_BYTES // 4 and len(key.encode()) > MAX_NAME_BYTES:
            raise ConfigurationError(
                f"a PostgreSQL lock name is at most {MAX_NAME_BYTES} bytes of UTF-8 (an index entry's limit), "
                f"got {len(key.encode())}: name the resource by a shorter key, e.g. a hash of it"
            )
        if queue and self._listener is not None:
            self._listener.start(0)  # listening before we can be handed anything (no wait here)
        params = (key, token, ttl_ms, label, queue, limit, weight)
        rows = await self._call("acquire", self._q_acquire, params)
        value = int(rows[0][0])
        if value > 0:  # see schema.py, acquire: the fence, or why not
            return Attempt(fence=value)
        if value <= MISMATCH_BASE:
            raise LimitMismatch(key, limit, MISMATCH_BASE + 1 - value)  # -1000 - value
        return Attempt(fence=None, retry_after=None if value == 0 else (-value - 1) / 1000)

    async def wait(self, key: str, token: str, timeout: float) -> int | None:
        """Until a release hands us the lock (its notification, or our own look at the lease table
        when not listening), at most ``timeout`` and ``WAIT_CAP`` seconds; the fence or None."""
        timeout = max(0.0, min(timeout, WAIT_CAP))
        listener = self._listener
        if listener is not None and listener.healthy:
            return await AsyncWaiter.wait(listener, token_hash(token), timeout)
        end = time.monotonic() + timeout
        for attempt in range(10_000):  # bounded by the clock below; the count is a backstop
            rows = await self._call("wait", self._q_granted, (key, token))
            if rows and rows[0][0] is not None:
                return int(rows[0][0])
            left = end - time.monotonic()
            if left <= 0:
                return None
            await AsyncPause.sleep(min(left, max(0.001, backoff(attempt, 0.004, 0.1))))
        return None

    async def abandon(self, key: str, token: str) -> None:
        await self._call("abandon", self._q_abandon, (key, token))

    async def extend(self, key: str, token: str, ttl_ms: int) -> bool:
        rows = await self._call("extend", self._q_extend, (key, token, ttl_ms))
        return bool(rows[0][0])

    async def release(self, key: str, token: str) -> bool:
        rows = await self._call("release", self._q_release, (key, token))
        return bool(rows[0][0])

    async def inspect(self, key: str) -> LockInfo | None:
        rows = await self._call("inspect", self._q_inspect, (key,))
        if not rows:
            return None
        holders = tuple(HolderInfo(int(f), str(lab), int(ms) / 1000, int(w)) for f, lab, ms, w, _lim, _n in rows)
        newest = holders[-1]
        return LockInfo(
            key, newest.fence, newest.holder, newest.ttl_remaining, int(rows[-1][5]), holders, int(rows[-1][4])
        )

    async def force_release(self, key: str) -> str | None:
        """Operator's override: drop every lease of the name whatever its token (its waiters are
        handed the permits). Returns the live holders' labels, None when nothing was held."""
        rows = await self._call("force release", self._q_force, (key,))
        return None if rows[0][0] is None else str(rows[0][0])

    async def last_fence(self, key: str) -> int:
        """The last fence issued for ``key`` (0 when none): for tests and monitoring."""
        rows = await self._call("read fence", self._q_last, (key,))
        return int(rows[0][0])

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._owns:
            _release(self._idle, None, self._pid)


def _listen_connector(conninfo: str | None, pool: Any) -> Callable[[], Any]:
    """How the listener thread connects (a blocking autocommit connection, in both APIs): from our
    conninfo, or the user's pool's. It captures those, never the backend (which may then be freed)."""
    if conninfo is not None:
        return functools.partial(psycopg.Connection.connect, conninfo, autocommit=True)
    kwargs = {k: v for k, v in (getattr(pool, "kwargs", None) or {}).items() if k != "autocommit"}
    return functools.partial(psycopg.Connection.connect, pool.conninfo, autocommit=True, **kwargs)


def _release(idle: list[Any], listener: Listener | None, pid: int) -> None:
    """Close idle connections of ours (only in the process that opened them) and stop the listener.
    Also the finalizer of a backend nobody closed: it may run in any thread, so it never waits."""
    if listener is not None:
        listener.close(wait=False)
    if pid == os.getpid():
        while idle:
            _drop(idle.pop())


def _refuse_user_transaction(conn: Any, what: str, *, before: bool) -> None:
    """A connection of the user's, shared with fencelock, must not be inside a transaction of theirs
    when a lock statement runs on it: the statement would commit or roll back with their work (an
    extend rolled back while the client believes it: two holders). ``before``: nothing was sent.
    After: our statement ran inside one, so its effect is undecided until they end it."""
    from psycopg.pq import TransactionStatus

    status = conn.pgconn.transaction_status
    if conn.autocommit and status not in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
        return
    where = "was not sent" if before else "ran inside it, so whether it takes effect is decided by your commit"
    raise BackendRejected(
        f"postgresql: {what} on the connection you gave fencelock, while a transaction of yours is open "
        f"on it (or autocommit was turned off): the lock statement {where}. fencelock's statements must "
        "commit on their own: run your transactions on another connection (or pass a pool)"
    )


def _stale(conn: Any) -> bool:
    """Did the server end this idle connection (restart, ``pg_terminate_backend``, idle timeout)? An
    idle connection has nothing to read unless the server closed it or told it why: one ``poll``."""
    try:
        ready, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return True
    return bool(ready) or conn.closed


def _drop(conn: Any) -> None:
    """Close a connection of ours without waiting on the server (it may be the reason we drop it)."""
    try:
        conn.pgconn.finish()
    except Exception:  # best effort: the connection is being thrown away
        pass
