"""Habits users bring from redis-py, python-redis-lock and threading: met where it costs nothing,
refused with a message naming the replacement where fencelock differs on purpose."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import fencelock
from fencelock import aio

pytestmark = pytest.mark.backends("redis-embedded", "sqlite")


def test_acquire_blocking_false_is_one_attempt(lock_server: Any, name: str) -> None:
    lock = fencelock.Lock(name, lock_server.url, ttl=10)
    lease = lock.acquire(blocking=False)
    try:
        other = fencelock.Lock(name, lock_server.url, ttl=10)
        with pytest.raises(fencelock.LockTimeout):
            other.acquire(blocking=False)
        with pytest.raises(fencelock.ConfigurationError, match="one attempt"):
            other.acquire(timeout=3, blocking=False)
    finally:
        lease.release()


def test_redis_py_blocking_timeout_is_named_timeout_here(lock_server: Any, name: str) -> None:
    lock = fencelock.Lock(name, lock_server.url, ttl=10)
    with pytest.raises(TypeError, match=r"blocking_timeout is fencelock's timeout: lock.acquire\(timeout=5\)"):
        lock.acquire(blocking_timeout=5)


def test_a_nested_with_in_the_same_thread_raises_at_once_instead_of_waiting_for_itself(
    lock_server: Any, name: str
) -> None:
    lock = fencelock.Lock(name, lock_server.url, ttl=10, timeout=30)
    with lock as lease:
        with pytest.raises(fencelock.AlreadyHeld, match="already held by this thread") as info:
            with lock:
                pass
        assert "not reentrant" in str(info.value)
        with pytest.raises(fencelock.AlreadyHeld):
            lock.try_acquire()
        assert lease.held, "the refused nested acquire must not touch the held lease"
    # after the block, the same thread may take it again
    with lock as again:
        assert again.fence > lease.fence


def test_another_thread_sharing_the_lock_object_just_waits(lock_server: Any, name: str) -> None:
    lock = fencelock.Lock(name, lock_server.url, ttl=10)
    seen: list[Any] = []
    with lock:
        t = threading.Thread(target=lambda: seen.append(lock.try_acquire()))
        t.start()
        t.join(10)
    assert seen == [None], "another thread is another owner: it gets None, not AlreadyHeld"


async def test_a_nested_async_with_in_the_same_task_raises_but_a_child_task_waits(lock_server: Any, name: str) -> None:
    lock = aio.Lock(name, lock_server.url, ttl=10)
    async with lock as lease:
        with pytest.raises(fencelock.AlreadyHeld, match="already held by this task"):
            async with lock:
                pass
        # a child task inherits a copy of our context, but it is another owner: it waits for us
        child = asyncio.create_task(lock.acquire(timeout=10))
        await asyncio.sleep(0.2)
        assert not child.done()
    got = await asyncio.wait_for(child, 10)
    assert got.fence > lease.fence
    await got.release()
    await lock.aclose()


def test_lock_as_decorator_runs_each_call_under_the_lock(lock_server: Any, name: str) -> None:
    lock = fencelock.Lock(name, lock_server.url, ttl=10)

    @lock
    def work(x: int) -> tuple[int, int]:
        lease = lock.current_lease()
        assert lease is not None and lease.held
        assert fencelock.Lock(name, lock_server.url).try_acquire() is None, "held during the call"
        return x * 2, lease.fence

    assert work.__name__ == "work"
    (a, f1), (b, f2) = work(1), work(2)
    assert (a, b) == (2, 4) and f2 > f1
    assert lock.current_lease() is None
    free = fencelock.Lock(name, lock_server.url).try_acquire()
    assert free is not None, "released after each call"
    free.release()


async def test_async_lock_as_decorator(lock_server: Any, name: str) -> None:
    lock = aio.Lock(name, lock_server.url, ttl=10)

    @lock
    async def work() -> int:
        lease = lock.current_lease()
        assert lease is not None
        return lease.fence

    assert await work() < await work()
    await lock.aclose()


def test_decorating_the_wrong_kind_of_function_is_refused(lock_server: Any, name: str) -> None:
    async def coro() -> None:
        return None

    def plain() -> None:
        return None

    with pytest.raises(fencelock.ConfigurationError, match=r"decorate it with fencelock\.aio\.Lock"):
        fencelock.Lock(name, lock_server.url)(coro)
    with pytest.raises(fencelock.ConfigurationError, match=r"use fencelock\.Lock for a plain function"):
        aio.Lock(name, lock_server.url)(plain)


def test_extend_takes_the_new_length_by_keyword_and_sets_it(lock_server: Any, name: str) -> None:
    lock = fencelock.Lock(name, lock_server.url, ttl=10, renew=False)
    with lock as lease:
        with pytest.raises(TypeError, match=r"lease.extend\(ttl=30\) makes the lease last 30 s from now"):
            lease.extend(100)  # type: ignore[call-arg]
        lease.extend(ttl=2)
        assert lease.remaining() <= 2, "extend sets the time left; it does not add to it"
        info = lock.inspect()
        assert info is not None and info.ttl_remaining is not None and info.ttl_remaining <= 2


def test_the_sync_lock_refuses_cancel_on_loss(lock_server: Any, name: str) -> None:
    with pytest.raises(fencelock.ConfigurationError, match="cancel_on_loss needs asyncio"):
        fencelock.Lock(name, lock_server.url, cancel_on_loss=True)
    aio.Lock(name, lock_server.url, cancel_on_loss=True)  # fine there


def test_threadings_positional_acquire_false_names_the_spelling_that_works(lock_server: Any, name: str) -> None:
    """``lock.acquire(False)`` is threading's (and python-redis-lock's) "don't block"; here the first
    argument is the timeout. Said at once, naming what to write, for both APIs."""
    lock = fencelock.Lock(name, lock_server.url, ttl=10)
    for flag in (False, True):
        with pytest.raises(fencelock.ConfigurationError, match=r"acquire\(blocking=False\) or try_acquire\(\)"):
            lock.acquire(flag)

    async def main() -> None:
        alock = aio.Lock(name, lock_server.url, ttl=10)
        with pytest.raises(fencelock.ConfigurationError, match=r"acquire\(blocking=False\)"):
            await alock.acquire(False)

    asyncio.run(main())
