"""What fencelock holds and leaves behind on Redis: connections (one pool per URL), event-loop
timers and tasks after a release, and keys (memory) after a release. Issue 14.

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
