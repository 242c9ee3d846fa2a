"""PostgreSQL-specific behaviour: fencing in the lock's own database (``fencing.holds``), the minimal
privileges, a server restart mid-wait, ``pg_terminate_backend`` mid-call, a fresh connection per
call (as behind a pooler), hostile names, polling without LISTEN, your own connection, a read-only
database. The backend-independent contract is in test_contract.py (run with ``-k postgres``).

All against the session's real PostgreSQL (``postgres_server`` in srv_postgres.py). Waits are
bounded by generous timeouts only so that a bug is a failure instead of a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import fencelock
from fencelock import aio, fencing
from fencelock.backends.postgres import AsyncPostgresBackend, PostgresBackend, parse_postgres_url
from servers import wait_until
from srv_postgres import PostgresLockServer

WAIT = 15.0


@pytest.fixture
def pg(postgres_server: PostgresLockServer) -> PostgresLockServer:
    return postgres_server


@pytest.fixture
def name() -> str:
    return f"pg:{uuid.uuid4().hex[:12]}"


@pytest.fixture
def data(pg: PostgresLockServer) -> Iterator[str]:
    table = f"data_{uuid.uuid4().hex[:8]}"
    pg.query(f"CREATE TABLE {table} (k text PRIMARY KEY, v text NOT NULL)")
    yield table
    pg.query(f"DROP TABLE {table}")


def _server_expired(pg: PostgresLockServer, name: str) -> bool:
    """The name's mutex holder has run out on the server's clock (and is still there: not taken)."""
    rows = pg.query(
        "SELECT expires <= clock_timestamp() FROM fencelock.fence WHERE name = %s AND token IS NOT NULL", (name,)
    )
    return bool(rows and rows[0][0])


def _blocked_on_lock(pg: PostgresLockServer, pid: int) -> bool:
    rows = pg.query("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,))
    return bool(rows) and rows[0][0] == "Lock"


def _write(conn: psycopg.Connection[Any], table: str, value: str) -> None:
    conn.execute(f"INSERT INTO {table} VALUES ('k', %s) ON CONFLICT (k) DO UPDATE SET v = excluded.v", (value,))


def _value(pg: PostgresLockServer, table: str) -> str | None:
    rows = pg.query(f"SELECT v FROM {table} WHERE k = 'k'")
    return rows[0][0] if rows else None


# -- fencing.holds: the two-writer race, both orders -------------------------------------------


def test_holds_old_writer_first_pins_its_lease_until_commit(pg: PostgresLockServer, name: str, data: str) -> None:
    """The old holder's transaction checked and locked its lease row; its lease then runs out on the
    server. A takeover must wait for that transaction: until it commits nobody is granted the name,
    and the new holder's write comes after the old one's."""
    old = fencelock.Lock(name, pg.url, ttl=0.3, renew=False).acquire()
    conn = psycopg.connect(pg.url)
    try:
        fencing.holds(conn, old)
        _write(conn, data, "old")
        assert wait_until(lambda: _server_expired(pg, name), WAIT), "the old lease never ran out on the server"
        newcomer = fencelock.Lock(name, pg.url, ttl=5, renew=False)
        assert newcomer.try_acquire() is None, "a takeover went through while the old writer's transaction held the row"
        conn.commit()
    finally:
        conn.close()
    new = newcomer.acquire(timeout=10)
    assert new.fence > old.fence
    with psycopg.connect(pg.url) as conn2:
        fencing.holds(conn2, new)
        _write(conn2, data, "new")
    assert _value(pg, data) == "new"
    new.release()


@pytest.mark.parametrize("taker_committed", [False, True], ids=["takeover-open", "takeover-committed"])
def test_holds_takeover_first_refuses_the_old_writer(
    pg: PostgresLockServer, name: str, data: str, taker_committed: bool
) -> None:
    """A takeover came first: its transaction replaced the expired lease (committed, or still open:
    then it holds the name's pin exclusively, and the old holder's check waits for it, as seen in
    pg_stat_activity). Either way the old holder's check then finds the lease gone: LeaseLost, and
    its transaction writes nothing; the taker's write goes in."""
    old = fencelock.Lock(name, pg.url, ttl=0.3, renew=False).acquire()
    assert wait_until(lambda: _server_expired(pg, name), WAIT)
    taker = psycopg.connect(pg.url)  # not autocommit: the takeover stays open until we commit it
    writer = psycopg.connect(pg.url)
    outcome: list[object] = []

    def old_writer() -> None:
        try:
            with writer.transaction():
                fencing.holds(writer, old)
                _write(writer, data, "stale")
            outcome.append("committed")
        except Exception as err:
            outcome.append(err)

    try:
        row = taker.execute(
            "SELECT fencelock.acquire(%s, 'taker-token', 5000, 'taker', false, 1, 1)", (name,)
        ).fetchone()
        assert row is not None and row[0] > old.fence  # granted: the answer is the fence
        _write(taker, data, "taker")
        if taker_committed:
            taker.commit()
        thread = threading.Thread(target=old_writer, daemon=True)
        thread.start()
        if not taker_committed:
            assert wait_until(lambda: _blocked_on_lock(pg, writer.info.backend_pid), WAIT), "the check never waited"
            assert not outcome
            taker.commit()
        thread.join(WAIT)
    finally:
        taker.close()
        writer.close()
    assert len(outcome) == 1 and isinstance(outcome[0], fencelock.LeaseLost), outcome
    assert _value(pg, data) == "taker"


def test_holds_refuses_an_expired_lease_nobody_took(pg: PostgresLockServer, name: str) -> None:
    lease = fencelock.Lock(name, pg.url, ttl=0.3, renew=False).acquire()
    assert wait_until(lambda: _server_expired(pg, name), WAIT)
    with psycopg.connect(pg.url) as conn, pytest.raises(fencelock.LeaseLost):
        fencing.holds(conn, lease)


def test_holds_refuses_a_released_lease_and_a_wrong_fence(pg: PostgresLockServer, name: str) -> None:
    lock = fencelock.Lock(name, pg.url, ttl=5, renew=False)
    lease = lock.acquire()

    class Forged:
        def __init__(self, fence: int) -> None:
            self.name, self.token, self.fence = lease.name, lease.token, fence

    with psycopg.connect(pg.url) as conn, pytest.raises(fencelock.LeaseLost):
        fencing.holds(conn, Forged(lease.fence - 1))
    lease.release()
    with psycopg.connect(pg.url) as conn, pytest.raises(fencelock.LeaseLost):
        fencing.holds(conn, lease)


def test_holds_outside_a_transaction_is_refused_before_any_query(pg: PostgresLockServer, name: str) -> None:
    lease = fencelock.Lock(name, pg.url, ttl=5, renew=False).acquire()
    with psycopg.connect(pg.url, autocommit=True) as conn, pytest.raises(fencelock.ConfigurationError):
        fencing.holds(conn, lease)
    lease.release()


async def test_aholds_on_an_async_connection(pg: PostgresLockServer, name: str, data: str) -> None:
    lease = await aio.Lock(name, pg.url, ttl=5, renew=False).acquire(timeout=5)
    async with await psycopg.AsyncConnection.connect(pg.url) as conn:
        await fencing.aholds(conn, lease)
        await conn.execute(f"INSERT INTO {data} VALUES ('k', 'async')")
    assert _value(pg, data) == "async"
    await lease.release()
    async with await psycopg.AsyncConnection.connect(pg.url) as conn:
        with pytest.raises(fencelock.LeaseLost):
            await fencing.aholds(conn, lease)


# -- privileges ------------------------------------------------------------------------------------


def _role_db(pg: PostgresLockServer, role: str) -> str:
    """A libpq URL for ``role`` (no fencelock options)."""
    return pg.url.replace("postgresql://postgres@", f"postgresql://{role}@")


def _role_url(pg: PostgresLockServer, role: str, schema: str) -> str:
    return f"{_role_db(pg, role)}&schema={schema}"


@pytest.fixture
def roles(pg: PostgresLockServer) -> Iterator[tuple[str, str, str]]:
    """A schema created by the admin's first use, a role granted only USAGE on it, a role with nothing."""
    tag = uuid.uuid4().hex[:8]
    schema, user, stranger = f"priv_{tag}", f"locker_{tag}", f"stranger_{tag}"
    admin = fencelock.Lock("setup", _role_url(pg, "postgres", schema), ttl=1, renew=False)
    admin.try_acquire().release()  # the first use creates the schema, as its owner
    pg.query(f"CREATE ROLE {user} LOGIN")
    pg.query(f"CREATE ROLE {stranger} LOGIN")
    pg.query(f"GRANT USAGE ON SCHEMA {schema} TO {user}")
    yield schema, user, stranger
    pg.query(f"DROP SCHEMA {schema} CASCADE")
    for role in (user, stranger):
        pg.query(f"DROP OWNED BY {role}")
        pg.query(f"DROP ROLE {role}")


def test_a_role_with_only_usage_on_the_schema_locks_waits_and_fences(
    pg: PostgresLockServer, roles: tuple[str, str, str], name: str, data: str
) -> None:
    schema, user, _ = roles
    pg.query(f"GRANT SELECT, INSERT, UPDATE ON {data} TO {user}")  # the data's rights, not the lock's
    url = _role_url(pg, user, schema)
    lock = fencelock.Lock(name, url, ttl=5, renew=False)
    holder = lock.acquire(timeout=5)
    got: list[fencelock.Lease] = []
    waiter = threading.Thread(target=lambda: got.append(fencelock.Lock(name, url, ttl=5).acquire(timeout=WAIT)))
    waiter.start()
    empty = fencelock.backends.base.LockInfo(name, 0, "", None)
    assert wait_until(lambda: (lock.inspect() or empty).waiters == 1, WAIT)
    holder.extend(ttl=5)
    holder.release()
    waiter.join(WAIT)
    assert got and got[0].fence > holder.fence
    with psycopg.connect(_role_db(pg, user)) as conn:
        fencing.holds(conn, got[0], schema=schema)
        _write(conn, data, "by the restricted role")
    got[0].release()
    # the operator's override is not among its rights (the schema's owner grants it to operators)
    with pytest.raises(fencelock.BackendRejected, match=f"GRANT EXECUTE ON FUNCTION {schema}.force_release"):
        PostgresBackend.from_url(url).force_release(name)
    # and it can read nothing of the tables themselves: tokens stay the functions' business
    denied = pytest.raises(psycopg.errors.InsufficientPrivilege)
    with psycopg.connect(_role_db(pg, user), autocommit=True) as conn, denied:
        conn.execute(f"SELECT token FROM {schema}.lease")


def test_a_role_without_usage_gets_backend_rejected_naming_it(
    pg: PostgresLockServer, roles: tuple[str, str, str], name: str
) -> None:
    schema, _, stranger = roles
    lock = fencelock.Lock(name, _role_url(pg, stranger, schema), ttl=5)
    with pytest.raises(fencelock.BackendRejected) as info:
        lock.try_acquire()
    assert f"USAGE on schema {schema}" in str(info.value)
    with psycopg.connect(_role_db(pg, stranger)) as conn:
        with pytest.raises(fencelock.BackendRejected) as info:
            fencing.holds(conn, type("L", (), {"name": name, "token": "x" * 32, "fence": 1})(), schema=schema)
    assert f"USAGE on schema {schema}" in str(info.value)


def test_first_use_by_a_role_that_cannot_create_the_schema_names_what_is_missing(
    pg: PostgresLockServer, roles: tuple[str, str, str], name: str
) -> None:
    _, user, _ = roles
    lock = fencelock.Lock(name, _role_url(pg, user, f"fresh_{uuid.uuid4().hex[:8]}"), ttl=5)
    with pytest.raises(fencelock.BackendRejected) as info:
        lock.try_acquire()
    assert "CREATE on the database" in str(info.value)


def test_functions_an_older_version_wrote_are_brought_up_to_date_on_first_use(
    pg: PostgresLockServer, name: str
) -> None:
    """A library upgrade must reach a schema that already exists: its functions were created only
    when one was missing, so an older version's bodies stayed for ever (force_release, for one,
    changed). Here an "older version" left a body of its own and no stamp of this version's."""
    schema = f"old_{uuid.uuid4().hex[:8]}"
    url = _role_url(pg, "postgres", schema)
    first = fencelock.Lock(name, url, ttl=5, renew=False)
    lease = first.acquire(timeout=5)
    lease.release()
    first.close()
    stamps = [
        r[0]
        for r in pg.query(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = %s AND p.proname LIKE 'layout\\_%%'",
            (schema,),
        )
    ]
    for stamp in stamps:  # the older version had none of this version's
        pg.query(f"DROP FUNCTION {schema}.{stamp}()")
    pg.query(
        f"CREATE OR REPLACE FUNCTION {schema}.last_fence(p_name text) RETURNS bigint "
        "LANGUAGE sql AS $f$ SELECT -42::bigint $f$"
    )
    try:
        fresh = PostgresBackend.from_url(url)
        try:
            assert fresh.last_fence(name) == lease.fence, "the older body answered"
        finally:
            fresh.close()
    finally:
        pg.query(f"DROP SCHEMA {schema} CASCADE")


def test_a_role_that_cannot_replace_another_versions_functions_is_told_to_ask_the_owner(
    pg: PostgresLockServer, roles: tuple[str, str, str], name: str
) -> None:
    """After an upgrade, a role with only USAGE meets functions it may not replace: the message says
    so (before, it asked for CREATE on the database to create a schema that exists)."""
    schema, user, _ = roles
    for (stamp,) in pg.query(
        "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = %s AND p.proname LIKE 'layout\\_%%'",
        (schema,),
    ):
        pg.query(f"DROP FUNCTION {schema}.{stamp}()")  # as if an older version had made the schema
    lock = fencelock.Lock(name, _role_url(pg, user, schema), ttl=5)
    with pytest.raises(fencelock.BackendRejected) as info:
        lock.try_acquire()
    message = str(info.value)
    assert "another fencelock version" in message and "owner" in message, message
    assert "CREATE on the database" not in message, message
    owner = fencelock.Lock(name, _role_url(pg, "postgres", schema), ttl=5)  # the owner's first call
    owner.try_acquire().release()
    lease = lock.try_acquire()  # and the role locks again, on the new bodies
    assert lease is not None
    lease.release()


def test_bringing_functions_up_to_date_drops_other_versions_stamps(pg: PostgresLockServer, name: str) -> None:
    """The last version to install the bodies owns them: another version's stamp is dropped, so a
    client of that version reinstalls its own instead of running bodies it was not written for."""
    schema = f"mix_{uuid.uuid4().hex[:8]}"
    url = _role_url(pg, "postgres", schema)

    def stamps() -> list[str]:
        rows = pg.query(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = %s AND p.proname LIKE 'layout\\_%%' ORDER BY 1",
            (schema,),
        )
        return [r[0] for r in rows]

    try:
        fencelock.Lock(name, url, ttl=5).try_acquire().release()
        ours = stamps()
        assert len(ours) == 1
        # another version installed its bodies after ours: its stamp, ours gone
        pg.query(f"DROP FUNCTION {schema}.{ours[0]}()")
        pg.query(
            f"CREATE FUNCTION {schema}.layout_0123456789abcdef() RETURNS boolean LANGUAGE sql AS $f$ SELECT true $f$"
        )
        fresh = PostgresBackend.from_url(url)
        try:
            assert fresh.last_fence(name) > 0
        finally:
            fresh.close()
        assert stamps() == ours, "ours back, the other version's gone (its clients will reinstall theirs)"
    finally:
        pg.query(f"DROP SCHEMA {schema} CASCADE")


# -- the server restarted, a backend terminated ----------------------------------------------------


def test_server_restart_mid_wait_is_an_error_in_bounded_time_and_the_lease_survives(
    pg: PostgresLockServer, name: str
) -> None:
    holder = fencelock.Lock(name, pg.url, ttl=60, renew=False).acquire()
    outcome: list[object] = []
    started = threading.Event()

    def wait_for_it() -> None:
        started.set()
        try:
            outcome.append(fencelock.Lock(name, pg.url, ttl=60, renew=False).acquire(timeout=30))
        except fencelock.FenceLockError as err:
            outcome.append(err)

    waiter = threading.Thread(target=wait_for_it, daemon=True)
    waiter.start()
    started.wait(WAIT)
    assert wait_until(lambda: (fencelock.Lock(name, pg.url).inspect() or holder).waiters == 1, WAIT)  # type: ignore[union-attr]
    pg.server.halt()
    down = time.monotonic()
    waiter.join(WAIT)
    took = time.monotonic() - down
    pg.server.launch()
    assert outcome and isinstance(outcome[0], fencelock.BackendUnavailable), outcome
    assert took < WAIT
    # the holder's lease was committed before the (clean) shutdown: it still holds, and it is not
    # session state: its renewal runs on a new connection
    holder.extend(ttl=60)
    assert fencelock.Lock(name, pg.url, ttl=5).try_acquire() is None
    # The failed waiter's cleanup could not reach the server: its place in the queue lapses by itself
    # (REGISTRATION_MS after its last poll); a release before that would hand it the lock.
    assert wait_until(lambda: (fencelock.Lock(name, pg.url).inspect() or holder).waiters == 0, WAIT)  # type: ignore[union-attr]
    holder.release()
    after = fencelock.Lock(name, pg.url, ttl=5, renew=False).acquire(timeout=5)
    assert after.fence > holder.fence
    after.release()


def test_pg_terminate_backend_mid_call_raises_unavailable_and_changes_nothing(
    pg: PostgresLockServer, name: str
) -> None:
    blocker = psycopg.connect(pg.url)  # holds the name's fence row: the acquire below waits inside the server
    fencelock.Lock(name, pg.url, ttl=1, renew=False).try_acquire().release()  # the fence row exists
    blocker.execute("SELECT 1 FROM fencelock.fence WHERE name = %s FOR UPDATE", (name,))
    outcome: list[object] = []
    lock = fencelock.Lock(name, pg.url, ttl=5, renew=False)

    def try_it() -> None:
        try:
            outcome.append(lock.try_acquire())
        except fencelock.FenceLockError as err:
            outcome.append(err)

    thread = threading.Thread(target=try_it, daemon=True)
    thread.start()

    def victim() -> int | None:
        rows = pg.query(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%%.acquire(%%'"
        )
        return int(rows[0][0]) if rows else None

    assert wait_until(lambda: victim() is not None, WAIT), "the acquire never waited on the row lock"
    pg.query("SELECT pg_terminate_backend(%s)", (victim(),))
    thread.join(WAIT)
    blocker.rollback()
    blocker.close()
    assert outcome and isinstance(outcome[0], fencelock.BackendUnavailable), outcome
    assert fencelock.Lock(name, pg.url).inspect() is None, "the terminated call's transaction was rolled back"
    lease = lock.try_acquire()  # the backend recovers on a new connection
    assert lease is not None
    lease.release()


def test_a_holder_whose_connection_is_terminated_still_holds(pg: PostgresLockServer, name: str) -> None:
    lease = fencelock.Lock(name, pg.url, ttl=30, renew=False).acquire()
    pg.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
    )
    assert fencelock.Lock(name, pg.url, ttl=5).try_acquire() is None
    lease.extend(ttl=30)  # the lease is a row, not a session: renewal on a new connection keeps it
    lease.release()


# -- connections: a fresh one per call, the user's own, no LISTEN ----------------------------------


class FreshPerCall:
    """A pool-shaped object (``connection()``, ``conninfo``) that opens a new server session for
    every call and closes it after: what a pooler may do to us."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self.kwargs: dict[str, Any] = {}
        self.opened = 0

    @contextlib.contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        self.opened += 1
        conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5)
        try:
            yield conn
        finally:
            conn.close()


def test_a_fresh_connection_per_call_holds_renews_and_hands_over(pg: PostgresLockServer, name: str) -> None:
    pool = FreshPerCall(pg.url)
    lock = fencelock.Lock(name, PostgresBackend(pool), ttl=1.0, renew=True)
    lease = lock.acquire(timeout=5)
    other = fencelock.Lock(name, PostgresBackend(FreshPerCall(pg.url)), ttl=5, renew=False)
    got: list[fencelock.Lease] = []
    waiter = threading.Thread(target=lambda: got.append(other.acquire(timeout=WAIT)))
    waiter.start()
    assert wait_until(lambda: pool.opened >= 4, 10), "renewals did not run"
    assert not lease.lost and not got, "the lease was lost between sessions"
    lease.release()
    waiter.join(WAIT)
    assert got and got[0].fence > lease.fence
    got[0].release()


def test_a_psycopg_pool_is_used_as_is_and_waiters_are_woken(pg: PostgresLockServer, name: str) -> None:
    from psycopg_pool import ConnectionPool

    with ConnectionPool(pg.url, min_size=1, max_size=4, open=True) as pool:
        holder = fencelock.Lock(name, pool, ttl=30, renew=False).acquire(timeout=5)
        got: list[fencelock.Lease] = []
        waiter = threading.Thread(target=lambda: got.append(fencelock.Lock(name, pool, ttl=30).acquire(timeout=WAIT)))
        waiter.start()
        assert wait_until(lambda: (fencelock.Lock(name, pool).inspect() or holder).waiters == 1, WAIT)  # type: ignore[union-attr]
        holder.release()
        waiter.join(WAIT)
        assert got and got[0].fence > holder.fence
        got[0].release()
        assert not pool.closed, "fencelock never closes a pool of yours"
        with pytest.raises(fencelock.ConfigurationError, match="blocking"):
            aio.Lock(name, pool)


async def test_an_async_psycopg_pool(pg: PostgresLockServer, name: str) -> None:
    from psycopg_pool import AsyncConnectionPool

    async with AsyncConnectionPool(pg.url, min_size=1, max_size=4, open=False) as pool:
        lease = await aio.Lock(name, pool, ttl=30, renew=False).acquire(timeout=5)
        waiter = asyncio.ensure_future(aio.Lock(name, pool, ttl=30).acquire(timeout=WAIT))
        assert await asyncio.to_thread(
            wait_until,
            lambda: (fencelock.Lock(name, pg.url).inspect() or lease).waiters == 1,
            WAIT,  # type: ignore[union-attr]
        )
        await lease.release()
        second = await asyncio.wait_for(waiter, WAIT)
        assert second.fence > lease.fence
        await second.release()


def test_polling_without_listen_is_handed_the_lock(pg: PostgresLockServer, name: str) -> None:
    url = pg.url + "&listen=off"
    holder = fencelock.Lock(name, url, ttl=30, renew=False).acquire()
    got: list[fencelock.Lease] = []
    waiter = threading.Thread(target=lambda: got.append(fencelock.Lock(name, url, ttl=30).acquire(timeout=WAIT)))
    waiter.start()
    assert wait_until(lambda: (fencelock.Lock(name, url).inspect() or holder).waiters == 1, WAIT)  # type: ignore[union-attr]
    holder.release()
    waiter.join(WAIT)
    assert got and got[0].fence > holder.fence
    got[0].release()


def test_your_own_connection_is_used_as_is_and_must_be_autocommit(pg: PostgresLockServer, name: str) -> None:
    with psycopg.connect(pg.url, autocommit=True) as conn:
        lock = fencelock.Lock(name, conn, ttl=5, renew=False)
        with lock as lease:
            assert lease.fence > 0
        lock.close()
        assert not conn.closed, "fencelock never closes a connection of yours"
    with psycopg.connect(pg.url) as conn, pytest.raises(fencelock.ConfigurationError, match="autocommit"):
        fencelock.Lock(name, conn)


async def test_your_own_async_connection(pg: PostgresLockServer, name: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg.url, autocommit=True) as conn:
        lock = aio.Lock(name, conn, ttl=5, renew=False)
        lease = await lock.acquire(timeout=5)
        waiter = asyncio.ensure_future(aio.Lock(name, AsyncPostgresBackend(conn), ttl=5).acquire(timeout=WAIT))
        await asyncio.sleep(0.05)
        await lease.release()
        second = await asyncio.wait_for(waiter, WAIT)
        assert second.fence > lease.fence
        await second.release()
    with pytest.raises(fencelock.ConfigurationError, match="blocking"):
        with psycopg.connect(pg.url, autocommit=True) as sync_conn:
            aio.Lock(name, sync_conn)


# -- names, URLs, a read-only database -------------------------------------------------------------

HOSTILE = [
    "'; DROP TABLE fencelock.lease; --",
    'a"b\\c',
    "$f$ $$ %s %(x)s {s}",
    "naïve 名前 🔒",
    "line\nbreak\ttab",
    " ",
    "x" * 2000,
]


def test_hostile_names_are_data_and_each_is_its_own_lock(pg: PostgresLockServer) -> None:
    tag = uuid.uuid4().hex[:6]
    leases = []
    for hostile in HOSTILE:
        n = hostile if len(hostile) > 100 else f"{hostile}{tag}"
        lock = fencelock.Lock(n, pg.url, ttl=30, renew=False)
        leases.append((lock, lock.acquire(timeout=5)))
    for lock, lease in leases:
        info = lock.inspect()
        assert info is not None and info.fence == lease.fence
        assert fencelock.Lock(lock.name, pg.url, ttl=5).try_acquire() is None
    assert pg.query("SELECT count(*) FROM fencelock.fence WHERE name = 'x'")[0][0] == 0
    for _, lease in leases:
        lease.release()
    with pytest.raises(fencelock.ConfigurationError, match="at most 2000 bytes"):
        fencelock.Lock("é" * 1001, pg.url, ttl=5).try_acquire()


def test_url_options_are_checked_before_any_io() -> None:
    opts = parse_postgres_url("postgres://u:p@db.example:5433/app?sslmode=require&schema=locks&request_timeout=1.5")
    assert (opts.schema, opts.request_timeout, opts.listen, opts.durable) == ("locks", 1.5, True, False)
    assert "sslmode=require" in opts.conninfo and "connect_timeout=2" in opts.conninfo
    assert "schema" not in opts.conninfo
    spaced = parse_postgres_url("postgresql://h/db?options=-c%20statement_timeout%3D200&application_name=a+b")
    assert "options=-c%20statement_timeout%3D200" in spaced.conninfo  # libpq reads "+" as a plus sign
    assert "application_name=a+b" in spaced.conninfo  # passed to libpq as written
    for bad in ("?schema=Bad-Name", "?schema=pg_catalog", "?request_timeout=0", "?listen=maybe", "?durable=2"):
        with pytest.raises(fencelock.ConfigurationError):
            parse_postgres_url("postgresql://h/db" + bad)


def test_durable_mode_locks_too(pg: PostgresLockServer, name: str) -> None:
    with fencelock.Lock(name, pg.url + "&durable=on", ttl=5) as lease:
        assert lease.fence > 0


def test_a_read_only_database_is_rejected_clearly(pg: PostgresLockServer, name: str) -> None:
    db = f"ro_{uuid.uuid4().hex[:8]}"
    pg.query(f"CREATE DATABASE {db}")
    try:
        fencelock.Lock("setup", pg.url.replace("/fencelock_test?", f"/{db}?"), ttl=1).try_acquire().release()
        pg.query(f"ALTER DATABASE {db} SET default_transaction_read_only = on")  # as a standby answers
        with pytest.raises(fencelock.BackendRejected, match="read-only"):
            fencelock.Lock(name, pg.url.replace("/fencelock_test?", f"/{db}?"), ttl=5).try_acquire()
    finally:
        pg.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db,))
        pg.query(f"DROP DATABASE {db} WITH (FORCE)")


def test_a_server_statement_timeout_is_unavailable_not_contention(pg: PostgresLockServer, name: str) -> None:
    """The server cancels our statement (here: statement_timeout while it waits for the name's row,
    which another transaction holds): an error that says so, never a silent "busy"."""
    fencelock.Lock(name, pg.url, ttl=1, renew=False).try_acquire().release()  # the row exists
    blocker = psycopg.connect(pg.url)
    try:
        blocker.execute("SELECT 1 FROM fencelock.fence WHERE name = %s FOR UPDATE", (name,))
        lock = fencelock.Lock(name, pg.url + "&options=-c%20statement_timeout%3D200", ttl=5, renew=False)
        with pytest.raises(fencelock.BackendUnavailable, match="in time"):
            lock.try_acquire()
    finally:
        blocker.rollback()
        blocker.close()
    assert fencelock.Lock(name, pg.url).inspect() is None, "the cancelled call changed nothing"


def _scans(pg: PostgresLockServer) -> tuple[int, int]:
    rows = pg.query("SELECT seq_scan, idx_scan FROM pg_stat_user_tables WHERE relid = 'fencelock.fence'::regclass")
    return int(rows[0][0]), int(rows[0][1] or 0)


def test_a_hundred_thousand_names_are_found_by_index(pg: PostgresLockServer, name: str) -> None:
    """100,000 names in the fence table (one row each, never deleted): acquire and release find the
    name's row by its primary key, never by reading the table (pg_stat_user_tables' counters)."""
    fencelock.Lock(name, pg.url, ttl=1, renew=False).try_acquire().release()  # the schema exists
    pg.query(
        "INSERT INTO fencelock.fence (name, last) SELECT 'bulk:' || g, g FROM generate_series(1, 100000) g "
        "ON CONFLICT (name) DO NOTHING"
    )
    pg.query("ANALYZE fencelock.fence")
    before = _scans(pg)
    backend = PostgresBackend.from_url(pg.url)
    try:
        backend.inspect(name)  # connect: the plans below are made with the table's new statistics
        rounds = 40
        for i in range(rounds):
            token = uuid.uuid4().hex
            attempt = backend.try_acquire(f"bulk:{1 + i * 2500}", token, 5000, "bulk", False)
            assert attempt.fence is not None and attempt.fence > 100000
            assert backend.release(f"bulk:{1 + i * 2500}", token)
    finally:
        backend.close()
    # statistics reach pg_stat_user_tables within about a second of each session going idle
    assert wait_until(lambda: _scans(pg)[1] >= before[1] + 2 * rounds, 10), (before, _scans(pg))
    assert _scans(pg)[0] == before[0], "a lock call read the whole fence table"


# -- libpq's unix-socket URL with no host part -----------------------------------------------------


def test_a_url_with_an_empty_host_part_locks_on_a_real_server(pg: PostgresLockServer, name: str) -> None:
    """``postgresql:///db?host=/socket/dir&user=...`` (libpq's own form, the one its docs give for a
    local socket) acquires and releases: the URL reaches libpq with its ``//`` kept."""
    conninfo = psycopg.conninfo.conninfo_to_dict(pg.url)
    url = f"postgresql:///{conninfo['dbname']}?host={conninfo['host']}&user={conninfo['user']}"
    lock = fencelock.Lock(name, url, ttl=5, timeout=WAIT)
    try:
        with lock as lease:
            assert lease.fence > 0
        assert lock.inspect() is None  # released: free
    finally:
        lock.close()
