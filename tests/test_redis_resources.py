"""What fencelock holds and leaves behind on Redis: connections (one pool per URL), event-loop
timers and tasks after a release, and keys (memory) after a release.

Counts, never durations: speed is shown by bench/bench_redis.py, not asserted here.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import threading
import time
import uuid
from typing import Any

import pytest

import fencelock
from fencelock import aio
from fencelock.backends.redis import shared

ENGINES = ["redis_embedded_server", "redis_debian_server"]


@pytest.fixture(params=ENGINES)
def server(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(request.param)


def tagged_url(server: Any) -> tuple[str, str]:
    """The server's URL with a client name of its own, so CLIENT LIST tells its connections apart."""
    tag = f"fl-{uuid.uuid4().hex[:10]}"
    sep = "&" if "?" in server.url else "?"
    return f"{server.url}{sep}client_name={tag}", tag


def connections(server: Any, tag: str) -> int:
    return sum(1 for c in server.admin.client_list() if c.get("name") == tag)


def wait_connections(server: Any, tag: str, want: int, timeout: float = 5.0) -> int:
    """The count of ``tag``'s connections once it is ``want`` (a closed socket takes the server a
    moment to notice), or the last count seen after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        seen = connections(server, tag)
        if seen == want or time.monotonic() > end:
            return seen
        threading.Event().wait(0.02)


# -- one connection pool per URL --------------------------------------------------------------------


def test_locks_from_one_url_share_one_connection(server: Any) -> None:
    url, tag = tagged_url(server)
    locks = [fencelock.Lock(f"share:{tag}:{i}", url, ttl=5, renew=False) for i in range(200)]
    for lock in locks:
        lock.acquire().release()
    assert connections(server, tag) == 1, "200 locks from one URL, used one after another: one connection"
    assert len({id(lock.backend.client) for lock in locks}) == 1  # type: ignore[attr-defined]
    for lock in locks[:-1]:
        lock.close()
    assert connections(server, tag) == 1, "still in use by the last lock"
    locks[-1].acquire().release()
    locks[-1].close()
    assert wait_connections(server, tag, 0) == 0, "the last close closes the pool"
    again = fencelock.Lock(f"share:{tag}:again", url, ttl=5, renew=False)
    with again as lease:  # a lock made after the pool closed gets a new one
        assert lease.fence > 0
    again.close()
    assert wait_connections(server, tag, 0) == 0


def test_a_second_close_of_one_lock_does_not_close_the_others_pool(server: Any) -> None:
    url, tag = tagged_url(server)
    first = fencelock.Lock(f"share:{tag}:1", url, ttl=5, renew=False)
    second = fencelock.Lock(f"share:{tag}:2", url, ttl=5, renew=False)
    first.close()
    first.close()  # counted once
    with second as lease:
        assert lease.fence > 0
    assert connections(server, tag) == 1
    second.close()
    assert wait_connections(server, tag, 0) == 0


def test_locks_dropped_without_close_reuse_one_idle_client(server: Any) -> None:
    url, tag = tagged_url(server)
    before = shared.open_count()
    for i in range(100):  # a lock per call, never closed: the pattern of code that makes one per name
        fencelock.Lock(f"share:{tag}:{i}", url, ttl=5, renew=False).acquire().release()
    assert connections(server, tag) == 1
    assert shared.open_count() <= before + 1, "one idle client for the URL, not one per dropped lock"
    last = fencelock.Lock(f"share:{tag}:last", url, ttl=5, renew=False)
    last.acquire().release()
    assert connections(server, tag) == 1, "the idle client was reused"
    last.close()
    assert wait_connections(server, tag, 0) == 0, "closing the last user closes the idle client too"


def test_threads_share_the_pool_and_each_gets_a_connection_when_it_needs_one(server: Any) -> None:
    url, tag = tagged_url(server)
    errors: list[BaseException] = []
    fences: list[int] = []
    start = threading.Barrier(8, timeout=30)

    def worker(i: int) -> None:
        try:
            start.wait()
            for j in range(25):
                lock = fencelock.Lock(f"share:{tag}:{i}:{j % 3}", url, ttl=5, renew=False)
                with lock as lease:
                    fences.append(lease.fence)
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(fences) == 200
    assert 1 <= connections(server, tag) <= 8, "at most one connection per thread in flight"


def _child_cycle(url: str, name: str, out: Any) -> None:
    try:
        lock = fencelock.Lock(name, url, ttl=5, renew=False)
        with lock as lease:
            out.put(("ok", lease.fence))
        lock.close()
    except BaseException as err:  # sent to the parent
        out.put(("error", repr(err)))


def test_a_forked_child_gets_a_pool_of_its_own(server: Any) -> None:
    url, tag = tagged_url(server)
    parent = fencelock.Lock(f"share:{tag}:parent", url, ttl=5, renew=False)
    parent.acquire().release()  # the parent's pool has a connection open
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_child_cycle, args=(url, f"share:{tag}:child", out))
    child.start()
    try:
        status, value = out.get(timeout=30)
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
    assert status == "ok", value
    assert child.exitcode == 0
    with parent as lease:  # the parent's pool still works: the child never used its socket
        assert lease.fence > 0
    assert connections(server, tag) == 1, "the child's connection closed with its lock; the parent's stays"
    parent.close()
    assert wait_connections(server, tag, 0) == 0


async def test_asyncio_locks_from_one_url_share_one_connection_per_loop(server: Any) -> None:
    url, tag = tagged_url(server)
    locks = [aio.Lock(f"share:{tag}:{i}", url, ttl=5, renew=False) for i in range(100)]
    for lock in locks:
        lease = await lock.acquire()
        await lease.release()
    assert connections(server, tag) == 1
    for lock in locks:
        await lock.aclose()
    assert wait_connections(server, tag, 0) == 0


def test_asyncio_locks_in_two_event_loops_do_not_share_a_client(server: Any) -> None:
    url, tag = tagged_url(server)

    async def cycle() -> int:
        lock = aio.Lock(f"share:{tag}", url, ttl=5, renew=False)
        try:
            async with lock as lease:
                return lease.fence
        finally:
            await lock.aclose()

    first = asyncio.run(cycle())
    second = asyncio.run(cycle())  # a client bound to the first loop would fail here
    assert second > first
    assert wait_connections(server, tag, 0) == 0


def test_a_users_client_is_shared_by_its_locks_and_never_closed(server: Any) -> None:
    client = server.server.client(socket_timeout=5)
    try:
        a = fencelock.Lock("users:a", client)
        b = fencelock.Lock("users:b", client)
        assert a.backend is b.backend, "one backend per client of the user's"
        a.close()
        b.close()
        assert client.ping(), "the user's client stays open"
    finally:
        client.close()


def test_bad_urls_still_fail_when_the_lock_is_made() -> None:
    with pytest.raises(fencelock.ConfigurationError, match="unknown option"):
        fencelock.Lock("x", "redis://127.0.0.1:6379/0?no_such_option=1")
    with pytest.raises(fencelock.ConfigurationError, match="unknown option"):
        fencelock.Lock("x", "redis://127.0.0.1:6379/0?no_such_option=1")  # not cached as good


def test_a_down_server_from_a_shared_url_is_an_error_not_a_hang() -> None:
    url = "redis://127.0.0.1:1/0"
    first = fencelock.Lock("down:1", url, ttl=5)
    second = fencelock.Lock("down:2", url, ttl=5)
    for lock in (first, second):
        with pytest.raises(fencelock.BackendUnavailable):
            lock.acquire(timeout=0.1)
        lock.close()


# -- asyncio: nothing left pending in the loop --------------------------------------------------------


def pending_timers(loop: asyncio.AbstractEventLoop) -> int:
    """Timers scheduled in ``loop`` and not cancelled. ``_scheduled`` is asyncio's own heap of
    TimerHandles (BaseEventLoop); a cancelled one stays there until asyncio sweeps it, but will
    never run and is not counted."""
    return sum(1 for handle in loop._scheduled if not handle.cancelled())  # type: ignore[attr-defined]


def other_tasks() -> set[asyncio.Task[Any]]:
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current and not t.done()}


async def settle(loop: asyncio.AbstractEventLoop, timers: int, tasks: set[asyncio.Task[Any]]) -> None:
    """Let the loop run callbacks already due (a renewer's last wake-up) for at most 200 rounds."""
    for _ in range(200):
        if pending_timers(loop) <= timers and other_tasks() <= tasks:
            return
        await asyncio.sleep(0)


@pytest.mark.parametrize("renew", [False, True])
async def test_no_timer_or_task_is_left_in_the_loop_after_releases(server: Any, renew: bool) -> None:
    url, _ = tagged_url(server)
    loop = asyncio.get_running_loop()
    locks = [aio.Lock(f"loop:{uuid.uuid4().hex[:8]}:{i}", url, ttl=30, renew=renew) for i in range(20)]
    await (await locks[0].acquire()).release()  # connections opened: redis.asyncio's own state settles
    timers, tasks = pending_timers(loop), other_tasks()

    for _ in range(10):  # sequential cycles, both ways of releasing
        for lock in locks:
            lease = await lock.acquire()
            await lease.release()
            async with lock:
                pass
    await settle(loop, timers, tasks)
    assert pending_timers(loop) == timers, "a timer of a released lease is still pending"
    assert other_tasks() == tasks, "a task was left behind by a release"

    async def worker(lock: aio.Lock) -> None:
        for _ in range(10):
            async with lock:
                await asyncio.sleep(0)

    await asyncio.gather(*(worker(lock) for lock in locks))  # 20 tasks at once
    await settle(loop, timers, tasks)
    assert pending_timers(loop) == timers
    assert other_tasks() == tasks

    held = [await lock.acquire() for lock in locks]
    assert pending_timers(loop) == timers + 1, "20 leases held: one timer for all of them (the earliest deadline)"
    for lease in held:
        await lease.release()
    await settle(loop, timers, tasks)
    assert pending_timers(loop) == timers, "the last release cancels the timer"
    for lock in locks:
        await lock.aclose()


async def test_a_renewed_lease_leaves_no_renewer_task_after_release(server: Any, name: str) -> None:
    url, _ = tagged_url(server)
    loop = asyncio.get_running_loop()
    lock = aio.Lock(name, url, ttl=0.3, renew=0.05)
    await (await lock.acquire()).release()
    timers, tasks = pending_timers(loop), other_tasks()
    for _ in range(3):
        async with lock as lease:
            first = lease.deadline
            for _ in range(500):  # bounded: 5 s; the first renewal is due after 0.05 s
                if lease.deadline > first:
                    break
                await asyncio.sleep(0.01)
            assert lease.deadline > first, "renewed"
            assert not lease.lost
            assert any(t.get_name() == "fencelock-renewer" for t in other_tasks()), "renewing in a task"
    await settle(loop, timers, tasks)
    assert other_tasks() == tasks, "the renewer ended with its lease"
    assert pending_timers(loop) == timers
    await lock.aclose()


async def test_a_lease_dropped_without_release_does_not_keep_the_timer(server: Any, name: str) -> None:
    import gc

    url, _ = tagged_url(server)
    loop = asyncio.get_running_loop()
    lock = aio.Lock(name, url, ttl=30, renew=False)
    await (await lock.acquire()).release()
    timers = pending_timers(loop)
    lease = await lock.acquire()
    assert pending_timers(loop) == timers + 1
    server.admin.delete(f"fencelock:{{{name}}}:lock")  # the key goes; the lease object goes too
    del lease
    gc.collect()
    assert pending_timers(loop) == timers, "a collected lease's deadline concerns nobody"
    await lock.aclose()


# -- what a name leaves in Redis ------------------------------------------------------------------------


def name_keys(server: Any, name: str) -> set[str]:
    return {k.decode() for k in server.admin.scan_iter(match=f"fencelock:{{{name}}}*")}


def test_a_released_name_leaves_only_its_fence_counter_and_that_expires(server: Any, name: str) -> None:
    from fencelock.backends.redis import RedisKeys
    from fencelock.backends.redis.scripts import FENCE_KEEP_MS

    keys = RedisKeys("fencelock:", name)
    lock = fencelock.Lock(name, server.url, ttl=5, renew=False)
    for _ in range(20):
        lock.acquire().release()
    assert name_keys(server, name) == {keys.fence}
    pttl = server.admin.pttl(keys.fence)
    assert FENCE_KEEP_MS - 60_000 < pttl <= FENCE_KEEP_MS + 5_000, "kept FENCE_KEEP_MS past the lease's TTL"
    usage = server.admin.memory_usage(keys.fence)
    assert usage is not None and usage <= 128, f"{usage} bytes for an idle name"
    lock.close()


def test_after_waiters_and_handoffs_only_the_counter_stays(server: Any, name: str) -> None:
    from fencelock.backends.redis import REGISTRATION_MS, RedisKeys

    keys = RedisKeys("fencelock:", name)
    lock = fencelock.Lock(name, server.url, ttl=5, renew=False)
    fences: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(10):
                with lock as lease:
                    fences.append(lease.fence)
                    threading.Event().wait(0.001)
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(fences) == 40 and len(set(fences)) == 40
    # a waiter that timed out leaves its registration behind for at most REGISTRATION_MS
    holder = lock.acquire()
    with pytest.raises(fencelock.LockTimeout):
        fencelock.Lock(name, server.url, ttl=5).acquire(timeout=0.05)
    holder.release()
    end = time.monotonic() + REGISTRATION_MS / 1000 + 5
    while name_keys(server, name) != {keys.fence} and time.monotonic() < end:
        threading.Event().wait(0.05)
    assert name_keys(server, name) == {keys.fence}, "wait lists and handoff notices expire"
    lock.close()


def test_a_counter_that_expired_still_mints_a_larger_fence(server: Any, name: str) -> None:
    from fencelock.backends.redis import RedisKeys

    keys = RedisKeys("fencelock:", name)
    lock = fencelock.Lock(name, server.url, ttl=5, renew=False)
    with lock as lease:
        first = lease.fence
    assert server.admin.pexpire(keys.fence, 1)
    end = time.monotonic() + 5
    while server.admin.exists(keys.fence) and time.monotonic() < end:
        threading.Event().wait(0.01)
    assert not server.admin.exists(keys.fence), "the counter expired"
    with lock as lease:
        assert lease.fence > first, "the server clock (microseconds) restarts it above the earlier fences"
    lock.close()


def test_a_users_client_given_to_locks_is_not_kept_alive_by_fencelock(server: Any) -> None:
    import gc
    import weakref

    client = server.server.client(socket_timeout=5)
    lock = fencelock.Lock("users:gc", client)
    lock.acquire().release()
    gone = weakref.ref(client)
    client.close()
    del client, lock
    gc.collect()
    assert gone() is None, "the shared backend cache holds clients weakly"


def test_asyncio_locks_made_outside_a_loop_work_in_loops_of_their_own(server: Any) -> None:
    url, tag = tagged_url(server)
    first = aio.Lock(f"share:{tag}:1", url, ttl=5, renew=False)  # no loop running here
    second = aio.Lock(f"share:{tag}:2", url, ttl=5, renew=False)

    async def cycle(lock: aio.Lock) -> int:
        try:
            async with lock as lease:
                return lease.fence
        finally:
            await lock.aclose()

    assert asyncio.run(cycle(first)) > 0
    assert asyncio.run(cycle(second)) > 0, "a client bound to the first loop would fail in the second"
    assert wait_connections(server, tag, 0) == 0


async def test_each_api_registers_its_shared_client_as_its_own_kind(server: Any) -> None:
    url, _ = tagged_url(server)
    sync_lock = fencelock.Lock("kind:s", url)
    async_lock = aio.Lock("kind:a", url)
    assert sync_lock.backend._shared.asyncio is False, "a blocking client (closed at exit)"  # type: ignore[attr-defined]
    assert async_lock.backend._shared.asyncio is True  # type: ignore[attr-defined]
    assert sync_lock.backend.client is not async_lock.backend.client  # type: ignore[attr-defined]
    sync_lock.close()
    await async_lock.aclose()
