"""Semaphore, ReadWriteLock and Election, on every backend (real servers), through the public API.

Elections are a limit-1 name and run on every backend; semaphores and read-write locks need counted
leases (the ``counted`` capability). Intervals are recorded on ``time.monotonic`` (shared by every
process of the host), so "never more than N at once" is checked across processes, not assumed.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import fencelock
from fencelock import aio, fencing
from servers import wait_until

CTX = mp.get_context("spawn")


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(b, 1) for b, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    now = most = 0
    for _, delta in events:
        now += delta
        most = max(most, now)
    return most


# -- validation (no I/O) -------------------------------------------------------------------------

NOWHERE = "redis://127.0.0.1:1"


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, None, "3", 100_001])
def test_a_bad_limit_is_refused_at_construction(limit: object) -> None:
    with pytest.raises(fencelock.ConfigurationError, match="limit must be a whole number of permits"):
        fencelock.Semaphore("x", NOWHERE, limit=limit)  # type: ignore[arg-type]
    with pytest.raises(fencelock.ConfigurationError):
        aio.Semaphore("x", NOWHERE, limit=limit)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [object(), 3, "a\x00b", "x\udc80"])
def test_a_bad_election_value_is_refused_at_construction(value: object) -> None:
    with pytest.raises(fencelock.ConfigurationError):
        fencelock.Election("x", NOWHERE, value=value)  # type: ignore[arg-type]


def test_semaphore_shares_the_lock_api() -> None:
    sem = fencelock.Semaphore("x", NOWHERE, limit=3, ttl=5)
    assert isinstance(sem, fencelock.Lock) and sem.limit == 3
    rw = fencelock.ReadWriteLock("x", NOWHERE)
    assert isinstance(rw.read(), fencelock.Lock) and isinstance(rw.write(), fencelock.Lock)


# -- elections: every backend ------------------------------------------------------------------


def test_one_leader_at_a_time_with_a_rising_term(lock_server: Any, name: str) -> None:
    a = fencelock.Election(name, lock_server.url, value="http://a:8080", ttl=10)
    b = fencelock.Election(name, lock_server.url, value="http://b:8080", ttl=10)
    assert a.leader() is None
    lease = a.campaign(timeout=5)
    assert a.leader() == b.leader() == fencelock.Leader("http://a:8080", lease.fence)
    with pytest.raises(fencelock.LockTimeout):
        b.campaign(timeout=0.3)
    lease.release()  # resign
    second = b.campaign(timeout=5)
    assert second.fence > lease.fence, "a new term is higher than every term before"
    assert a.leader() == fencelock.Leader("http://b:8080", second.fence)
    second.release()
    assert b.leader() is None


def test_observe_reports_each_change_of_leader(lock_server: Any, name: str) -> None:
    watcher = fencelock.Election(name, lock_server.url)
    a = fencelock.Election(name, lock_server.url, value="a", ttl=10)
    b = fencelock.Election(name, lock_server.url, value="b", ttl=10)
    seen: list[fencelock.Leader | None] = []
    done = threading.Event()

    def observe() -> None:
        for leader in watcher.observe(interval=0.02, timeout=20):
            seen.append(leader)
            if leader is not None and leader.value == "b":
                break
        done.set()

    t = threading.Thread(target=observe)
    t.start()
    assert wait_until(lambda: seen == [None], 5)
    la = a.campaign(timeout=5)
    assert wait_until(lambda: len(seen) >= 2, 5)
    la.release()
    assert wait_until(lambda: len(seen) >= 3, 5)
    lb = b.campaign(timeout=5)
    assert done.wait(10)
    t.join(5)
    lb.release()
    assert seen == [None, fencelock.Leader("a", la.fence), None, fencelock.Leader("b", lb.fence)]


def test_a_leader_paused_past_its_lease_is_told_and_its_late_write_refused(
    lock_server: Any, name: str, tmp_path: Path
) -> None:
    # The leader stalls (no renewal) past its lease; a new leader is elected and writes with its
    # term. Every loss signal reaches the old leader, and its late write is refused by the storage.
    db = sqlite3.connect(tmp_path / "data.db", isolation_level=None)
    fencing.create_table(db)
    lost = threading.Event()
    old = fencelock.Election(name, lock_server.url, value="old", ttl=0.5, renew=False, on_lost=lambda _: lost.set())
    new = fencelock.Election(name, lock_server.url, value="new", ttl=10)
    deposed = old.campaign(timeout=5)
    successor = new.campaign(timeout=10)  # the old lease runs out first
    assert successor.fence > deposed.fence
    assert lost.wait(5) and deposed.lost_event.is_set()
    with pytest.raises(fencelock.LeaseLost):
        deposed.ensure_held()
    db.execute("BEGIN IMMEDIATE")
    fencing.admit(db, "leader-state", successor.fence)
    db.execute("COMMIT")
    db.execute("BEGIN IMMEDIATE")
    with pytest.raises(fencelock.StaleFence):
        fencing.admit(db, "leader-state", deposed.fence)
    db.execute("ROLLBACK")
    successor.release()
    with pytest.raises(fencelock.LeaseLost):
        deposed.release()


async def test_async_election(lock_server: Any, name: str) -> None:
    a = aio.Election(name, lock_server.url, value="a", ttl=10)
    lease = await a.campaign(timeout=5)
    assert await a.leader() == fencelock.Leader("a", lease.fence)
    seen = []
    async for leader in a.observe(interval=0.02, timeout=0.2):
        seen.append(leader)
    assert seen == [fencelock.Leader("a", lease.fence)], "no change: reported once"
    await lease.release()
    assert await a.leader() is None
    await a.aclose()


# -- semaphores: backends with counted leases --------------------------------------------------


def _permit_worker(url: str, name: str, limit: int, rounds: int, start: Any, out: Any) -> None:
    sem = fencelock.Semaphore(name, url, limit=limit, ttl=20)
    start.wait(30)
    records = []
    for _ in range(rounds):
        asked = time.monotonic()
        with sem as lease:
            begin = time.monotonic()
            time.sleep(0.005)
            records.append((begin, time.monotonic(), lease.fence, asked))
    out.put(records)


@pytest.mark.needs("counted")
def test_at_most_limit_holders_across_processes_with_unique_rising_fences(lock_server: Any, name: str) -> None:
    limit, workers, rounds = 2, 4, 8
    start, out = CTX.Event(), CTX.Queue()
    procs = [CTX.Process(target=_permit_worker, args=(lock_server.url, name, limit, rounds, start, out)) for _ in
             range(workers)]
    for p in procs:
        p.start()
    try:
        start.set()
        records = [r for _ in procs for r in out.get(timeout=120)]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert len(records) == workers * rounds
    assert max_overlap([(b, e) for b, e, _, _ in records]) <= limit
    fences = [f for _, _, f, _ in records]
    assert len(set(fences)) == len(fences), "every permit's fence is unique"
    # grant order: a permit asked for after another ended was granted later, so its fence is higher
    for _, e1, f1, _ in records:
        for _, _, f2, a2 in records:
            if e1 < a2:
                assert f1 < f2


@pytest.mark.needs("counted")
def test_semaphore_waiters_are_served_in_order_when_permits_free_up(lock_server: Any, name: str) -> None:
    sem = fencelock.Semaphore(name, lock_server.url, limit=2, ttl=30)
    held = [sem.acquire(timeout=5), sem.acquire(timeout=5)]
    assert sem.try_acquire() is None
    order: list[str] = []

    def wait(tag: str) -> None:
        with fencelock.Semaphore(name, lock_server.url, limit=2, ttl=30).acquire(timeout=30):
            order.append(tag)
            time.sleep(0.1)

    t1 = threading.Thread(target=wait, args=("first",))
    t1.start()
    time.sleep(0.3)
    t2 = threading.Thread(target=wait, args=("second",))
    t2.start()
    time.sleep(0.3)
    held[0].release()
    t1.join(15)
    held[1].release()
    t2.join(15)
    assert order == ["first", "second"]


@pytest.mark.needs("counted")
def test_mismatched_limits_are_refused_not_merged(lock_server: Any, name: str) -> None:
    three = fencelock.Semaphore(name, lock_server.url, limit=3, ttl=30)
    lease = three.acquire(timeout=5)
    try:
        with pytest.raises(fencelock.LimitMismatch, match="limit 3"):
            fencelock.Semaphore(name, lock_server.url, limit=5).try_acquire()
        with pytest.raises(fencelock.LimitMismatch):
            fencelock.Lock(name, lock_server.url).try_acquire()
    finally:
        lease.release()
    # an idle name takes the limit of its next user
    five = fencelock.Semaphore(name, lock_server.url, limit=5, ttl=30)
    again = five.acquire(timeout=5)
    assert again.fence > lease.fence
    again.release()


@pytest.mark.needs("counted")
def test_a_semaphore_of_one_is_the_mutex(lock_server: Any, name: str) -> None:
    with fencelock.Lock(name, lock_server.url, ttl=10):
        assert fencelock.Semaphore(name, lock_server.url, limit=1).try_acquire() is None
    with fencelock.Semaphore(name, lock_server.url, limit=1, ttl=10) as lease:
        assert fencelock.Lock(name, lock_server.url).try_acquire() is None
        assert lease.fence > 0


@pytest.mark.needs("counted")
async def test_async_semaphore(lock_server: Any, name: str) -> None:
    sem = aio.Semaphore(name, lock_server.url, limit=2, ttl=10)
    a, b = await sem.acquire(timeout=5), await sem.acquire(timeout=5)
    assert await sem.try_acquire() is None
    waiter = asyncio.create_task(sem.acquire(timeout=10))
    await asyncio.sleep(0.2)
    await a.release()
    c = await asyncio.wait_for(waiter, 10)
    assert c.fence > b.fence > a.fence
    info = await sem.inspect()
    assert info is not None and info.limit == 2 and len(info.holders) == 2
    await b.release()
    await c.release()
    await sem.aclose()


# -- read-write locks: backends with counted leases ----------------------------------------------


@pytest.mark.needs("counted")
def test_readers_share_and_a_writer_excludes(lock_server: Any, name: str) -> None:
    rw = fencelock.ReadWriteLock(name, lock_server.url, ttl=10)
    r1 = rw.read().acquire(timeout=5)
    r2 = fencelock.ReadWriteLock(name, lock_server.url, ttl=10).read().acquire(timeout=5)
    assert rw.write().try_acquire() is None, "a writer must wait for the readers"
    r1.release()
    r2.release()
    w = rw.write().acquire(timeout=5)
    assert w.fence > r2.fence
    assert rw.read().try_acquire() is None, "no reader while the writer holds"
    w.release()


@pytest.mark.needs("counted")
def test_a_waiting_writer_is_not_starved_by_later_readers(lock_server: Any, name: str) -> None:
    rw = fencelock.ReadWriteLock(name, lock_server.url, ttl=30)
    first_reader = rw.read().acquire(timeout=5)
    events: list[tuple[str, int]] = []

    def writer() -> None:
        with fencelock.ReadWriteLock(name, lock_server.url, ttl=30).write().acquire(timeout=30) as lease:
            events.append(("writer", lease.fence))
            time.sleep(0.2)

    def reader(tag: str) -> None:
        with fencelock.ReadWriteLock(name, lock_server.url, ttl=30).read().acquire(timeout=30) as lease:
            events.append((tag, lease.fence))
            time.sleep(0.2)

    w = threading.Thread(target=writer)
    w.start()
    time.sleep(0.3)  # the writer waits now
    assert fencelock.ReadWriteLock(name, lock_server.url).read().try_acquire() is None, (
        "a reader that comes after a waiting writer queues behind it"
    )
    readers = [threading.Thread(target=reader, args=(f"r{i}",)) for i in range(3)]
    for r in readers:
        r.start()
    time.sleep(0.3)
    first_reader.release()
    w.join(20)
    for r in readers:
        r.join(20)
    assert events[0][0] == "writer", f"the writer came first: {events}"
    assert sorted(tag for tag, _ in events[1:]) == ["r0", "r1", "r2"]
    assert all(fence > events[0][1] for _, fence in events[1:]), "readers after the writer have higher fences"
    assert first_reader.fence < events[0][1]
