"""SQLite-specific behaviour: crashes mid-transaction, many processes on one file, clear errors for
files we cannot use, reboots, asyncio, URL forms. The backend-independent contract is in
test_contract.py (run with ``-k sqlite``).

All on real files in temp dirs. No wall-clock performance thresholds: waits are bounded by generous
timeouts only so that a bug is a failure instead of a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing as mp
import os
import pickle
import random
import select
import shutil
import signal
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import fencelock
from fencelock import aio
from fencelock.backends.base import RW_LIMIT
from fencelock.backends.sqlite import AsyncSqliteBackend, SqliteBackend, parse_sqlite_url, poll_delay
from fencelock.backends.sqlite import backend as sqlite_backend
from fencelock.backends.sqlite import boot as sqlite_boot
from fencelock.backends.sqlite import schema as sqlite_schema
from fencelock.backends.sqlite.backend import BACKOFF_CAP, HEAD_CAP, HEAD_POLL, REGISTRATION
from servers import kill_pid

CTX = mp.get_context("spawn")
NOBODY = 65534


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "locks.db"


def wait_for(predicate: Callable[[], bool], timeout: float = 60) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def url_of(path: Path, **query: str) -> str:
    q = "&".join(f"{k}={v}" for k, v in query.items())
    return f"sqlite:///{path}" + (f"?{q}" if q else "")


def lock_row(path: Path, name: str) -> tuple[Any, ...] | None:
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
        row: tuple[Any, ...] | None = conn.execute(
            "SELECT token, fence, deadline FROM fencelock_lease WHERE name = ?", (name,)
        ).fetchone()
        return row


# -- URL forms ---------------------------------------------------------------------------------


def test_relative_url_creates_file_and_directories_under_the_working_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    lock = fencelock.Lock("job", "sqlite:///state/locks/app.db", ttl=5)
    assert isinstance(lock.backend, SqliteBackend)
    with lock as lease:
        assert lease.fence > 0
    assert (tmp_path / "state" / "locks" / "app.db").is_file()
    # resolved once: a later chdir does not move the lock to another file
    monkeypatch.chdir("/")
    with lock as lease2:
        assert lease2.fence > lease.fence
    lock.close()


def test_absolute_url_with_four_slashes_and_busy_timeout(tmp_path: Path) -> None:
    target = tmp_path / "abs dir" / "locks.db"
    url = "sqlite:///" + str(target).replace(" ", "%20") + "?busy_timeout=0.25"
    assert url.startswith("sqlite:////")
    assert parse_sqlite_url(url) == (str(target), 0.25)
    backend = SqliteBackend.from_url(url)
    assert backend.path == str(target) and backend.busy_timeout == 0.25
    lock = fencelock.Lock("job", backend, ttl=5)
    with lock:
        assert target.is_file()
    backend.close()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://host/locks.db",
        "sqlite://",
        "sqlite:///",
        "sqlite:///:memory:",
        "sqlite:///locks.db?mode=ro",
        "sqlite:///locks.db?busy_timeout=-1",
        "sqlite:///locks.db?busy_timeout=soon",
    ],
)
def test_bad_urls_are_configuration_errors_before_any_io(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where a relative path would create its file
    with pytest.raises(fencelock.ConfigurationError) as info:
        fencelock.Lock("job", url)
    assert "sqlite" in str(info.value).lower() or "busy_timeout" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_resolver_gives_the_async_backend_to_aio(db: Path) -> None:
    lock = aio.Lock("job", url_of(db))
    assert isinstance(lock.backend, AsyncSqliteBackend)
    assert lock.backend.path == str(db)
    assert not db.exists(), "constructing a lock does no I/O"


# -- leases, fences, labels --------------------------------------------------------------------


def test_inspect_shows_label_fence_and_waiters_never_the_token(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_backend, "REGISTRATION", 60.0)  # the queued waiter stays live
    url = url_of(db)
    lock = fencelock.Lock("job", url, ttl=30, label="worker-7")
    lease = lock.acquire()
    waiter = SqliteBackend(db)
    assert waiter.try_acquire("job", "t" * 32, 30_000, "w", True).fence is None  # queued
    info = lock.inspect()
    assert info is not None
    assert (info.name, info.holder, info.fence, info.waiters) == ("job", "worker-7", lease.fence, 1)
    assert info.ttl_remaining is not None and 0 < info.ttl_remaining <= 30
    assert lease.token not in repr(info)
    waiter.abandon("job", "t" * 32)
    lease.release()
    assert lock.inspect() is None
    waiter.close()
    lock.close()


def test_fence_counter_survives_deleting_the_lock_row(db: Path) -> None:
    backend = SqliteBackend(db)
    lock = fencelock.Lock("job", backend, ttl=30, label="batch-3")
    first = lock.acquire()
    assert backend.force_release("job") == "batch-3"  # operator deletes the row under the holder
    assert backend.force_release("job") is None  # nothing held any more
    second = lock.acquire(timeout=0)
    assert second.fence > first.fence
    assert backend.last_fence("job") == second.fence
    second.release()
    with pytest.raises(fencelock.LeaseLost):
        first.release()
    backend.close()


def test_fences_still_grow_when_the_counter_file_is_lost(tmp_path: Path) -> None:
    # e.g. the lock file lived on a tmpfs and the host rebooted: the wall-clock seed restarts above
    old = SqliteBackend(tmp_path / "old.db")
    before = fencelock.Lock("job", old).acquire()
    before.release()
    old.close()
    (tmp_path / "old.db").unlink()
    new = SqliteBackend(tmp_path / "old.db")
    after = fencelock.Lock("job", new).acquire()
    assert after.fence > before.fence
    after.release()
    new.close()


def test_a_deleted_lock_file_is_noticed_by_open_connections(db: Path) -> None:
    a = SqliteBackend(db)
    lock_a = fencelock.Lock("job", a, ttl=30, renew=False)
    lease = lock_a.acquire()
    for suffix in ("", "-wal", "-shm"):  # a cleaner removes the file while it is in use
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    b = SqliteBackend(db)
    other = fencelock.Lock("job", b, ttl=30).acquire(timeout=0)  # a new, empty file
    assert other.fence > lease.fence, "the clock floor keeps fences increasing"
    with pytest.raises(fencelock.LeaseLost):
        lease.extend()  # the old holder is told at its next renewal, not left in a ghost file
    assert lock_a.try_acquire() is None, "and it now sees the same file as everyone else"
    info = a.inspect("job")
    assert info is not None and info.fence == other.fence
    other.release()
    a.close()
    b.close()


def test_rows_of_another_boot_count_as_expired(db: Path) -> None:
    before_reboot = SqliteBackend(db, boot_id="boot-before")
    stale = before_reboot.try_acquire("job", "a" * 32, 600_000, "old", False)
    assert stale.fence is not None
    now = SqliteBackend(db)  # this boot's real id
    assert now.inspect("job") is None
    got = now.try_acquire("job", "b" * 32, 5_000, "new", False)
    assert got.fence is not None and got.fence > stale.fence
    # and the old boot's token can no longer touch the lock
    assert not before_reboot.release("job", "a" * 32)
    assert now.release("job", "b" * 32)
    before_reboot.close()
    now.close()


@pytest.mark.parametrize("first_known", [True, False], ids=["known-holds", "unknown-holds"])
def test_an_unreadable_boot_id_never_makes_a_live_lease_look_expired(
    db: Path, first_known: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One boot, two processes: one reads the boot id, the other cannot (systemd ProcSubset=pid or a
    sandbox hides /proc/sys). Neither may take the other's live lease for one of an earlier boot."""
    known = SqliteBackend(db)
    assert known.boot not in ("", sqlite_boot.UNKNOWN_BOOT), "this test needs a readable boot id"
    monkeypatch.setattr(sqlite_boot, "BOOT_ID_PATH", str(db.parent / "hidden" / "boot_id"))
    blind = SqliteBackend(db)  # its reader finds no file, as under ProcSubset=pid
    assert blind.boot == sqlite_boot.UNKNOWN_BOOT
    holder, other = (known, blind) if first_known else (blind, known)
    got = holder.try_acquire("job", "h" * 32, 60_000, "holder", False)
    assert got.fence is not None
    assert other.try_acquire("job", "o" * 32, 60_000, "other", False).fence is None, "two holders"
    info = other.inspect("job")
    assert info is not None and info.fence == got.fence
    assert not other.release("job", "o" * 32) and not other.extend("job", "o" * 32, 60_000)
    assert holder.extend("job", "h" * 32, 60_000)
    assert holder.release("job", "h" * 32)
    assert other.try_acquire("job", "o" * 32, 60_000, "other", False).fence is not None
    known.close()
    blind.close()


def test_boot_id_reader_says_unknown_for_what_it_cannot_read(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for source in (tmp_path / "missing", tmp_path, empty):  # absent, a directory, empty
        assert sqlite_backend.read_boot_id(str(source)) == sqlite_boot.UNKNOWN_BOOT
    real = tmp_path / "boot_id"
    real.write_text("0f2d-example\n")
    assert sqlite_backend.read_boot_id(str(real)) == "0f2d-example"


def test_a_lease_of_an_unknown_boot_still_expires_after_a_reboot(db: Path) -> None:
    """Rows written without a boot id before a reboot lie on the old, further-along clock: the
    "further ahead than its ttl" bound expires them for a process that knows its boot id."""
    before = SqliteBackend(db, boot_id=sqlite_boot.UNKNOWN_BOOT, clock=lambda: time.monotonic() + 1e6)
    assert before.try_acquire("job", "a" * 32, 60_000, "old", False).fence is not None
    after = SqliteBackend(db)
    assert after.inspect("job") is None
    assert after.try_acquire("job", "b" * 32, 5_000, "new", False).fence is not None
    before.close()
    after.close()


def test_a_waiter_without_boot_id_keeps_its_turn(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The queue follows the same rule: a live waiter that cannot read the boot id is not dropped as
    "of another boot" by a process that can (which would let a newcomer barge past it)."""
    monkeypatch.setattr(sqlite_backend, "REGISTRATION", 60.0)
    holder, blind = SqliteBackend(db), SqliteBackend(db, boot_id=sqlite_boot.UNKNOWN_BOOT)
    assert holder.try_acquire("job", "h" * 32, 30_000, "holder", False).fence is not None
    assert blind.try_acquire("job", "w" * 32, 30_000, "waiter", True).fence is None  # queued
    info = holder.inspect("job")
    assert info is not None and info.waiters == 1
    assert holder.release("job", "h" * 32)
    assert holder.try_acquire("job", "n" * 32, 30_000, "newcomer", False).fence is None, "barged"
    assert blind.try_acquire("job", "w" * 32, 30_000, "waiter", True).fence is not None
    holder.close()
    blind.close()


def test_a_deadline_further_ahead_than_its_ttl_counts_as_expired(db: Path) -> None:
    # Without a boot id (non-Linux), a row written before a reboot has a deadline on a clock that
    # was further along: more than its ttl ahead of ours, which this clock can never produce.
    same_boot = "no-boot-id"
    earlier_uptime = SqliteBackend(db, boot_id=same_boot, clock=lambda: time.monotonic() + 1e6)
    assert earlier_uptime.try_acquire("job", "a" * 32, 60_000, "old", False).fence is not None
    after_reboot = SqliteBackend(db, boot_id=same_boot)
    assert after_reboot.inspect("job") is None
    assert after_reboot.try_acquire("job", "b" * 32, 5_000, "new", False).fence is not None
    assert after_reboot.release("job", "b" * 32)
    earlier_uptime.close()
    after_reboot.close()


def test_a_live_waiter_behind_a_crowd_of_crashed_ones_is_first(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A fleet restart leaves many dead waiters ahead of the live ones. However many there are, the
    # first live waiter is first: no dead one may stand in its way, and the queue is not "empty".
    holder = SqliteBackend(db)
    assert holder.try_acquire("job", "h" * 32, 60_000, "h", False).fence is not None
    monkeypatch.setattr(sqlite_backend, "REGISTRATION", 0.05)  # the crowd's registrations lapse soon
    crowd = SqliteBackend(db)
    for i in range(100):
        assert crowd.try_acquire("job", f"{i:032d}", 60_000, "dead", True).fence is None
    time.sleep(0.2)  # the crowd "crashed": no more polls
    monkeypatch.setattr(sqlite_backend, "REGISTRATION", 60.0)  # the live waiter stays live
    live, newcomer = SqliteBackend(db), SqliteBackend(db)
    assert live.try_acquire("job", "w" * 32, 60_000, "w", True).fence is None
    assert holder.release("job", "h" * 32)
    assert newcomer.try_acquire("job", "n" * 32, 60_000, "n", False).fence is None, "barged past the live waiter"
    got = live.try_acquire("job", "w" * 32, 60_000, "w", True)
    assert got.fence is not None, "the live waiter behind the crashed ones must get the lock"
    for b in (holder, crowd, live, newcomer):
        b.close()


def test_newcomer_cannot_barge_past_a_live_waiter(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_backend, "REGISTRATION", 60.0)  # the waiter stays live all test long
    holder, waiter = SqliteBackend(db), SqliteBackend(db)
    assert holder.try_acquire("job", "h" * 32, 30_000, "holder", False).fence is not None
    assert waiter.try_acquire("job", "w" * 32, 30_000, "waiter", True).fence is None  # queued
    assert holder.release("job", "h" * 32)
    newcomer = fencelock.Lock("job", url_of(db), ttl=30)
    assert newcomer.try_acquire() is None, "the lock is free, but a live waiter came first"
    assert waiter.try_acquire("job", "w" * 32, 30_000, "waiter", True).fence is not None
    assert waiter.release("job", "w" * 32)
    lease = newcomer.try_acquire()
    assert lease is not None, "nobody waits any more"
    lease.release()
    for b in (holder, waiter):
        b.close()
    newcomer.close()


def test_a_dead_waiter_loses_its_turn(db: Path) -> None:
    holder = SqliteBackend(db)
    assert holder.try_acquire("job", "h" * 32, 30_000, "holder", False).fence is not None
    ghost = SqliteBackend(db)  # queues, then never polls again (as if killed)
    assert ghost.try_acquire("job", "g" * 32, 30_000, "ghost", True).fence is None
    with contextlib.closing(sqlite3.connect(db)) as conn:
        (ghost_alive,) = conn.execute("SELECT alive FROM fencelock_waiter WHERE name = 'job'").fetchone()
    assert ghost_alive <= time.monotonic() + REGISTRATION
    assert holder.release("job", "h" * 32)
    newcomer = fencelock.Lock("job", url_of(db), ttl=30)
    lease = newcomer.acquire(timeout=60)
    assert time.monotonic() >= ghost_alive, "not before the ghost's turn lapsed"
    info = holder.inspect("job")
    assert info is not None and info.waiters == 0, "the ghost was dropped from the queue"
    lease.release()
    for b in (holder, ghost):
        b.close()
    newcomer.close()


def test_release_rings_the_first_waiters_doorbell(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_backend, "REGISTRATION", 60.0)  # waiters that do not poll stay live
    holder, first, second = SqliteBackend(db), SqliteBackend(db), SqliteBackend(db)
    assert holder.try_acquire("job", "h" * 32, 30_000, "h", False).fence is not None
    assert first.try_acquire("job", "1" * 32, 30_000, "1", True).fence is None
    assert second.try_acquire("job", "2" * 32, 30_000, "2", True).fence is None
    bell1, bell2 = first.bells.listen("1" * 32), second.bells.listen("2" * 32)
    assert bell1 is not None and bell2 is not None, "doorbells work on Linux"
    assert holder.release("job", "h" * 32)
    assert bell1.recv(16) == b"!", "the first waiter was woken"
    with pytest.raises(BlockingIOError):
        bell2.recv(16)  # the second was not: it is not its turn
    assert first.try_acquire("job", "1" * 32, 30_000, "1", True).fence is not None
    assert "1" * 32 not in first.bells._listening, "the granted waiter stopped listening"
    first.abandon("job", "1" * 32)  # gives the lock up: the next in line is woken
    assert bell2.recv(16) == b"!"
    second.abandon("job", "2" * 32)
    holder.bells.ring("0" * 32)  # nobody listens: nothing happens, nothing raises
    for b in (holder, first, second):
        b.close()


def test_without_doorbells_a_waiter_still_gets_the_lock_by_polling(db: Path) -> None:
    holder = fencelock.Lock("job", url_of(db), ttl=60, renew=False).acquire()
    polling = SqliteBackend(db)
    polling.bells.enabled = False  # as on an OS without abstract unix sockets
    got: list[fencelock.Lease] = []
    t = threading.Thread(target=lambda: got.append(fencelock.Lock("job", polling, ttl=60).acquire(timeout=60)))
    t.start()
    assert wait_for(lambda: polling.inspect("job") is not None and polling.inspect("job").waiters == 1)  # type: ignore[union-attr]
    holder.release()
    t.join(60)
    assert got and got[0].fence > holder.fence
    assert polling.bells._listening == {}, "no socket was bound"
    got[0].release()
    polling.close()


@pytest.mark.parametrize("rung", [True, False])
@pytest.mark.parametrize("first", [True, False])
def test_poll_delay_never_exceeds_the_timeout_or_the_holders_lease(first: bool, rung: bool) -> None:
    rng = random.Random(7)
    for attempt in range(200):
        left = rng.choice([0.0005, 0.003, 0.2, 30.0])
        holder_left = rng.choice([None, 0.0004, 0.002, 10.0])
        delay = poll_delay(attempt, first, holder_left, left, rung)
        assert 0 < delay <= left
        assert holder_left is None or delay <= max(0.0002, holder_left)
        assert delay <= (BACKOFF_CAP if not first else HEAD_CAP if rung else HEAD_POLL)


def test_wait_returns_when_its_timeout_passes_on_the_backends_clock(db: Path) -> None:
    holder = SqliteBackend(db)
    assert holder.try_acquire("job", "h" * 32, 60_000, "h", False).fence is not None
    reads = itertools.count()
    step = 0.05  # every clock read moves the waiter's clock on by 50 ms: no real waiting needed

    def clock() -> float:
        return time.monotonic() + step * next(reads)

    waiter = SqliteBackend(db, clock=clock)
    assert waiter.wait("job", "w" * 32, timeout=1.0) is None
    assert next(reads) < 100, "wait kept looking after its timeout"
    holder.close()
    waiter.close()


def test_interrupted_transaction_does_not_keep_the_write_lock(db: Path) -> None:
    backend = SqliteBackend(db, busy_timeout=30)

    def body(conn: sqlite3.Connection, now: float) -> None:
        conn.execute("UPDATE fencelock_fence SET last = last + 1")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        backend.db.write("test", body)
    other = sqlite3.connect(db, timeout=0.01, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # would raise "database is locked" if the write lock stayed
    other.execute("ROLLBACK")
    other.close()
    assert fencelock.Lock("job", backend).acquire(timeout=0) is not None
    backend.close()


def _open_files(path: Path) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}") == str(path)
    return count


def test_threads_that_come_and_go_reuse_connections(db: Path) -> None:
    backend = SqliteBackend(db)
    lock = fencelock.Lock("job", backend, ttl=5)

    def once() -> None:
        lock.acquire(timeout=30).release()

    for _ in range(100):  # like renewer threads or short-lived workers: one after the other
        t = threading.Thread(target=once)
        t.start()
        t.join(60)
    assert _open_files(db) == 1, "one idle connection, not one per thread that ever called"
    backend.close()
    assert _open_files(db) == 0


def test_forked_child_opens_its_own_connection(db: Path) -> None:
    backend = SqliteBackend(db)
    assert backend.try_acquire("parent", "p" * 32, 30_000, "p", False).fence is not None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: same backend object, must not reuse the parent's connection
        code = 1
        try:
            got = backend.try_acquire("child", "c" * 32, 30_000, "c", False)
            code = 0 if got.fence is not None and backend.release("child", "c" * 32) else 2
        finally:
            os.write(write_end, bytes([code]))
            os._exit(0)
    os.close(write_end)
    try:
        assert select.select([read_end], [], [], 60)[0], "child did not answer"
        assert os.read(read_end, 1) == b"\x00"
    finally:
        os.close(read_end)
        kill_pid(pid)
    assert backend.release("parent", "p" * 32)  # the parent's connection still works
    backend.close()


# -- a holder killed with SIGKILL in the middle of a write transaction ---------------------------


def _die_mid_transaction(path: str, name: str, ready: Any) -> None:
    backend = SqliteBackend(path)
    fence = backend.try_acquire(name, "k" * 32, 1_500, "doomed", False).fence
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA cache_size = 2")  # spill uncommitted pages into the WAL file
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE fencelock_fence SET last = last + 1000000000 WHERE name = ?", (name,))
    conn.execute("UPDATE fencelock_lease SET deadline = deadline + 1000000 WHERE name = ?", (name,))
    conn.execute("CREATE TABLE scratch (x)")
    conn.executemany("INSERT INTO scratch VALUES (?)", ((os.urandom(512),) for _ in range(2000)))
    ready.put(fence)  # the write lock is ours and half a transaction is on disk
    time.sleep(120)


def test_holder_killed_mid_transaction(db: Path) -> None:
    name = "job"
    ready = CTX.Queue()
    child = CTX.Process(target=_die_mid_transaction, args=(str(db), name, ready))
    child.start()
    try:
        child_fence = ready.get(timeout=120)
    finally:
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join(30)
    assert child.exitcode is not None and child.exitcode < 0
    # The half-done transaction vanished: counter and lease are what the child committed.
    backend = SqliteBackend(db, busy_timeout=30)
    assert backend.last_fence(name) == child_fence
    row = lock_row(db, name)
    assert row is not None and row[1] == child_fence
    lease_ended = row[2]
    # The next contender gets the lock once (and only once) the dead holder's lease ends.
    lease = fencelock.Lock(name, backend, ttl=5).acquire(timeout=60)
    assert time.monotonic() >= lease_ended
    assert lease.fence > child_fence and backend.last_fence(name) == lease.fence
    lease.release()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "scratch" not in tables
    backend.close()


# -- many processes hammering one lock -----------------------------------------------------------


def _hammer(url: str, name: str, counter: str, rounds: int, start: Any, out: Any) -> None:
    lock = fencelock.Lock(name, url, ttl=10)
    records: list[tuple[float, float, int, int]] = []

    def run() -> None:
        for _ in range(rounds):
            lease = lock.acquire(timeout=120)
            begin = time.monotonic()
            # read-modify-write of a plain file: any overlap would lose an increment
            value = int(Path(counter).read_text())
            Path(counter).write_text(str(value + 1))
            end = time.monotonic()
            records.append((begin, end, lease.fence, os.getpid()))
            lease.release()

    start.wait(60)
    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    out.put(records)


def test_processes_hammering_one_lock_never_overlap_and_fences_increase(tmp_path: Path) -> None:
    procs_n, rounds = 4, 40  # 4 processes x 2 threads x 40 rounds
    counter = tmp_path / "counter"
    counter.write_text("0")
    url, start, out = url_of(tmp_path / "locks.db"), CTX.Event(), CTX.Queue()
    procs = [CTX.Process(target=_hammer, args=(url, "hot", str(counter), rounds, start, out)) for _ in range(procs_n)]
    for p in procs:
        p.start()
    records: list[tuple[float, float, int, int]] = []
    try:
        start.set()
        for _ in procs:
            records.extend(out.get(timeout=300))
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
                p.join(10)
    total = procs_n * 2 * rounds
    assert len(records) == total
    assert int(counter.read_text()) == total, "an increment was lost: two holders at once"
    records.sort()
    for (_b1, e1, f1, _), (b2, _e2, f2, _) in itertools.pairwise(records):
        assert e1 <= b2, "critical sections overlap"
        assert f2 > f1, "fences must grow in the order the lock was held"
    assert len({r[3] for r in records}) == procs_n


def _open_and_lock(url: str, start: Any, out: Any) -> None:
    start.wait(60)
    try:
        lease = fencelock.Lock("job", url, ttl=10).acquire(timeout=60)
        lease.release()
        out.put(lease.fence)
    except Exception as err:
        out.put(repr(err))


def test_many_processes_creating_the_file_at_once_all_get_the_lock(tmp_path: Path) -> None:
    # A new file is switched to WAL by whoever comes first: concurrent switches must not deadlock.
    url, start, out = url_of(tmp_path / "fresh" / "locks.db"), CTX.Event(), CTX.Queue()
    procs = [CTX.Process(target=_open_and_lock, args=(url, start, out)) for _ in range(6)]
    for p in procs:
        p.start()
    try:
        time.sleep(1.0)  # let them import; they then open the file together
        start.set()
        results = [out.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
                p.join(10)
    assert all(isinstance(r, int) for r in results), results
    assert len(set(results)) == 6


# -- files we cannot use: clear, typed errors ------------------------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A temp dir that an unprivileged user can enter (pytest's own tmp dirs are root-only)."""
    path = Path(tempfile.mkdtemp(prefix="fl-sqlite-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        path.chmod(0o755)  # a test may have made it read-only
        shutil.rmtree(path, ignore_errors=True)


def as_unprivileged(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` where file permissions apply: in a forked child as ``nobody`` when we are root
    (root ignores permission bits), else right here. Returns what it returned or raised."""
    if os.geteuid() != 0:
        try:
            return fn()
        except Exception as err:
            return err
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                result: Any = fn()
            except Exception as err:
                result = err
            os.write(write_end, pickle.dumps(result))
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end and select.select([read_end], [], [], end - time.monotonic())[0]:
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        kill_pid(pid)
    assert chunks, "the unprivileged child did not answer"
    return pickle.loads(b"".join(chunks))


def _make_db(path: Path) -> None:
    backend = SqliteBackend(path)
    backend.try_acquire("warm", "w" * 32, 1000, "w", False)
    backend.close()


def _attempt(url: str) -> Callable[[], Any]:
    def run() -> Any:
        fencelock.Lock("job", url, ttl=5).acquire(timeout=1)
        return "acquired"

    return run


def test_read_only_file_is_a_clear_error(shared_dir: Path) -> None:
    path = shared_dir / "locks.db"
    _make_db(path)
    shared_dir.chmod(0o777)  # the directory is writable: only the file is not
    path.chmod(0o444)
    err = as_unprivileged(_attempt(url_of(path)))
    assert isinstance(err, fencelock.BackendRejected), err
    assert "read-only" in str(err) and "write permission" in str(err) and str(path) in str(err)


def test_read_only_directory_is_a_clear_error(shared_dir: Path) -> None:
    path = shared_dir / "locks.db"
    _make_db(path)
    path.chmod(0o666)  # the file is writable, but its -wal/-shm cannot be created beside it
    shared_dir.chmod(0o555)
    err = as_unprivileged(_attempt(url_of(path)))
    assert isinstance(err, fencelock.BackendRejected), err
    assert "director" in str(err) and str(path) in str(err)


def test_missing_file_in_a_read_only_directory_is_a_clear_error(shared_dir: Path) -> None:
    shared_dir.chmod(0o555)
    for path in (shared_dir / "new.db", shared_dir / "sub" / "new.db"):
        err = as_unprivileged(_attempt(url_of(path)))
        assert isinstance(err, fencelock.BackendRejected), err
        assert "director" in str(err) and str(path.parent) in str(err)
        assert not path.exists()


def test_garbage_file_is_a_clear_error(db: Path) -> None:
    db.write_bytes(b"this is a csv file, not a database\n" * 200)
    with pytest.raises(fencelock.BackendRejected) as info:
        fencelock.Lock("job", url_of(db)).acquire(timeout=1)
    assert "not a SQLite database" in str(info.value) and str(db) in str(info.value)
    assert db.read_bytes().startswith(b"this is a csv file"), "the file was left as it was"


@pytest.fixture
def random_bytes_file(db: Path) -> Path:
    db.write_bytes(os.urandom(8192))
    return db


async def test_garbage_file_is_a_clear_error_in_asyncio(random_bytes_file: Path) -> None:
    db = random_bytes_file
    with pytest.raises(fencelock.BackendRejected) as info:
        await aio.Lock("job", url_of(db)).acquire(timeout=1)
    assert "not a SQLite database" in str(info.value)


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's long write transaction
    return other


def test_database_locked_past_the_busy_timeout_is_a_clear_error_within_bounded_time(db: Path) -> None:
    _make_db(db)
    lock = fencelock.Lock("job", url_of(db, busy_timeout="0.2"), ttl=60)  # outlives any stall
    lease = lock.acquire()
    other = _hold_write_lock(db)
    outcome: list[BaseException | None] = []

    def try_it() -> None:
        try:
            fencelock.Lock("job2", url_of(db, busy_timeout="0.2")).acquire(timeout=1)
            outcome.append(None)
        except BaseException as err:
            outcome.append(err)

    t = threading.Thread(target=try_it)
    t.start()
    t.join(60)  # generous: the busy timeout is 0.2 s; a hang would stay here
    assert outcome, "acquire hung on a locked database"
    err = outcome[0]
    assert isinstance(err, fencelock.BackendUnavailable), err
    assert "busy timeout" in str(err) and "busy_timeout" in str(err)
    # the holder learns the same way: an error, not a False that would mean "lost"
    with pytest.raises(fencelock.BackendUnavailable):
        lease.extend()
    assert lock.inspect() is not None  # WAL readers are not blocked by the writer
    other.execute("ROLLBACK")
    other.close()
    lease.release()
    lock.close()


# -- asyncio -----------------------------------------------------------------------------------


async def test_async_waiter_gets_the_lock_when_the_holder_releases(db: Path) -> None:
    url = url_of(db)
    holder = await aio.Lock("job", url, ttl=60, renew=False).acquire()
    waiter_lock = aio.Lock("job", url, ttl=60)

    async def wait_for_it() -> int:
        lease = await waiter_lock.acquire(timeout=30)
        fence = lease.fence
        await lease.release()
        return fence

    task = asyncio.create_task(wait_for_it())
    await asyncio.sleep(0.2)
    assert not task.done()
    info = await waiter_lock.inspect()
    assert info is not None and info.waiters == 1
    await holder.release()
    assert await asyncio.wait_for(task, 60) > holder.fence
    await waiter_lock.aclose()


async def test_async_calls_run_off_the_event_loop(db: Path) -> None:
    _make_db(db)
    other = _hold_write_lock(db)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    tick_task = asyncio.create_task(ticker())
    try:
        with pytest.raises(fencelock.BackendUnavailable):
            await aio.Lock("job", url_of(db, busy_timeout="1")).acquire(timeout=1)
    finally:
        tick_task.cancel()
        other.execute("ROLLBACK")
        other.close()
    assert ticks > 0, "the event loop was blocked while SQLite waited for the write lock"


async def test_async_cancelled_acquire_leaves_no_row(db: Path) -> None:
    backend = AsyncSqliteBackend(db)
    lock = aio.Lock("job", backend, ttl=60)
    for _ in range(20):  # cancel at different points of the acquire transaction
        task = asyncio.create_task(lock.acquire(timeout=5))
        await asyncio.sleep(random.uniform(0, 0.003))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            lease = await task
            await lease.release()
        assert await backend.inspect("job") is None, "a cancelled acquire left the lock held"
    await backend.aclose()


async def test_async_cancel_before_the_threads_commit_still_leaves_no_row(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker thread cannot be stopped: if the cancelled caller did not wait for it, the lock's
    # cleanup (abandon) would run first and the acquire would commit after it, leaving a held row.
    backend = AsyncSqliteBackend(db)
    entered = threading.Event()
    real = backend.sync.try_acquire

    def late(key: str, token: str, ttl_ms: int, label: str, queue: bool) -> Any:
        entered.set()
        time.sleep(0.2)
        return real(key, token, ttl_ms, label, queue)

    monkeypatch.setattr(backend.sync, "try_acquire", late)
    task = asyncio.create_task(aio.Lock("job", backend, ttl=60).acquire(timeout=5))
    for _ in range(6000):
        if entered.is_set():
            break
        await asyncio.sleep(0.01)
    assert entered.is_set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await backend.inspect("job") is None, "the acquire committed after its cleanup"
    assert await backend.last_fence("job") > 0, "the acquire did commit (and was then undone)"
    await backend.aclose()


# -- counted leases: statements, doorbells, a killed holder ------------------------------------------

RW = RW_LIMIT


def traced(backend: SqliteBackend) -> list[str]:
    """The statements the backend's next calls run (single-threaded: the one idle connection is reused)."""
    statements: list[str] = []
    conn = backend.db.checkout()
    conn.set_trace_callback(statements.append)
    backend.db.checkin(conn)
    return statements


def test_the_uncontended_mutex_runs_the_statements_it_always_did(db: Path) -> None:
    """Counted leases must not slow the mutex down: acquire stays one transaction of five statements
    (holders, queue head, fence read, fence write, lease write) and release one delete plus one look
    at the queue for whom to wake."""
    backend = SqliteBackend(db)
    assert backend.try_acquire("warm", "w" * 32, 30_000, "w", False).fence is not None  # file set up
    statements = traced(backend)
    assert backend.try_acquire("job", "a" * 32, 30_000, "a", True).fence is not None
    acquire = list(statements)
    statements.clear()
    assert backend.release("job", "a" * 32)
    release = list(statements)
    assert [s.split()[0] for s in acquire] == ["BEGIN", "SELECT", "SELECT", "SELECT", "INSERT", "INSERT", "COMMIT"]
    assert [s.split()[0] for s in release] == ["DELETE", "SELECT"]
    backend.close()


def test_dead_waiters_ahead_cost_a_bounded_number_of_statements(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crowd of crashed writers ahead of a live reader: one grant clears them all with a fixed
    number of statements (never one per dead waiter), and the reader behind them is first."""
    reader = SqliteBackend(db)
    assert reader.try_acquire("job", "r" * 32, 60_000, "r", False, RW, 1).fence is not None
    monkeypatch.setattr(sqlite_backend, "REGISTRATION", 0.05)
    crowd = SqliteBackend(db)
    for i in range(200):
        assert crowd.try_acquire("job", f"{i:032d}", 60_000, "dead", True, RW, RW).fence is None
    time.sleep(0.2)  # the crowd's registrations lapse: they "crashed"
    monkeypatch.setattr(sqlite_backend, "REGISTRATION", 60.0)
    late = SqliteBackend(db)
    assert late.try_acquire("warm", "x" * 32, 1_000, "x", False).fence is not None
    statements = traced(late)
    got = late.try_acquire("job", "l" * 32, 60_000, "l", True, RW, 1)
    assert got.fence is not None, "the reader behind dead writers must get in beside the live reader"
    assert len(statements) <= 12, statements
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM fencelock_waiter WHERE name = 'job'").fetchone() == (0,)
    for b in (reader, crowd, late):
        b.close()


def test_a_writers_release_rings_every_reader_at_the_head_and_no_one_behind_a_writer(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_backend, "REGISTRATION", 60.0)  # waiters that do not poll stay live
    backend = SqliteBackend(db)
    assert backend.try_acquire("rw", "W" * 32, 30_000, "writer", False, RW, RW).fence is not None
    queue = [("1" * 32, 1), ("2" * 32, 1), ("3" * 32, 1), ("X" * 32, RW), ("4" * 32, 1)]
    bells = {}
    for token, weight in queue:
        assert backend.try_acquire("rw", token, 30_000, token[0], True, RW, weight).fence is None
        bells[token] = backend.bells.listen(token)
        assert bells[token] is not None, "doorbells work on Linux"
    assert backend.release("rw", "W" * 32)
    for token in ("1" * 32, "2" * 32, "3" * 32):
        assert bells[token].recv(16) == b"!", "every reader at the head is woken"  # type: ignore[union-attr]
    for token in ("X" * 32, "4" * 32):
        with pytest.raises(BlockingIOError):  # the next writer must wait for them, the reader behind it too
            bells[token].recv(16)  # type: ignore[union-attr]
    # The third reader asks before the first two: refused (they came first), and woken again as soon
    # as the first grant leaves room for it.
    assert backend.try_acquire("rw", "3" * 32, 30_000, "3", True, RW, 1).fence is None
    assert backend.try_acquire("rw", "1" * 32, 30_000, "1", True, RW, 1).fence is not None
    assert bells["3" * 32].recv(16) == b"!"  # type: ignore[union-attr]
    assert backend.try_acquire("rw", "2" * 32, 30_000, "2", True, RW, 1).fence is not None
    assert backend.try_acquire("rw", "3" * 32, 30_000, "3", True, RW, 1).fence is not None
    assert backend.try_acquire("rw", "4" * 32, 30_000, "4", True, RW, 1).fence is None, "overtook the writer"
    for token in ("X" * 32, "4" * 32):
        with pytest.raises(BlockingIOError):
            bells[token].recv(16)  # type: ignore[union-attr]
    backend.close()


def test_a_killed_semaphore_holders_permit_frees_at_its_deadline_not_before(db: Path) -> None:
    ready = CTX.Queue()
    child = CTX.Process(target=_take_permit_and_hang, args=(str(db), ready))
    child.start()
    try:
        child_fence = ready.get(timeout=120)
    finally:
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join(30)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        (ends,) = conn.execute("SELECT deadline FROM fencelock_lease WHERE fence = ?", (child_fence,)).fetchone()
    backend = SqliteBackend(db)
    assert backend.try_acquire("pool", "m" * 32, 60_000, "me", False, 2, 1).fence is not None
    end = time.monotonic() + 60
    while (got := backend.try_acquire("pool", "l" * 32, 30_000, "late", True, 2, 1)).fence is None:
        assert time.monotonic() < end, "the dead holder's permit was never freed"
        backend.wait("pool", "l" * 32, min(got.retry_after or 1.0, end - time.monotonic()))
    assert time.monotonic() >= ends, "the dead holder's permit was given away before its lease ended"
    assert got.fence > child_fence
    info = backend.inspect("pool")
    assert info is not None and [h.holder for h in info.holders] == ["me", "late"]
    backend.close()


def _take_permit_and_hang(path: str, ready: Any) -> None:
    backend = SqliteBackend(path)
    ready.put(backend.try_acquire("pool", "k" * 32, 1_500, "doomed", False, 2, 1).fence)
    time.sleep(120)


# -- the lock file of fencelock 0.1.0 ---------------------------------------------------------------

# The tables exactly as fencelock 0.1.0 created them (one lease row per name), and the statements
# with which a 0.1.0 process writes leases: the on-disk contract of that release.
SCHEMA_0_1 = (
    "CREATE TABLE IF NOT EXISTS fencelock_fence (name TEXT PRIMARY KEY, last INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS fencelock_lock (name TEXT PRIMARY KEY, token TEXT NOT NULL, fence INTEGER NOT NULL, "
    "label TEXT NOT NULL, boot TEXT NOT NULL, deadline REAL NOT NULL, ttl REAL NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS fencelock_waiter (name TEXT NOT NULL, token TEXT NOT NULL, seq INTEGER NOT NULL, "
    "boot TEXT NOT NULL, alive REAL NOT NULL, PRIMARY KEY (name, token)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS fencelock_waiter_order ON fencelock_waiter (name, seq)",
)
STORE_LOCK_0_1 = (
    "INSERT OR REPLACE INTO fencelock_lock (name, token, fence, label, boot, deadline, ttl) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
RELEASE_0_1 = "DELETE FROM fencelock_lock WHERE name = ? AND token = ?"
EXTEND_0_1 = "UPDATE fencelock_lock SET deadline = ?, ttl = ? WHERE name = ? AND token = ?"
SELECT_LOCK_0_1 = "SELECT token, fence, boot, deadline, ttl, label FROM fencelock_lock WHERE name = ?"
ENQUEUE_0_1 = "INSERT INTO fencelock_waiter (name, token, seq, boot, alive) VALUES (?, ?, ?, ?, ?)"


def old_file(path: Path, holder_ttl: float = 60.0) -> int:
    """A lock file as 0.1.0 leaves it: 'job' held by token h... (label 'old-holder') and one live
    waiter w...; 'idle' was used once. Returns the holder's fence."""
    boot = sqlite_boot.read_boot_id()
    fence = time.time_ns() // 1000
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        for statement in SCHEMA_0_1:
            conn.execute(statement)
        conn.execute("INSERT INTO fencelock_fence VALUES ('job', ?), ('idle', ?)", (fence, fence - 5))
        now = time.monotonic()
        conn.execute(STORE_LOCK_0_1, ("job", "h" * 32, fence, "old-holder", boot, now + holder_ttl, holder_ttl))
        conn.execute(ENQUEUE_0_1, ("job", "w" * 32, 1, boot, now + 600))  # stays live: see REGISTRATION below
    return fence


def layout(path: Path) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return dict(conn.execute("SELECT name, type FROM sqlite_master WHERE name LIKE 'fencelock%'").fetchall())


def test_a_lock_file_of_0_1_is_upgraded_with_its_leases_queue_and_fences(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_backend, "REGISTRATION", 600.0)  # the old waiter stays live
    old_fence = old_file(db)
    backend = SqliteBackend(db)
    info = backend.inspect("job")  # opening the file upgrades it
    assert layout(db)["fencelock_lock"] == "view" and layout(db)["fencelock_lease"] == "table"
    assert info is not None and (info.fence, info.holder, info.limit, info.waiters) == (old_fence, "old-holder", 1, 1)
    assert [(h.fence, h.weight) for h in info.holders] == [(old_fence, 1)]
    assert backend.try_acquire("job", "n" * 32, 30_000, "new", True).fence is None, "the old lease still holds"
    with pytest.raises(fencelock.LimitMismatch):  # a mutex name, held and queued as one
        backend.try_acquire("job", "s" * 32, 30_000, "sem", False, 3, 1)
    assert backend.extend("job", "h" * 32, 30_000), "the old lease is found by its token"
    assert backend.release("job", "h" * 32)
    assert backend.try_acquire("job", "n" * 32, 30_000, "new", True).fence is None, "the old waiter came first"
    got = backend.try_acquire("job", "w" * 32, 30_000, "old-waiter", True)
    assert got.fence is not None and got.fence > old_fence, "the fence counter carried on"
    idle = backend.try_acquire("idle", "i" * 32, 30_000, "i", False, 5, 1)
    assert idle.fence is not None and idle.fence >= old_fence - 4
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    backend.close()


def test_a_0_1_process_on_an_upgraded_file_fails_loudly_and_never_takes_a_held_name(db: Path) -> None:
    """A 0.1.0 process still running when the file is upgraded: its reads see the holders, its lease
    writes abort with a message that says to upgrade, and its setup never re-creates its table."""
    old_file(db, holder_ttl=60.0)
    backend = SqliteBackend(db)
    assert backend.inspect("job") is not None  # upgraded
    assert backend.try_acquire("other", "a" * 32, 30_000, "new", False, 3, 1).fence is not None
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as old:
        for statement in SCHEMA_0_1:  # a 0.1.0 process opening the file: no-ops, no table of its own
            old.execute(statement)
        assert layout(db)["fencelock_lock"] == "view"
        row = old.execute(SELECT_LOCK_0_1, ("other",)).fetchone()
        assert row is not None and row[0] == "a" * 32, "a 0.1.0 process must see the new holders"
        now = time.monotonic()
        writes = [
            (STORE_LOCK_0_1, ("free", "o" * 32, 1, "old", backend.boot, now + 30, 30.0)),
            (RELEASE_0_1, ("job", "h" * 32)),
            (EXTEND_0_1, (now + 30, 30.0, "job", "h" * 32)),
        ]
        for sql, params in writes:
            with pytest.raises(sqlite3.IntegrityError, match="upgrade fencelock here"):
                old.execute(sql, params)
    assert backend.inspect("free") is None
    info = backend.inspect("job")
    assert info is not None and info.holder == "old-holder", "the 0.1.0 holder's lease is untouched"
    backend.close()


def test_an_interrupted_upgrade_leaves_the_0_1_file_as_it_was(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old_fence = old_file(db)
    before = layout(db)
    real = sqlite_schema._upgrade_0_1

    def upgrade_then_fail(conn: sqlite3.Connection) -> None:
        real(conn)
        raise sqlite3.OperationalError("disk I/O error")  # e.g. the disk fills up mid-upgrade

    monkeypatch.setattr(sqlite_schema, "_upgrade_0_1", upgrade_then_fail)
    with pytest.raises(fencelock.BackendError):
        SqliteBackend(db).inspect("job")
    assert layout(db) == before, "half an upgrade was committed"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute(SELECT_LOCK_0_1, ("job",)).fetchone()[1] == old_fence
    monkeypatch.setattr(sqlite_schema, "_upgrade_0_1", real)
    backend = SqliteBackend(db)
    info = backend.inspect("job")
    assert info is not None and info.fence == old_fence
    backend.close()


def test_a_file_of_a_newer_layout_is_refused_with_what_to_do(db: Path) -> None:
    SqliteBackend(db).close()
    _make_db(db)
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:  # as a later version would
        conn.execute("ALTER TABLE fencelock_lease RENAME TO fencelock_lease_v3")
        conn.execute("CREATE VIEW fencelock_lease AS SELECT * FROM fencelock_lease_v3")
    with pytest.raises(fencelock.BackendRejected, match=r"newer fencelock.*upgrade fencelock"):
        SqliteBackend(db).inspect("job")


def _open_old_file_and_take_a_permit(url: str, start: Any, out: Any) -> None:
    start.wait(60)
    try:
        backend = SqliteBackend(parse_sqlite_url(url)[0])
        token = os.urandom(16).hex()
        fence = backend.try_acquire("pool", token, 30_000, "p", False, 8, 1).fence
        out.put(fence)
        time.sleep(0.5)  # hold it while the others come in
        backend.release("pool", token)
        backend.close()
    except Exception as err:
        out.put(repr(err))


def test_many_processes_opening_a_0_1_file_at_once_upgrade_it_once(tmp_path: Path) -> None:
    path = tmp_path / "locks.db"
    old_fence = old_file(path)
    url, start, out = url_of(path), CTX.Event(), CTX.Queue()
    procs = [CTX.Process(target=_open_old_file_and_take_a_permit, args=(url, start, out)) for _ in range(6)]
    for p in procs:
        p.start()
    try:
        time.sleep(1.0)  # let them import; they then open the file together
        start.set()
        results = [out.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
                p.join(10)
    assert all(isinstance(r, int) for r in results), results
    assert len(set(results)) == 6
    backend = SqliteBackend(path)
    info = backend.inspect("job")
    assert info is not None and info.fence == old_fence, "the 0.1.0 lease survived the upgrade"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM fencelock_lease WHERE name = 'job'").fetchone() == (1,)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    backend.close()
