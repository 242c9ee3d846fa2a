"""Interleavings forced on purpose: the ways an adversarial review broke the lock, kept as tests.

Each test drives the lock into one bad moment deterministically (a hooked backend that holds a
reply back, a waiter that "pauses" right after the handoff, a cancellation delivered inside the
cleanup), on every backend where the moment exists, against real servers. A hooked backend wraps a
real one and only delays or observes calls; the server still decides everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

import fencelock
from fencelock import aio
from fencelock.backends import open_async_backend, open_backend
from fencelock.backends.redis import RedisKeys
from servers import wait_until


class Hooked:
    """A real blocking backend with hooks around some primitives (everything else passes through)."""

    _dynamic_abilities = True  # wraps backends of every kind: fencelock must not cache per class

    def __init__(self, url: str) -> None:
        self.inner, _ = open_backend(url)
        self.name = self.inner.name
        self.before_extend: Callable[[int], None] | None = None
        self.after_extend: Callable[[int, bool], None] | None = None
        self.after_wait: Callable[[Any], None] | None = None
        self.extends: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    def try_acquire(self, key: str, token: str, ttl_ms: int, label: str, queue: bool) -> Any:
        return self.inner.try_acquire(key, token, ttl_ms, label, queue)

    def wait(self, key: str, token: str, timeout: float) -> Any:
        got = self.inner.wait(key, token, timeout)
        if self.after_wait is not None:
            self.after_wait(got)
        return got

    def abandon(self, key: str, token: str) -> None:
        self.inner.abandon(key, token)

    def extend(self, key: str, token: str, ttl_ms: int) -> bool:
        with self._lock:
            self.extends.append((threading.current_thread().name, ttl_ms))
        if self.before_extend is not None:
            self.before_extend(ttl_ms)
        ok = self.inner.extend(key, token, ttl_ms)
        if self.after_extend is not None:
            self.after_extend(ttl_ms, ok)
        return ok

    def release(self, key: str, token: str) -> bool:
        return self.inner.release(key, token)

    def inspect(self, key: str) -> Any:
        return self.inner.inspect(key)

    def close(self) -> None:
        self.inner.close()


# -- a user's extend() racing the renewer ------------------------------------------------------


def test_user_extend_racing_the_renewer_never_leaves_the_client_believing_longer(lock_server: Any, name: str) -> None:
    # The renewer's EXTEND (long) reaches the server first, but its reply is held back; meanwhile
    # the user shortens the lease. Whatever order the replies are processed in, the client must
    # never believe in a deadline later than the one the server applied last: when the server
    # lets the key go, the holder must already know it lost the lease.
    hooked = Hooked(lock_server.url)
    renewer_applied = threading.Event()
    let_renewer_reply = threading.Event()
    stop_renewing = threading.Event()
    renewer_calls = 0

    def before_extend(ttl_ms: int) -> None:
        nonlocal renewer_calls
        if threading.current_thread().name != "fencelock-renewer":
            return
        renewer_calls += 1
        if renewer_calls > 1:  # later renewals never reach the server: the lease must end at what it holds
            stop_renewing.wait(30)

    def after_extend(ttl_ms: int, ok: bool) -> None:
        if threading.current_thread().name == "fencelock-renewer" and renewer_calls == 1:
            renewer_applied.set()  # the server applied the long renewal; its reply is held back
            let_renewer_reply.wait(10)

    hooked.before_extend = before_extend
    hooked.after_extend = after_extend
    lock = fencelock.Lock(name, hooked, ttl=6, renew=0.3)
    other = fencelock.Lock(name, lock_server.url, ttl=5, renew=False)
    lease = lock.acquire(timeout=5)
    try:
        assert renewer_applied.wait(10), "the renewer did not run"
        user = threading.Thread(target=lease.extend, kwargs={"ttl": 1.5})
        user.start()
        user.join(1.0)  # with the fix the user's extend waits for the renewer's; give it a moment
        let_renewer_reply.set()
        user.join(10)
        assert not user.is_alive()
        # The second process gets the lock once the server's (short) expiry passed ...
        got = other.acquire(timeout=10)
        # ... and at that moment the first holder must no longer believe it holds.
        both = lease.held
        got.release()
        assert not both, "two holders: the client believed its lease was valid after the server expired it"
        with pytest.raises(fencelock.LeaseLost):
            lease.ensure_held()
    finally:
        let_renewer_reply.set()
        stop_renewing.set()
        with_suppressed(lease.release)


def with_suppressed(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except fencelock.FenceLockError:
        pass


def test_a_failed_extend_never_lengthens_the_clients_belief(lock_server: Any, name: str) -> None:
    # An EXTEND whose reply is lost may still have been applied. If it asked for less time than the
    # lease had, the client must assume the shorter one.
    hooked = Hooked(lock_server.url)
    lock = fencelock.Lock(name, hooked, ttl=10, renew=False)
    lease = lock.acquire(timeout=5)
    try:

        def lose_reply(ttl_ms: int, ok: bool) -> None:
            raise fencelock.BackendUnavailable("reply lost (injected after the server applied it)")

        hooked.after_extend = lose_reply
        with pytest.raises(fencelock.BackendUnavailable):
            lease.extend(ttl=0.5)
        assert lease.remaining() <= 0.5, "the server may hold the 0.5 s extend: the client must not believe 10 s"
        hooked.after_extend = None
    finally:
        with_suppressed(lease.release)


# -- loss signals only for leases the caller got -----------------------------------------------


@pytest.mark.backends("redis-embedded", "redis-debian")
def test_a_waiter_paused_across_the_handoff_gets_no_loss_signal_for_the_grant_it_missed(
    lock_server: Any, name: str
) -> None:
    # The releaser hands the lock to a waiter whose process then stalls past the granted TTL. When it
    # wakes, that grant is gone. acquire() goes on and returns another lease; the expired grant was
    # never the caller's, so nothing may signal its loss (no on_lost, no cancellation).
    hooked = Hooked(lock_server.url)
    lost: list[int] = []

    def stall_after_handoff(got: Any) -> None:
        if got is not None:
            time.sleep(1.5)  # the 1 s grant runs out meanwhile

    hooked.after_wait = stall_after_handoff
    holder = fencelock.Lock(name, lock_server.url, ttl=30, renew=False).acquire(timeout=5)
    waiter = fencelock.Lock(name, hooked, ttl=1, renew=False, on_lost=lambda lease: lost.append(lease.fence))
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.setdefault("lease", waiter.acquire(timeout=20)))
    t.start()
    assert wait_until(lambda: (lock_server.admin.zcard(RedisKeys("fencelock:", name).queue) or 0) == 1, 10)
    holder.release()
    t.join(30)
    lease = result["lease"]
    try:
        assert lease.held
        assert lost == [], f"on_lost fired for a grant the caller never got (fences {lost}, got {lease.fence})"
    finally:
        lease.release()


# -- the sync renewer failing to start ---------------------------------------------------------


def test_a_renewer_that_cannot_start_still_ends_in_the_loss_signal(
    lock_server: Any, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under RLIMIT_NPROC (or any thread limit) starting the renewer thread fails. The lease can then
    # not be renewed, so it must end at its deadline, with every signal: never a silent lease that
    # the holder believes in after another process took the lock.
    from fencelock._sync import _compat

    def no_threads(fn: Any, *args: Any) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(_compat, "spawn", no_threads)
    fired = threading.Event()
    lock = fencelock.Lock(name, lock_server.url, ttl=1, renew=True, on_lost=lambda lease: fired.set())
    lease = lock.acquire(timeout=5)
    try:
        assert lease.lost_event.wait(5), "lost_event never set after the renewer failed to start"
        assert fired.wait(1), "on_lost never called after the renewer failed to start"
        assert lease.lost
    finally:
        with_suppressed(lease.release)


# -- asyncio cancellation ----------------------------------------------------------------------


class AsyncHooked:
    """asyncio twin of ``Hooked`` (only the hooks these tests need)."""

    _dynamic_abilities = True

    def __init__(self, url: str) -> None:
        self.inner, _ = open_async_backend(url)
        self.name = self.inner.name
        self.in_abandon = asyncio.Event()
        self.finish_abandon = asyncio.Event()
        self.abandoned = 0
        self.hold_abandon = False

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    async def try_acquire(self, key: str, token: str, ttl_ms: int, label: str, queue: bool) -> Any:
        return await self.inner.try_acquire(key, token, ttl_ms, label, queue)

    async def wait(self, key: str, token: str, timeout: float) -> Any:
        return await self.inner.wait(key, token, timeout)

    async def abandon(self, key: str, token: str) -> None:
        if self.hold_abandon:
            self.in_abandon.set()
            await self.finish_abandon.wait()
        await self.inner.abandon(key, token)
        self.abandoned += 1

    async def extend(self, key: str, token: str, ttl_ms: int) -> bool:
        return await self.inner.extend(key, token, ttl_ms)

    async def release(self, key: str, token: str) -> bool:
        return await self.inner.release(key, token)

    async def inspect(self, key: str) -> Any:
        return await self.inner.inspect(key)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_cancel_during_a_timed_out_acquires_cleanup_propagates(lock_server: Any, name: str) -> None:
    # The acquire times out and starts its cleanup (leave the queue); the task is cancelled right
    # then. The cleanup must still finish, and the task must end *cancelled*: a worker loop that
    # retries on LockTimeout could otherwise never be stopped, and TaskGroup/timeout() lose the cancel.
    holder = await aio.Lock(name, lock_server.url, ttl=30, renew=False).acquire(timeout=5)
    hooked = AsyncHooked(lock_server.url)
    hooked.hold_abandon = True
    waiter = aio.Lock(name, hooked, ttl=30, renew=False)
    task = asyncio.create_task(waiter.acquire(timeout=0.3))
    await asyncio.wait_for(hooked.in_abandon.wait(), 10)
    task.cancel()
    await asyncio.sleep(0.05)
    hooked.finish_abandon.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert task.cancelled(), "the cancellation was swallowed into another outcome"
    assert hooked.abandoned >= 1, "the cleanup must run to its end"
    await holder.release()
    # nothing left behind by the cancelled waiter: the lock is free at once
    probe = await aio.Lock(name, lock_server.url, ttl=5, renew=False).acquire(timeout=5)
    await probe.release()
    await hooked.aclose()


async def test_asyncio_timeout_around_an_acquire_keeps_its_cancel(lock_server: Any, name: str) -> None:
    # asyncio.timeout()/wait_for cancel the acquire; they only work if the cancel comes back out.
    holder = await aio.Lock(name, lock_server.url, ttl=30, renew=False).acquire(timeout=5)
    waiter = aio.Lock(name, lock_server.url, ttl=30, renew=False)
    # budgets well inside the acquire's own timeout: the outer cancel comes first, so it must come
    # back out (a cancel that lands in the acquire's cleanup is tested deterministically above)
    for budget in (0.05, 0.2):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(waiter.acquire(timeout=1.0), budget)
    await holder.release()


@pytest.mark.backends("redis-embedded")
async def test_cancel_on_loss_stops_a_section_doing_redis_io_every_time(lock_server: Any, name: str) -> None:
    # On Python <= 3.11 asyncio.wait_for (which redis.asyncio wraps around every command with a
    # socket timeout) can drop a cancel that arrives just as the command completes. One cancel is
    # not enough: the loss must stop the section every time.
    client = redis.asyncio.Redis(unix_socket_path=str(lock_server.server.socket), password=lock_server.PASSWORD,
                                 socket_timeout=5)
    try:
        for trial in range(20):
            lock = aio.Lock(f"{name}:{trial}", lock_server.url, ttl=0.3, renew=False, cancel_on_loss=True)
            ops = 0
            started = time.monotonic()
            with pytest.raises(fencelock.LeaseLost):
                async with lock:
                    while time.monotonic() - started < 5:  # bounded: 5 s, the lease lasts 0.3 s
                        await client.get("x")
                        ops += 1
            assert time.monotonic() - started < 4, f"trial {trial}: the section ran on after its lease was lost"
            await lock.aclose()
    finally:
        await client.aclose()


# -- a queue full of crashed waiters (a fleet restart) -------------------------------------------

_WAITERS = """
import sys, threading, fencelock
url, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for _ in range(n):  # a Lock (and so a connection pool) per 50 waiters: redis-py's pools hold 100
    if _ % 50 == 0:
        lock = fencelock.Lock(name, url, ttl=30, renew=False)
    threading.Thread(target=lock.acquire, kwargs={"timeout": 120}, daemon=True).start()
threading.Event().wait(120)
"""


@pytest.mark.backends("redis-embedded", "redis-debian")
@pytest.mark.parametrize("crashed", [100, 300])  # 300: more than one script call clears (256)
def test_a_live_waiter_behind_crashed_ones_is_served_and_nothing_goes_to_a_finished_token(
    lock_server: Any, name: str, crashed: int
) -> None:
    keys = RedisKeys("fencelock:", name)
    holder = fencelock.Lock(name, lock_server.url, ttl=30, renew=False).acquire(timeout=5)
    crowd = subprocess.Popen([sys.executable, "-c", _WAITERS, lock_server.url, name, str(crashed)])
    try:
        assert wait_until(lambda: lock_server.admin.zcard(keys.queue) >= crashed, 60), "the crowd did not queue"
    finally:
        os.kill(crowd.pid, signal.SIGKILL)  # no cleanup at all: their queue entries stay behind
        crowd.wait(10)
    live = fencelock.Lock(name, lock_server.url, ttl=30, renew=False)
    second = fencelock.Lock(name, lock_server.url, ttl=30, renew=False)
    got: dict[str, Any] = {}
    t1 = threading.Thread(target=lambda: got.setdefault("first", live.acquire(timeout=60)))
    t1.start()
    assert wait_until(lambda: lock_server.admin.zcard(keys.queue) >= crashed + 1, 10)
    t2 = threading.Thread(target=lambda: got.setdefault("second", second.acquire(timeout=60)))
    t2.start()
    assert wait_until(lambda: lock_server.admin.zcard(keys.queue) >= crashed + 2, 10)
    time.sleep(2.5)  # the crashed waiters' registrations run out; the live ones keep polling
    holder.release()
    t1.join(10)
    assert "first" in got, "the live waiter behind the crashed ones was not served"
    assert "second" not in got, "the later waiter overtook the earlier one"
    first = got["first"]
    assert first.fence > holder.fence
    assert lock_server.admin.zscore(keys.queue, first.token) is None, "a grantee's own queue entry must go"
    first.release()
    value = lock_server.admin.get(keys.lock)
    assert value is None or not value.decode().startswith(first.token), "the lock was handed back to a finished token"
    t2.join(10)
    assert "second" in got, "the next live waiter was not served after the first released"
    sec = got["second"]
    assert sec.fence > first.fence
    assert lock_server.admin.zscore(keys.queue, sec.token) is None, "a grantee's own queue entry must go"
    sec.release()
    # Nothing was handed to a finished token: the lock is free now, for anyone, at once.
    assert fencelock.Lock(name, lock_server.url).inspect() is None
    newcomer = fencelock.Lock(name, lock_server.url, ttl=5, renew=False).try_acquire()
    assert newcomer is not None, "the lock went to a token whose owner had already finished"
    newcomer.release()


# -- every call honours its timeout, also against a server that stopped answering ---------------

SLACK = 1.5  # a loaded 2-core machine; the bug this guards against took 5 s more


@pytest.mark.needs("pause")
def test_acquire_against_a_frozen_server_returns_within_its_timeout_plus_the_stated_bound(
    lock_server: Any, name: str
) -> None:
    from fencelock._sync._compat import CLEANUP_GRACE  # the cleanup of the failed acquire, waited for

    lock = fencelock.Lock(name, lock_server.url, ttl=30, renew=False)
    lock.try_acquire().release()  # connected, scripts loaded
    bound = lock_server.request_timeout + CLEANUP_GRACE + SLACK
    lock_server.pause()
    try:
        started = time.monotonic()
        with pytest.raises((fencelock.BackendUnavailable, fencelock.LockTimeout)):
            lock.acquire(timeout=1)
        took = time.monotonic() - started
    finally:
        lock_server.resume()
    assert took <= 1 + bound, f"acquire(timeout=1) took {took:.1f} s against a frozen server (bound {1 + bound:g} s)"


@pytest.mark.needs("pause")
async def test_async_acquire_against_a_frozen_server_returns_within_its_timeout_plus_the_stated_bound(
    lock_server: Any, name: str
) -> None:
    from fencelock._async._compat import CLEANUP_GRACE  # the cleanup of the failed acquire, waited for

    lock = aio.Lock(name, lock_server.url, ttl=30, renew=False)
    await (await lock.acquire(timeout=5)).release()
    bound = lock_server.request_timeout + CLEANUP_GRACE + SLACK
    lock_server.pause()
    try:
        started = time.monotonic()
        with pytest.raises((fencelock.BackendUnavailable, fencelock.LockTimeout)):
            await lock.acquire(timeout=1)
        took = time.monotonic() - started
    finally:
        lock_server.resume()
    await lock.aclose()
    assert took <= 1 + bound, f"acquire(timeout=1) took {took:.1f} s against a frozen server (bound {1 + bound:g} s)"


@pytest.mark.needs("pause")
async def test_a_cancel_during_a_request_that_then_fails_ends_cancelled(lock_server: Any, name: str) -> None:
    """Found by the stress test (seed 1, ZooKeeper, a read-write lock's writer): cancelled while its
    request hung on a frozen server, the acquire ended with that request's BackendUnavailable and
    the task returned normally: the cancellation was lost. (On an offloading backend the call runs
    on in its thread after the cancel; its error must not replace the cancellation.)"""
    from fencelock._async._compat import CLEANUP_GRACE

    lock = aio.Lock(name, lock_server.url, ttl=30, renew=False)
    await (await lock.acquire(timeout=5)).release()  # connected
    bound = lock_server.request_timeout + CLEANUP_GRACE + SLACK
    lock_server.pause()
    try:
        task = asyncio.ensure_future(lock.acquire(timeout=1))
        await asyncio.sleep(0.3)  # its first request is stuck on the frozen server
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2 * bound)
    finally:
        lock_server.resume()
    try:
        assert done, "the cancelled acquire did not end"
        assert task.cancelled(), f"a cancelled acquire ended with {task.exception()!r}, not CancelledError"
    finally:
        await lock.aclose()


# -- cancel_on_loss and other cancellations -------------------------------------------------------


@pytest.mark.needs("delete_key")
async def test_cancel_on_loss_leaves_no_cancel_request_behind(lock_server: Any, name: str) -> None:
    # Our cancellation is turned into LeaseLost at the block's exit; the requests we made must be
    # withdrawn, or an enclosing asyncio.timeout()/TaskGroup would later misread the task's state.
    lock = aio.Lock(name, lock_server.url, ttl=0.6, renew=True, cancel_on_loss=True)
    with pytest.raises(fencelock.LeaseLost):
        async with lock:
            lock_server.delete_lock(name)
            for _ in range(500):  # bounded: 5 s; the renewer finds the key gone within ttl/3
                await asyncio.sleep(0.01)
    task = asyncio.current_task()
    assert task is not None
    if sys.version_info >= (3, 11):
        assert task.cancelling() == 0, "our cancel requests were not withdrawn"
    # and the task is not cancelled later by a leftover request
    await asyncio.sleep(0.05)
    await lock.aclose()


@pytest.mark.needs("delete_key")
async def test_a_cancel_from_elsewhere_during_a_loss_still_cancels_the_task(lock_server: Any, name: str) -> None:
    # The lease is lost and, in the same moment, somebody else cancels the holding task (a
    # TaskGroup sibling failed, a timeout hit). That cancellation is not ours to swallow.
    lock = aio.Lock(name, lock_server.url, ttl=0.6, renew=True, cancel_on_loss=True)
    holder: asyncio.Task[None] | None = None

    def cancel_from_elsewhere(lease: Any) -> None:
        assert holder is not None
        holder.cancel()

    lock._on_lost = cancel_from_elsewhere

    async def hold() -> None:
        async with lock:
            lock_server.delete_lock(name)
            for _ in range(500):
                await asyncio.sleep(0.01)

    holder = asyncio.create_task(hold())
    outcome = await asyncio.wait_for(asyncio.gather(holder, return_exceptions=True), 10)
    if sys.version_info >= (3, 11):
        assert holder.cancelled(), f"the foreign cancel was swallowed: {outcome!r}"
    else:  # 3.10 keeps no count of cancel requests: documented, reported as the loss
        assert isinstance(outcome[0], (fencelock.LeaseLost, asyncio.CancelledError))
    await lock.aclose()


# -- found by the stress test (tests/stress) ----------------------------------------------------


def test_a_shorter_extend_moves_the_loss_signal_to_the_new_deadline(lock_server: Any, name: str) -> None:
    fired = threading.Event()
    lock = fencelock.Lock(name, lock_server.url, ttl=30, renew=False, on_lost=lambda lease: fired.set())
    lease = lock.acquire(timeout=5)
    try:
        lease.extend(ttl=0.5)
        assert fired.wait(5), "on_lost waited for the old (30 s) deadline"
        assert lease.lost_event.is_set()
    finally:
        with_suppressed(lease.release)


def test_acquire_never_returns_a_lease_that_ended_before_its_answer_arrived(lock_server: Any, name: str) -> None:
    # The grant's answer reaches the client after the whole TTL (a stalled link or process): that
    # lease is over before the caller sees it. acquire must restart it (or queue again), and no
    # loss signal may fire for a lease the caller never had.
    hooked = Hooked(lock_server.url)
    late = [True]
    real = hooked.try_acquire

    def slow_answer(key: str, token: str, ttl_ms: int, label: str, queue: bool) -> Any:
        got = real(key, token, ttl_ms, label, queue)
        if late[0] and got.fence is not None:
            late[0] = False
            time.sleep(ttl_ms / 1000 + 0.3)
        return got

    hooked.try_acquire = slow_answer  # type: ignore[method-assign]
    lost: list[int] = []
    lock = fencelock.Lock(name, hooked, ttl=1, renew=False, on_lost=lambda lease: lost.append(lease.fence))
    lease = lock.acquire(timeout=10)
    try:
        assert lease.remaining() > 0.5, f"a lease dead on arrival ({lease.remaining():.3f} s left)"
        assert lease.held and lost == []
    finally:
        with_suppressed(lease.release)


@pytest.mark.needs("delete_key")
def test_a_release_that_finds_the_lease_gone_fires_on_lost_too(lock_server: Any, name: str) -> None:
    fired: list[int] = []
    lock = fencelock.Lock(name, lock_server.url, ttl=30, renew=False, on_lost=lambda lease: fired.append(lease.fence))
    lease = lock.acquire(timeout=5)
    lock_server.delete_lock(name)  # found out only by the release
    with pytest.raises(fencelock.LeaseLost):
        lease.release()
    assert fired == [lease.fence], "every loss signal fires, also when the release is what finds the loss"
    assert lease.lost_event.is_set()


@pytest.mark.needs("counted")
@pytest.mark.parametrize("call", ["leader", "rw_inspect", "lock_inspect"])
async def test_a_cancel_that_a_library_swallows_still_stops_leader_and_inspect(
    lock_server: Any, name: str, call: str
) -> None:
    """Found by the stress test (redis-debian, long tier, seed 2004): a task cancelled while its
    ``Election.leader()`` read was completing went on as if never cancelled (redis.asyncio's
    wait_for swallowed the cancel). The hooked inspect swallows a cancel the same way."""
    leader = await aio.Election(name, lock_server.url, value="boss", ttl=30, renew=False).campaign(timeout=5)
    swallowing = AsyncHooked(lock_server.url)
    inside = asyncio.Event()
    real_inspect = swallowing.inner.inspect

    async def swallow(key: str) -> Any:
        inside.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return await real_inspect(key)  # swallowed: the result is returned instead
        return await real_inspect(key)

    swallowing.inspect = swallow  # type: ignore[attr-defined]
    if call == "leader":
        coro = aio.Election(name, swallowing, value="observer", ttl=30).leader()
    elif call == "rw_inspect":
        coro = aio.ReadWriteLock(name + ":rw", swallowing, ttl=30).inspect()
    else:
        coro = aio.Lock(name, swallowing, ttl=30).inspect()
    task = asyncio.create_task(coro)
    await asyncio.wait_for(inside.wait(), 10)
    task.cancel()
    outcome = await asyncio.gather(task, return_exceptions=True)
    await leader.release()
    if sys.version_info >= (3, 11):
        assert task.cancelled(), f"the swallowed cancel did not stop {call}: it returned {outcome!r}"
    else:  # 3.10 counts no cancel requests: a swallowed one cannot be seen (documented)
        assert outcome[0] is None or isinstance(
            outcome[0], (asyncio.CancelledError, fencelock.Leader, fencelock.LockInfo)
        )


async def test_a_cancel_that_a_library_swallows_still_stops_the_acquire(lock_server: Any, name: str) -> None:
    # asyncio.wait_for on Python <= 3.11 can drop a cancel that lands as the inner call completes;
    # redis.asyncio wraps every command in it. The hooked wait below swallows a cancel the same way.
    holder = await aio.Lock(name, lock_server.url, ttl=30, renew=False).acquire(timeout=5)
    swallowing = AsyncHooked(lock_server.url)
    inside = asyncio.Event()
    real_wait = swallowing.inner.wait

    async def swallow(key: str, token: str, timeout: float) -> Any:
        inside.set()
        try:
            return await real_wait(key, token, timeout)
        except asyncio.CancelledError:
            return None  # swallowed, as wait_for does when the inner result is ready

    swallowing.wait = swallow  # type: ignore[method-assign]
    waiter = aio.Lock(name, swallowing, ttl=30, renew=False)
    task = asyncio.create_task(waiter.acquire(timeout=3))
    await asyncio.wait_for(inside.wait(), 10)
    task.cancel()
    outcome = await asyncio.gather(task, return_exceptions=True)
    await holder.release()
    if sys.version_info >= (3, 11):
        assert task.cancelled(), f"the swallowed cancel did not stop the acquire: {outcome!r}"
    else:  # 3.10 counts no cancel requests: a swallowed one cannot be seen (documented)
        assert isinstance(outcome[0], (fencelock.LockTimeout, asyncio.CancelledError))
    probe = await aio.Lock(name, lock_server.url, ttl=5).acquire(timeout=5)  # nothing left behind
    await probe.release()


@pytest.mark.parametrize("how", ["release", "async-with"])
async def test_a_cancel_that_a_library_swallows_still_stops_the_release(
    lock_server: Any, name: str, how: str
) -> None:
    """Found by the stress test (redis-debian, seed 1, in CI): a task cancelled while its release
    was completing returned normally (redis.asyncio's wait_for on <= 3.11 swallowed the cancel).
    The hooked release swallows a cancel the same way: the release is applied, then the task must
    still end cancelled."""
    swallowing = AsyncHooked(lock_server.url)
    inside = asyncio.Event()
    real_release = swallowing.inner.release

    async def swallow(key: str, token: str) -> Any:
        inside.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return await real_release(key, token)  # swallowed: the result is returned instead
        return await real_release(key, token)

    swallowing.release = swallow  # type: ignore[method-assign]
    lock = aio.Lock(name, swallowing, ttl=30, renew=False)

    async def section() -> str:
        if how == "release":
            lease = await lock.acquire(timeout=5)
            await lease.release()
        else:
            async with lock:
                pass
        return "returned"

    task = asyncio.create_task(section())
    await asyncio.wait_for(inside.wait(), 10)
    task.cancel()
    outcome = await asyncio.gather(task, return_exceptions=True)
    if sys.version_info >= (3, 11):
        assert task.cancelled(), f"the swallowed cancel did not stop the release: {outcome!r}"
    else:  # 3.10 counts no cancel requests: a swallowed one cannot be seen (documented)
        assert outcome[0] == "returned" or isinstance(outcome[0], asyncio.CancelledError)
    probe = await aio.Lock(name, lock_server.url, ttl=5).acquire(timeout=1)  # the release was applied
    await probe.release()


@pytest.mark.needs("pause")
def test_a_shorter_extend_in_flight_already_shortens_the_clients_belief(lock_server: Any, name: str) -> None:
    lock = fencelock.Lock(name, lock_server.url, ttl=30, renew=False)
    lease = lock.acquire(timeout=5)
    lock_server.pause()
    try:
        def shorten() -> None:  # blocks until the server answers
            with contextlib.suppress(fencelock.FenceLockError):
                lease.extend(ttl=0.5)

        sent = time.monotonic()
        t = threading.Thread(target=shorten)
        t.start()
        time.sleep(1.0)  # the server may apply it the moment it reads it: the key ends 0.5 s later
        believed_until = lease.deadline
        still_held = not lease.lost
    finally:
        lock_server.resume()
        t.join(20)
    assert believed_until <= time.monotonic() and not still_held, (
        f"while extend(ttl=0.5) sent at {sent:.3f} was in flight the client believed the lease until "
        f"{believed_until:.3f}"
    )
