"""fencelock behind Redis Sentinel (a master, a replica, three sentinels on loopback), through the
user's own ``Sentinel(...).master_for(...)`` client. The failover test runs last: it kills the master."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

import fencelock
import fencelock.aio
from fencelock.backends.redis import RedisKeys, ReplicationUnconfirmed
from srv_sentinel import SERVICE, SentinelSetup
from srv_tls import private_dir, start_with_retries

WAIT = 60.0


@pytest.fixture(scope="module")
def setup() -> Iterator[SentinelSetup]:
    servers = start_with_retries(lambda: SentinelSetup(private_dir("sentinel")).start())
    try:
        yield servers
    finally:
        servers.stop()


def test_locks_through_a_sentinel_master_client(setup: SentinelSetup, name: str) -> None:
    client = setup.sentinel().master_for(SERVICE, socket_timeout=5)
    try:
        lock = fencelock.Lock(name, client, ttl=10)
        with lock as lease:
            info = lock.inspect()
            assert info is not None and info.fence == lease.fence
        assert lock.inspect() is None
    finally:
        client.close()


def test_wait_replicas_puts_the_grant_on_the_replica_before_acquire_returns(setup: SentinelSetup, name: str) -> None:
    client = setup.sentinel().master_for(SERVICE, socket_timeout=5)
    try:
        backend = fencelock.RedisBackend(client, wait_replicas=1, wait_timeout=10)
        with fencelock.Lock(name, backend, ttl=10) as lease:
            with setup.server(setup.replica_port) as replica:
                value = replica.get(RedisKeys("fencelock:", name).lock)
            assert value is not None and value.startswith(lease.token + ":"), "on the replica already"
    finally:
        client.close()


def test_wait_replicas_refuses_a_grant_the_replicas_did_not_acknowledge(setup: SentinelSetup, name: str) -> None:
    client = setup.sentinel().master_for(SERVICE, socket_timeout=5)
    setup.cut_replication()
    try:
        backend = fencelock.RedisBackend(client, wait_replicas=1, wait_timeout=0.2)
        lock = fencelock.Lock(name, backend, ttl=10)
        with pytest.raises(ReplicationUnconfirmed, match="0 of 1 replica") as caught:
            lock.acquire(timeout=0)
        assert isinstance(caught.value, fencelock.BackendRejected)
        assert lock.inspect() is None, "the unconfirmed grant was given up, not left behind"
        # The URL form takes the same options.
        with setup.server(setup.master_port) as master:
            assert master.ping()
        url = f"redis://127.0.0.1:{setup.master_port}?wait_replicas=1&wait_timeout=0.2"
        by_url = fencelock.Lock(name, url, ttl=10)
        try:
            with pytest.raises(ReplicationUnconfirmed):
                by_url.acquire(timeout=0)
        finally:
            by_url.close()
    finally:
        setup.restore_replication()
        client.close()


def _handoff(setup: SentinelSetup, name: str, wait_timeout: float, cut: bool) -> tuple[int, list[object]]:
    """A holder without wait_replicas releases to a queued waiter that has it. Returns the holder's
    fence and what the waiter got (a fence, or the error)."""
    holder_client = setup.sentinel().master_for(SERVICE, socket_timeout=5)
    waiter_client = setup.sentinel().master_for(SERVICE, socket_timeout=5)
    outcome: list[object] = []
    try:
        lock = fencelock.Lock(name, holder_client, ttl=10)
        first = lock.acquire(timeout=0)
        waiting = fencelock.RedisBackend(waiter_client, wait_replicas=1, wait_timeout=wait_timeout)

        def waiter() -> None:
            try:
                with fencelock.Lock(name, waiting, ttl=10).acquire(timeout=WAIT) as lease:
                    with setup.server(setup.replica_port) as replica:
                        value = replica.get(RedisKeys("fencelock:", name).lock)
                    outcome.append((lease.fence, value is not None and value.startswith(lease.token + ":")))
            except BaseException as err:
                outcome.append(err)

        thread = threading.Thread(target=waiter)
        thread.start()
        end = time.monotonic() + WAIT
        while (info := lock.inspect()) is not None and info.waiters != 1:
            assert time.monotonic() < end and not outcome, outcome
            time.sleep(0.01)
        if cut:
            setup.cut_replication()
        first.release()  # hands the lock to the waiter
        thread.join(WAIT)
        assert not thread.is_alive()
        return first.fence, outcome
    finally:
        holder_client.close()
        waiter_client.close()


def test_wait_replicas_confirms_a_handoff(setup: SentinelSetup, name: str) -> None:
    fence, outcome = _handoff(setup, name, wait_timeout=10, cut=False)
    assert len(outcome) == 1 and isinstance(outcome[0], tuple)
    handed_fence, on_replica = outcome[0]
    assert handed_fence > fence and on_replica, "the handed-over lock was on the replica before use"


def test_wait_replicas_refuses_an_unacknowledged_handoff(setup: SentinelSetup, name: str) -> None:
    try:
        _, outcome = _handoff(setup, name, wait_timeout=0.2, cut=True)
    finally:
        setup.restore_replication()
    assert len(outcome) == 1 and isinstance(outcome[0], ReplicationUnconfirmed), outcome
    with setup.server(setup.master_port) as master:
        assert master.get(RedisKeys("fencelock:", name).lock) is None, "given up, not left held"


async def test_asyncio_sentinel_client_with_wait_replicas(setup: SentinelSetup, name: str) -> None:
    from redis.asyncio.sentinel import Sentinel as AsyncSentinel

    from fencelock.backends.redis import AsyncRedisBackend

    sentinel = AsyncSentinel([("127.0.0.1", p) for p in setup.sentinel_ports], socket_timeout=2)
    client = sentinel.master_for(SERVICE, socket_timeout=5)
    try:
        backend = AsyncRedisBackend(client, wait_replicas=1, wait_timeout=10)
        async with fencelock.aio.Lock(name, backend, ttl=10) as lease:
            with setup.server(setup.replica_port) as replica:
                value = replica.get(RedisKeys("fencelock:", name).lock)
            assert value is not None and value.startswith(lease.token + ":")
    finally:
        await client.aclose()


def test_wait_replicas_is_validated() -> None:
    import redis

    client = redis.Redis()  # no I/O: validation comes first
    for bad in ({"wait_replicas": -1}, {"wait_replicas": 1, "wait_timeout": 0}, {"wait_replicas": 1.5}):
        with pytest.raises(fencelock.ConfigurationError):
            fencelock.RedisBackend(client, **bad)  # type: ignore[arg-type]


def test_zz_failover_loses_a_lease_whose_key_did_not_reach_the_replica(setup: SentinelSetup, name: str) -> None:
    """Two leases on the master: ``kept`` replicated, ``orphan`` taken after replication was cut.
    The master dies and the sentinels promote the replica. The client follows; ``orphan``'s
    renewal finds no key on the new master and the holder is told; ``kept`` lives on. Fences
    issued after the failover stay above those before."""
    client = setup.sentinel().master_for(SERVICE, socket_timeout=2, socket_connect_timeout=2)
    kept_name, orphan_name = f"{name}:kept", f"{name}:orphan"
    lost = threading.Event()
    try:
        kept = fencelock.Lock(kept_name, client, ttl=60).acquire(timeout=0)
        with setup.server(setup.master_port) as master:
            assert master.wait(1, 10_000) == 1, "kept is on the replica"

        setup.cut_replication()
        orphan_lock = fencelock.Lock(orphan_name, client, ttl=60, renew=1.0, on_lost=lambda lease: lost.set())
        orphan = orphan_lock.acquire(timeout=0)
        with setup.server(setup.replica_port) as replica:
            assert replica.get(RedisKeys("fencelock:", orphan_name).lock) is None, "not replicated"

        old_master = setup.master_port
        setup.kill(old_master)
        assert setup.wait_failover() == setup.replica_port

        assert lost.wait(WAIT), "the holder of the unreplicated lease was told"
        assert orphan.lost and "gone" in (orphan.lost_reason or "")
        with pytest.raises(fencelock.LeaseLost):
            orphan.ensure_held()

        kept.extend()  # through the same client, now talking to the new master
        assert kept.held, "a replicated lease survives the failover"
        assert client.connection_pool.get_master_address()[1] == setup.replica_port, "the client followed"

        with fencelock.Lock(orphan_name, client, ttl=10).acquire(timeout=WAIT) as again:
            assert again.fence > orphan.fence, "fences after the failover stay above those before"
        kept.release()
        with fencelock.Lock(kept_name, client, ttl=10).acquire(timeout=WAIT) as again:
            assert again.fence > kept.fence
    finally:
        client.close()
