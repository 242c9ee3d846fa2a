"""fencelock on a real Redis Cluster (3 masters + 3 replicas on loopback), through the user's own
``redis.cluster.RedisCluster`` client. The failover test runs last: it kills a master."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from redis.cluster import RedisCluster

import fencelock
from fencelock._core.params import new_token
from fencelock.backends.redis import RedisKeys
from srv_cluster import NODE_TIMEOUT_MS, RedisClusterServers
from srv_tls import private_dir, start_with_retries

WAIT = 60.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    servers = start_with_retries(lambda: RedisClusterServers(private_dir("cluster")).start())
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def client(cluster: RedisClusterServers) -> Iterator[RedisCluster]:
    c = cluster.client()
    try:
        yield c
    finally:
        c.close()


def keyslot(cluster: RedisClusterServers, key: str) -> int:
    with cluster.node(cluster.alive_ports()[0]) as node:
        return int(node.execute_command("CLUSTER", "KEYSLOT", key))


def test_many_locks_spread_over_slots_and_masters_each_in_one_slot(
    cluster: RedisClusterServers, client: RedisCluster, name: str
) -> None:
    names = [f"{name}:{i}" for i in range(60)] + [f"{name}:{{braced}}", f"{name} ü\n%"]
    leases = [fencelock.Lock(n, client, ttl=30, renew=False).acquire(timeout=0) for n in names]
    try:
        slots = set()
        masters = set()
        for n, lease in zip(names, leases, strict=True):
            keys = RedisKeys("fencelock:", n)
            # Ask the server, not our own CRC: every key of the lock, the wake list included, in one slot.
            found = {keyslot(cluster, k) for k in [*keys.all4(), keys.wake(lease.token)]}
            assert len(found) == 1, (n, found)
            slot = found.pop()
            slots.add(slot)
            masters.add(cluster.master_of_slot(slot))
            owner = cluster.node(cluster.master_of_slot(slot))
            with owner:
                assert owner.get(keys.lock).startswith(lease.token + ":")
                assert int(owner.get(keys.fence)) == lease.fence
        assert len(slots) > 40, "names spread over many slots"
        assert len(masters) == 3, "and over all three masters"
    finally:
        for lease in leases:
            lease.release()
    assert all(fencelock.Lock(n, client).inspect() is None for n in names)


def test_contention_and_handoff_on_a_cluster(cluster: RedisClusterServers, name: str) -> None:
    a, b = cluster.client(), cluster.client()
    try:
        first = fencelock.Lock(name, a, ttl=10).acquire(timeout=0)
        got: list[int] = []
        errors: list[BaseException] = []

        def waiter() -> None:
            try:
                with fencelock.Lock(name, b, ttl=10).acquire(timeout=WAIT) as lease:
                    got.append(lease.fence)
            except BaseException as err:
                errors.append(err)

        thread = threading.Thread(target=waiter)
        thread.start()
        lock = fencelock.Lock(name, a)
        end = time.monotonic() + WAIT
        while (info := lock.inspect()) is not None and info.waiters != 1:
            assert time.monotonic() < end and not errors, errors
            time.sleep(0.01)
        assert fencelock.Lock(name, a).try_acquire() is None, "no barging past the queued waiter"
        first.release()
        thread.join(WAIT)
        assert errors == [] and len(got) == 1 and got[0] > first.fence
    finally:
        a.close()
        b.close()


async def test_asyncio_cluster_client_with_handoff(cluster: RedisClusterServers, name: str) -> None:
    import asyncio

    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

    import fencelock.aio

    client = AsyncRedisCluster(host="127.0.0.1", port=cluster.alive_ports()[0], socket_timeout=5)
    try:
        lock = fencelock.aio.Lock(name, client, ttl=10)
        first = await lock.acquire(timeout=0)
        waiter = asyncio.create_task(fencelock.aio.Lock(name, client, ttl=10).acquire(timeout=WAIT))
        end = time.monotonic() + WAIT
        while (info := await lock.inspect()) is not None and info.waiters != 1:
            assert time.monotonic() < end
            await asyncio.sleep(0.01)
        await first.release()
        second = await asyncio.wait_for(waiter, WAIT)
        assert second.fence > first.fence
        await second.release()
        assert await lock.inspect() is None
    finally:
        await client.aclose()


def test_counted_leases_on_a_cluster_keep_every_key_in_the_names_slot(
    cluster: RedisClusterServers, client: RedisCluster, name: str
) -> None:
    # The mutex's scripts reach the counted keys by deriving them from KEYS[1]: the server must
    # find them in the slot it runs the script in, and on one master; the mutex path finds them too.
    backend = fencelock.RedisBackend(client)
    rw = 1 << 30
    writer, reader = new_token(), new_token()
    assert backend.try_acquire(name, writer, 10_000, "w", False, rw, rw).fence is not None
    assert backend.try_acquire(name, reader, 10_000, "r", True, rw, 1).fence is None
    with pytest.raises(fencelock.LimitMismatch):
        backend.try_acquire(name, new_token(), 10_000, "m", False)
    assert backend.extend(name, writer, 10_000) is True
    keys = RedisKeys("fencelock:", name)
    assert len({keyslot(cluster, k) for k in [*keys.all9(), keys.wake(reader)]}) == 1
    assert backend.release(name, writer) is True
    assert backend.wait(name, reader, 2.0) is not None, "handed over by the release"
    info = backend.inspect(name)
    assert info is not None and info.limit == rw and len(info.holders) == 1
    backend.abandon(name, reader)
    assert backend.inspect(name) is None


def test_zz_failover_of_the_master_holding_a_lock(cluster: RedisClusterServers, name: str) -> None:
    """Kill the master that holds a lock; a replica takes over after the node timeout. The lease is
    shorter than that timeout, so no renewal can succeed before the holder's deadline: the holder
    is told it lost the lease (never left believing it holds it). Fences afterwards stay above."""
    ttl = 1.0
    assert ttl * 1000 < NODE_TIMEOUT_MS, "the failover cannot finish before the lease ends"
    others = [f"{name}:other:{i}" for i in range(20)]
    client = cluster.client()
    try:
        before = {n: fencelock.Lock(n, client, ttl=30).acquire(timeout=0) for n in others}
        for lease in before.values():
            lease.release()
        lost = threading.Event()
        lock = fencelock.Lock(name, client, ttl=ttl, on_lost=lambda lease: lost.set())
        lease = lock.acquire(timeout=0)
        victim = cluster.master_of_slot(keyslot(cluster, RedisKeys("fencelock:", name).lock))
        cluster.kill(victim)

        assert lost.wait(WAIT), "the holder was told"
        assert lease.lost and not lease.held
        assert lease.lost_reason is not None
        with pytest.raises(fencelock.LeaseLost):
            lease.ensure_held()

        cluster.wait_ok()  # a replica took over the dead master's slots
        assert victim not in cluster.masters().values()
        with pytest.raises(fencelock.LeaseLost):
            lease.release()  # not ours any more (or gone): nothing deleted, and it says so

        after = cluster.client()
        try:
            with fencelock.Lock(name, after, ttl=10).acquire(timeout=WAIT) as again:
                assert again.fence > lease.fence
            for n, old in before.items():
                with fencelock.Lock(n, after, ttl=10).acquire(timeout=WAIT) as new:
                    assert new.fence > old.fence, n
        finally:
            after.close()
    finally:
        client.close()
