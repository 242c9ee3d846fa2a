"""The lock contract, run unchanged against every backend on real servers.

Each test receives ``lock_server`` (a handle from servers.py or srv_*.py) once per backend that has
the capabilities the test declares with ``@pytest.mark.needs(...)``. Tests use fresh lock names,
so they share servers, never locks. No wall-clock performance thresholds: where a test needs to
tell "woken by the release" from "woken by expiry" it uses a TTL far longer than the test.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import multiprocessing as mp
import os
import threading
import time
from typing import Any

import pytest

import fencelock
from fencelock import aio
from servers import wait_until

CTX = mp.get_context("spawn")


# -- basics ------------------------------------------------------------------------------------


def test_lease_has_token_fence_and_deadline_from_before_the_request(lock_server: Any, name: str) -> None:
    lock = fencelock.Lock(name, lock_server.url, ttl=5, renew=False)
    before = time.monotonic()
    lease = lock.acquire(timeout=5)
    after = time.monotonic()
    try:
        assert len(lease.token) == 32 and int(lease.token, 16) >= 0  # 128 bits, hex
        assert isinstance(lease.fence, int) and lease.fence > 0
        # measured from before the request was sent: never later than start + ttl
        assert lease.deadline <= before + 5
        assert 0 < lease.remaining() <= 5 - (after - before) + 1e-6 or lease.remaining() <= 5
        assert lease.held and not lease.lost
        info = lock.inspect()
        assert info is not None and info.fence == lease.fence
        assert str(os.getpid()) in info.holder
    finally:
        lease.release()
    assert lock.inspect() is None
    with pytest.raises(fencelock.NotHeld):
        lease.release()


def test_two_tokens_differ_and_fences_grow(lock_server: Any, name: str) -> None:
    lock = fencelock.Lock(name, lock_server.url, ttl=5, renew=False)
    seen = []
    tokens = set()
    for _ in range(5):
        with lock as lease:
            seen.append(lease.fence)
            tokens.add(lease.token)
    assert seen == sorted(seen) and len(set(seen)) == 5
    assert len(tokens) == 5


def test_busy_lock_times_out_and_try_acquire_says_none(lock_server: Any, name: str) -> None:
    holder = fencelock.Lock(name, lock_server.url, ttl=30)
    other = fencelock.Lock(name, lock_server.url, ttl=30)
    with holder:
        assert other.try_acquire() is None
        with pytest.raises(fencelock.LockTimeout) as info:
            other.acquire(timeout=0.3)
        assert name in str(info.value)
    # and nothing was left behind by the waiter that gave up: the lock is free now
    lease = other.try_acquire()
    assert lease is not None
    lease.release()


# -- mutual exclusion across processes ---------------------------------------------------------


def _exclusion_worker(url: str, name: str, rounds: int, start: Any, out: Any) -> None:
    lock = fencelock.Lock(name, url, ttl=10)
    start.wait(30)
    records = []
    for _ in range(rounds):
        lease = lock.acquire(timeout=60)
        begin = time.monotonic()
        time.sleep(0.002)
        end = time.monotonic()
        records.append((begin, end, lease.fence, os.getpid()))
        lease.release()
    out.put(records)


def test_mutual_exclusion_across_processes(lock_server: Any, name: str) -> None:
    workers, rounds = 4, 15
    start = CTX.Event()
    out = CTX.Queue()
    procs = [
        CTX.Process(target=_exclusion_worker, args=(lock_server.url, name, rounds, start, out)) for _ in range(workers)
    ]
    for p in procs:
        p.start()
    try:
        start.set()
        records = []
        for _ in procs:
            records.extend(out.get(timeout=120))
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    assert len(records) == workers * rounds
    records.sort()
    for (b1, e1, f1, _), (b2, e2, f2, _) in itertools.pairwise(records):
        assert e1 <= b2, f"critical sections overlap: {(b1, e1)} and {(b2, e2)}"
        assert f2 > f1, "fences must grow in the order the lock was held"
    assert len({r[3] for r in records}) == workers


# -- fences ------------------------------------------------------------------------------------


def test_fence_grows_across_expiry(lock_server: Any, name: str) -> None:
    first = fencelock.Lock(name, lock_server.url, ttl=0.3, renew=False).acquire()
    assert wait_until(lambda: first.lost, 5)
    second = fencelock.Lock(name, lock_server.url, ttl=5, renew=False).acquire(timeout=5)
    assert second.fence > first.fence
    with pytest.raises(fencelock.LeaseLost):
        first.release()
    second.release()


@pytest.mark.needs("restart_empty")
def test_fence_grows_across_restart_without_persistence(lock_server: Any, name: str) -> None:
    lock = fencelock.Lock(name, lock_server.url, ttl=5, renew=False)
    fences = []
    for _ in range(3):
        with lock as lease:
            fences.append(lease.fence)
    lock_server.restart_empty()
    assert lock_server.last_fence(name) == 0, "the restart must really have lost the counter"
    lock2 = fencelock.Lock(name, lock_server.url, ttl=5, renew=False)
    with lock2 as lease:
        assert lease.fence > max(fences)


@pytest.mark.needs("restart_snapshot")
def test_fence_grows_across_restart_from_older_snapshot(lock_server: Any, name: str) -> None:
    lock = fencelock.Lock(name, lock_server.url, ttl=5, renew=False)
    with lock as lease:
        pass
    lock_server.snapshot()
    at_snapshot = lock_server.last_fence(name)
    later = []
    for _ in range(3):
        with lock as lease:
            later.append(lease.fence)
    lock_server.restart_from_snapshot()
    assert lock_server.last_fence(name) == at_snapshot < max(later), "the counter must really be rolled back"
    with fencelock.Lock(name, lock_server.url, ttl=5, renew=False) as lease:
        assert lease.fence > max(later)


# -- crashes, renewal, loss --------------------------------------------------------------------


def _hold_forever(url: str, name: str, ttl: float, ready: Any) -> None:
    lock = fencelock.Lock(name, url, ttl=ttl, renew=False)
    lease = lock.acquire(timeout=10)
    ready.put(lease.fence)
    time.sleep(60)


def test_killed_holder_lock_is_free_after_ttl(lock_server: Any, name: str) -> None:
    ready = CTX.Queue()
    proc = CTX.Process(target=_hold_forever, args=(lock_server.url, name, 1.0, ready))
    proc.start()
    try:
        dead_fence = ready.get(timeout=60)
    finally:
        proc.kill()
        proc.join(10)
    lock = fencelock.Lock(name, lock_server.url, ttl=5, renew=False)
    # still held right after the kill (the TTL has not run out yet)...
    early = lock.try_acquire()
    if early is not None:  # the 1 s TTL can have passed on a very slow machine; then it must be free
        early.release()
    # ...and free once it has, without anyone releasing it
    lease = lock.acquire(timeout=10)
    assert lease.fence > dead_fence
    lease.release()


def test_renewal_keeps_the_lease_past_its_ttl(lock_server: Any, name: str) -> None:
    lock = fencelock.Lock(name, lock_server.url, ttl=0.6, renew=True)
    other = fencelock.Lock(name, lock_server.url, ttl=5, renew=False)
    with lock as lease:
        time.sleep(2.0)  # more than three TTLs
        assert lease.held and not lease.lost and lease.remaining() > 0
        assert other.try_acquire() is None
        lease.ensure_held()
    assert other.try_acquire() is not None


def _loss_probe(lock_server: Any, name: str, **kwargs: Any) -> tuple[fencelock.Lease, list[str]]:
    called: list[str] = []
    lock = fencelock.Lock(name, lock_server.url, on_lost=lambda lease: called.append(lease.lost_reason or ""), **kwargs)
    return lock.acquire(timeout=5), called


@pytest.mark.needs("delete_key")
def test_loss_signalled_when_the_lock_is_deleted_under_the_holder(lock_server: Any, name: str) -> None:
    lease, called = _loss_probe(lock_server, name, ttl=0.9, renew=True)
    lock_server.delete_lock(name)
    assert lease.lost_event.wait(5), "the renewer must notice the lock is gone"
    assert lease.lost and called, "event and callback both fire"
    with pytest.raises(fencelock.LeaseLost):
        lease.ensure_held()
    with pytest.raises(fencelock.LeaseLost):
        lease.extend()


@pytest.mark.needs("expire_key")
def test_loss_signalled_when_the_lock_expires_under_the_holder(lock_server: Any, name: str) -> None:
    lease, called = _loss_probe(lock_server, name, ttl=0.9, renew=True)
    lock_server.expire_lock(name)
    assert lease.lost_event.wait(5)
    assert called
    with pytest.raises(fencelock.LeaseLost):
        lease.ensure_held()


def test_loss_signalled_at_the_deadline_without_renewal(lock_server: Any, name: str) -> None:
    lease, called = _loss_probe(lock_server, name, ttl=0.4, renew=False)
    assert lease.lost_event.wait(5), "the deadline watch fires even when nobody polls"
    assert called and "TTL" in (lease.lost_reason or "")


@pytest.mark.needs("pause")
def test_loss_signalled_when_the_server_is_paused_past_the_ttl(lock_server: Any, name: str) -> None:
    lease, called = _loss_probe(lock_server, name, ttl=1.0, renew=True)
    lock_server.pause()
    try:
        assert lease.lost_event.wait(4), "a holder that cannot renew must learn at its deadline"
        assert called
    finally:
        lock_server.resume()
    with pytest.raises(fencelock.LeaseLost):
        lease.ensure_held()


def test_release_after_expiry_leaves_the_successor_alone(lock_server: Any, name: str) -> None:
    old = fencelock.Lock(name, lock_server.url, ttl=0.3, renew=False).acquire()
    assert wait_until(lambda: old.lost, 5)
    new_lock = fencelock.Lock(name, lock_server.url, ttl=10, renew=False)
    new = new_lock.acquire(timeout=5)
    with pytest.raises(fencelock.LeaseLost) as info:
        old.release()
    assert "nothing was deleted" in str(info.value) or "TTL" in str(info.value)
    held = new_lock.inspect()
    assert held is not None and held.fence == new.fence, "the successor's lock must survive"
    new.release()


# -- waiting -----------------------------------------------------------------------------------


def test_blocked_waiter_acquires_when_released_not_at_expiry(lock_server: Any, name: str) -> None:
    holder = fencelock.Lock(name, lock_server.url, ttl=60, renew=False)
    waiter = fencelock.Lock(name, lock_server.url, ttl=60, renew=False)
    first = holder.acquire()
    got: list[tuple[float, fencelock.Lease]] = []

    def wait() -> None:
        lease = waiter.acquire(timeout=30)
        got.append((time.monotonic(), lease))

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.3)
    assert not got, "the waiter must not get a held lock"
    released_at = time.monotonic()
    first.release()
    t.join(30)
    assert got, "the waiter must acquire after the release"
    woke_at, lease = got[0]
    assert woke_at >= released_at
    assert woke_at - released_at < 30, "woken by the release, not by the 60 s expiry"
    assert lease.fence > first.fence
    lease.release()


@pytest.mark.needs("fifo")
def test_waiters_are_served_first_come_first_served(lock_server: Any, name: str) -> None:
    holder = fencelock.Lock(name, lock_server.url, ttl=60, renew=False).acquire()
    watcher = fencelock.Lock(name, lock_server.url, ttl=60)
    holder_info = fencelock.backends.base.LockInfo(name, 0, "", None)
    order: list[int] = []
    mutex = threading.Lock()

    def wait(i: int) -> None:
        lease = fencelock.Lock(name, lock_server.url, ttl=60, renew=False).acquire(timeout=30)
        with mutex:
            order.append(i)
        time.sleep(0.02)
        lease.release()

    threads = []
    for i in range(4):
        t = threading.Thread(target=wait, args=(i,))
        t.start()
        threads.append(t)
        # each waiter is queued (the server counts it) before the next arrives: a sleep would not
        # say so on a loaded machine, where making a lock and its first request can take longer
        queued = i + 1
        assert wait_until(lambda n=queued: (watcher.inspect() or holder_info).waiters == n, 20), f"waiter {i}"
    holder.release()
    for t in threads:
        t.join(30)
    watcher.close()
    assert order == [0, 1, 2, 3]


# -- asyncio -----------------------------------------------------------------------------------


async def test_async_acquire_release_and_context_manager(lock_server: Any, name: str) -> None:
    lock = aio.Lock(name, lock_server.url, ttl=5)
    async with lock as lease:
        assert lease.held and lease.fence > 0
        other = aio.Lock(name, lock_server.url, ttl=5)
        assert await other.try_acquire() is None
        await other.aclose()
    again = await lock.acquire(timeout=5)
    assert again.fence > lease.fence
    await again.release()
    await lock.aclose()


async def test_async_cancelled_waiter_leaves_nothing_stuck(lock_server: Any, name: str) -> None:
    lock = aio.Lock(name, lock_server.url, ttl=60, renew=False)
    holder = await lock.acquire()
    waiter = asyncio.create_task(aio.Lock(name, lock_server.url, ttl=60).acquire(timeout=30))
    await asyncio.sleep(0.3)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await holder.release()
    # the cancelled waiter must not have been handed the lock (it would stay stuck for its TTL)
    third = await aio.Lock(name, lock_server.url, ttl=5).acquire(timeout=10)
    assert third.fence > holder.fence
    await third.release()
    await lock.aclose()


async def test_async_cancelled_acquire_in_flight_leaves_nothing_stuck(lock_server: Any, name: str) -> None:
    # Cancel acquires at many points of their round trip; whatever the server did, the lock
    # must be free afterwards (the cleanup releases a grant whose answer we never read).
    lock = aio.Lock(name, lock_server.url, ttl=60, renew=False)
    for delay in (0, 0.0005, 0.001, 0.002, 0.005):
        task = asyncio.create_task(lock.acquire(timeout=5))
        await asyncio.sleep(delay)
        task.cancel()
        try:
            lease = await task
        except asyncio.CancelledError:
            pass
        else:
            await lease.release()
    probe = await aio.Lock(name, lock_server.url, ttl=5).acquire(timeout=10)
    await probe.release()
    await lock.aclose()


@pytest.mark.needs("delete_key")
async def test_async_cancel_on_loss_stops_the_holder(lock_server: Any, name: str) -> None:
    lock = aio.Lock(name, lock_server.url, ttl=0.9, renew=True, cancel_on_loss=True)
    steps = 0
    with pytest.raises(fencelock.LeaseLost):
        async with lock as lease:
            lock_server.delete_lock(name)
            for _ in range(500):  # bounded: 5 s
                steps += 1
                await asyncio.sleep(0.01)
    assert lease.lost
    assert steps < 500, "the holder task must have been cancelled, not run to the end"
    await lock.aclose()


async def test_async_release_survives_cancellation(lock_server: Any, name: str) -> None:
    lock = aio.Lock(name, lock_server.url, ttl=60, renew=False)
    lease = await lock.acquire()
    task = asyncio.create_task(lease.release())
    await asyncio.sleep(0)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    probe = aio.Lock(name, lock_server.url, ttl=5)
    got = None
    for _ in range(100):
        got = await probe.try_acquire()
        if got is not None:
            break
        await asyncio.sleep(0.01)
    assert got is not None, "a cancelled release must still release (well before the 60 s TTL)"
    await got.release()
    await probe.aclose()
    await lock.aclose()


# -- processes and lifetimes -------------------------------------------------------------------


def test_forked_child_does_not_hold_or_renew_the_parents_lease(lock_server: Any, name: str) -> None:
    lock = fencelock.Lock(name, lock_server.url, ttl=0.6, renew=True)
    lease = lock.acquire()
    pid = os.fork()
    if pid == 0:  # child: must refuse to act on the parent's lease
        code = 1
        try:
            lease.release()
        except fencelock.NotHeld:
            code = 0
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child must get NotHeld"
    time.sleep(1.5)  # the parent's renewal goes on after the fork
    assert lease.held
    assert lock.inspect() is not None
    lease.release()


def test_renewal_stops_when_lease_and_lock_are_garbage_collected(lock_server: Any, name: str) -> None:
    lock = fencelock.Lock(name, lock_server.url, ttl=0.6, renew=True)
    lease = lock.acquire()
    time.sleep(0.5)  # let the renewer start
    del lease, lock
    gc.collect()
    other = fencelock.Lock(name, lock_server.url, ttl=5, renew=False)
    got = other.acquire(timeout=10)  # free once the abandoned lease runs out
    got.release()


@pytest.mark.needs("password")
def test_wrong_password_is_a_clear_error(lock_server: Any, name: str) -> None:
    lock = fencelock.Lock(name, lock_server.url_with_password("wrong"), ttl=5)
    with pytest.raises(fencelock.AuthenticationFailed):
        lock.acquire(timeout=1)


def test_a_shared_lock_object_never_releases_another_threads_lease(lock_server: Any, name: str) -> None:
    # Thread A's lease expires inside its `with` block; thread B, using the same Lock object, takes
    # the lock. When A leaves its block it must be told (LeaseLost) and must not release B's lease.
    lock = fencelock.Lock(name, lock_server.url, ttl=0.4, renew=False)
    b_inside = threading.Event()
    a_done = threading.Event()
    outcome: dict[str, Any] = {}

    def a() -> None:
        try:
            with lock as lease:
                outcome["a_fence"] = lease.fence
                assert b_inside.wait(20)
        except fencelock.LeaseLost as err:
            outcome["a_error"] = err
        finally:
            a_done.set()

    def b() -> None:
        with lock as lease:  # waits until A's lease has run out
            outcome["b_fence"] = lease.fence
            b_inside.set()
            assert a_done.wait(20)
            outcome["b_held_after_a_left"] = lock.inspect()
            outcome["b_lease_held"] = lease.held

    ta = threading.Thread(target=a)
    ta.start()
    time.sleep(0.1)
    tb = threading.Thread(target=b)
    tb.start()
    ta.join(30)
    tb.join(30)
    assert isinstance(outcome.get("a_error"), fencelock.LeaseLost), "A must learn it lost the lock"
    assert outcome["b_fence"] > outcome["a_fence"]
    info = outcome["b_held_after_a_left"]
    assert info is not None and info.fence == outcome["b_fence"], "A's exit must not release B's lock"


async def test_async_tasks_sharing_a_lock_object_keep_their_own_leases(lock_server: Any, name: str) -> None:
    lock = aio.Lock(name, lock_server.url, ttl=0.4, renew=False)
    b_inside = asyncio.Event()
    seen: dict[str, Any] = {}

    a_left = asyncio.Event()

    async def a() -> None:
        with pytest.raises(fencelock.LeaseLost):
            async with lock as lease:
                seen["a"] = lease.fence
                await asyncio.wait_for(b_inside.wait(), 20)
        a_left.set()

    async def b() -> None:
        await asyncio.sleep(0.1)
        async with lock as lease:
            seen["b"] = lease.fence
            b_inside.set()
            await asyncio.wait_for(a_left.wait(), 20)  # A leaves its block (its exit is not B's)
            info = await lock.inspect()
            assert info is not None and info.fence == lease.fence

    await asyncio.wait_for(asyncio.gather(a(), b()), 30)
    assert seen["b"] > seen["a"]
    await lock.aclose()
