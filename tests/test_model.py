"""The lock against a model: seeded random sequences of operations on one name, on every backend.

Three clients (each its own ``Lock`` and backend) drive one name with acquire, try_acquire,
extend (a random TTL), release, natural expiry, an operator's delete and a second client's
takeover; after every step the clients' beliefs and the server's answers are checked against a
model of who may hold the name:

- at most one lease believes it is held, except one whose lock an operator deleted (a fault the
  fence exists for, outside what a client can know);
- fences strictly increase across grants;
- a lease that believes it is held is the server's holder, and never believes it has more time
  left than the server says it granted;
- release or extend of a lease the server no longer holds raises ``LeaseLost`` and leaves the
  name as it was (the successor keeps its fence and its lease).

Outcomes the model cannot decide (a lease within ``MARGIN`` of its deadline: the request may reach
the server just before or just after it) are accepted either way, but the state that follows is
checked all the same. Every wait is bounded; the whole run takes a few seconds per backend.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

import fencelock
from fencelock import LeaseLost, LockTimeout
from servers import wait_until

SEEDS = tuple(int(x) for x in os.environ.get("FENCELOCK_MODEL_SEEDS", "11").split(","))
"""Replay or explore: FENCELOCK_MODEL_SEEDS=1,2,3 pytest tests/test_model.py"""
STEPS = 40
MARGIN = 0.5
"""A lease with more than this left is certainly still the server's when a request reaches it (a
loaded machine takes well under this for one round trip); one with less may or may not be."""
EPS = 0.005
"""Rounding of a server's remaining time (Redis answers whole milliseconds)."""


@dataclass
class Client:
    lock: fencelock.Lock
    lease: fencelock.Lease | None = None
    revoked: bool = False
    """The operator deleted this lease's lock: the client cannot know until it asks the server."""


@dataclass
class Model:
    fences: list[int] = field(default_factory=list)

    def granted(self, fence: int) -> None:
        assert not self.fences or fence > self.fences[-1], f"fence {fence} after {self.fences}"
        self.fences.append(fence)


def _sure(lease: fencelock.Lease | None) -> bool:
    """Certainly still held on the server when a request made now arrives."""
    return lease is not None and lease.held and lease.remaining() > MARGIN


def _check(clients: list[Client], model: Model, name: str) -> None:
    info = clients[0].lock.inspect()
    believers = [c for c in clients if c.lease is not None and c.lease.held]
    honest = [c for c in believers if not c.revoked]
    assert len(honest) <= 1, f"{len(honest)} leases believe they hold {name}: {[c.lease for c in honest]}"
    for c in honest:
        lease = c.lease
        assert lease is not None
        left = lease.remaining()  # after the server's answer: it can only be less than at its reading
        if info is None or info.fence != lease.fence:
            # The server says someone else (or nobody) holds: the lease must be at its deadline.
            assert left <= EPS or not lease.held, f"{lease} believed held; server says {info}"
        elif info.ttl_remaining is not None:
            assert left <= info.ttl_remaining + EPS, f"{lease} claims {left:.3f} s, server granted {info.ttl_remaining}"


def _grant(c: Client, lease: fencelock.Lease | None, model: Model) -> None:
    if lease is not None:
        model.granted(lease.fence)
        c.lease, c.revoked = lease, False


def _step(rng: random.Random, clients: list[Client], model: Model, server: Any, name: str) -> str:
    i = rng.randrange(len(clients))
    c = clients[i]
    others = [o for o in clients if o is not c]
    ttl = rng.choice((0.3, 0.6, 1.5, 3.0))
    op = rng.choice(("acquire", "try", "extend", "extend", "release", "expire", "delete", "takeover"))
    if op in ("acquire", "try", "takeover") and c.lease is not None and not c.lease.lost and not c.revoked:
        op = "release"  # one lease per client at a time (a Lock refuses to wait for itself)
    if op in ("extend", "release", "expire", "delete") and c.lease is None:
        op = "try"
    busy = any(_sure(o.lease) and not o.revoked for o in others)

    if op == "try":
        lease = c.lock.try_acquire()
        if busy:
            assert lease is None, f"granted {lease} while another lease is surely held"
        _grant(c, lease, model)
        if lease is not None:
            lease.extend(ttl=ttl)
    elif op in ("acquire", "takeover"):
        if op == "takeover":
            # the holders' leases run out (renew=False), then this client takes the name
            for o in others:
                if o.lease is not None and not o.revoked:
                    assert wait_until(lambda o=o: o.lease.lost, timeout=10), o.lease
            busy = False
        if busy:
            with pytest.raises(LockTimeout):
                c.lock.acquire(timeout=0.05)
        else:
            # free, or held by a lease at (or past) its deadline: the server frees it at the latest
            # then (ZooKeeper: its janitor, a moment later)
            longest = max((o.lease.remaining() for o in others if o.lease is not None), default=0.0)
            lease = c.lock.acquire(timeout=longest + 10)
            _grant(c, lease, model)
            # the previous holders (not revoked) are past their deadlines now: they must know it
            for o in others:
                if o.lease is not None and not o.revoked and o.lease is not lease:
                    assert not o.lease.held, f"{o.lease} still believes it holds after {lease} was granted"
    elif op == "extend":
        lease = c.lease
        assert lease is not None
        sure = _sure(lease) and not c.revoked
        try:
            lease.extend(ttl=ttl)
        except fencelock.NotHeld:
            assert lease.remaining() == 0.0
        except LeaseLost:
            assert not sure, f"extend of {lease} refused while surely held"
            assert lease.lost and not lease.held and lease.remaining() == 0.0
        else:
            assert not c.revoked, "extend of a lease whose lock was deleted succeeded"
            assert lease.remaining() <= ttl, f"{lease} believes more than the {ttl} s just granted"
    elif op == "release":
        lease = c.lease
        assert lease is not None
        sure = _sure(lease) and not c.revoked
        before = clients[0].lock.inspect()
        try:
            lease.release()
        except fencelock.NotHeld:
            pass
        except LeaseLost:
            assert not sure, f"release of {lease} refused while surely held"
            after = clients[0].lock.inspect()
            if before is not None and before.fence != lease.fence:
                # a successor's lease: untouched by our failed release
                assert after is not None and after.fence == before.fence, (before, after)
        else:
            assert not c.revoked, "release of a lease whose lock was deleted succeeded"
        c.lease = None
    elif op == "expire":
        lease = c.lease
        assert lease is not None
        assert wait_until(lambda: lease.lost or lease.remaining() == 0.0, timeout=10), lease
        assert not lease.held
    elif op == "delete":
        lease = c.lease
        assert lease is not None
        info = clients[0].lock.inspect()
        if info is not None and info.fence == lease.fence and lease.remaining() > MARGIN:
            server.delete_lock(name)
            c.revoked = True
        else:
            op = "delete (skipped)"
    _check(clients, model, name)
    return f"{i}:{op}"


@pytest.mark.parametrize("seed", SEEDS)
def test_random_sequences_keep_the_lock_contract(lock_server: Any, name: str, seed: int) -> None:
    rng = random.Random(seed)
    clients = [Client(fencelock.Lock(name, lock_server.url, ttl=2.0, renew=False)) for _ in range(3)]
    model = Model()
    steps: list[str] = []
    started = time.monotonic()
    try:
        for _ in range(STEPS):
            steps.append(_step(rng, clients, model, lock_server, name))
            assert time.monotonic() - started < 120, f"bounded run: {steps}"
    except AssertionError as err:
        raise AssertionError(f"seed {seed}, steps {steps}: {err}") from err
    finally:
        for c in clients:
            if c.lease is not None and not c.lease.lost:
                try:
                    c.lease.release()
                except (LeaseLost, fencelock.NotHeld):
                    pass
            c.lock.close()
    assert model.fences, "the run granted something"
    print(f"seed {seed}: {len(model.fences)} grants, steps {steps}")


# -- a user's own client ---------------------------------------------------------------------------


def _users_clients(server: Any) -> list[tuple[Any, bool, Any, Any]]:
    """(client, for asyncio, is it still usable (blocking call), how to close it) per client kind
    the registry says the backend takes."""
    if server.kind == "redis":
        import redis
        import redis.asyncio

        sync = server.server.client()
        aio_client = redis.asyncio.Redis(unix_socket_path=str(server.server.socket), password=server.PASSWORD)
        return [
            (sync, False, lambda: sync.ping(), sync.close),
            (aio_client, True, None, None),  # checked and closed on the loop
        ]
    if server.kind == "zookeeper":
        from kazoo.client import KazooClient

        client = KazooClient(hosts=server.hosts, timeout=5)
        client.start(timeout=10)

        def stop() -> None:
            client.stop()
            client.close()

        def usable() -> bool:
            return bool(client.connected and client.exists("/") is not None)

        return [(client, False, usable, lambda: None), (client, True, usable, stop)]  # one client, both APIs
    if server.kind == "postgres":
        import psycopg
        from psycopg_pool import ConnectionPool

        conn = psycopg.connect(server.url, autocommit=True)
        pool = ConnectionPool(server.url, min_size=1, max_size=2, open=True)

        def usable_pool() -> bool:
            with pool.connection() as c:
                return c.execute("SELECT 1").fetchone() == (1,)

        return [
            (conn, False, lambda: not conn.closed and conn.execute("SELECT 1").fetchone() == (1,), conn.close),
            (pool, False, lambda: not pool.closed and usable_pool(), pool.close),
        ]
    return []


@pytest.mark.backends("redis-embedded", "zookeeper", "postgres")
async def test_a_users_own_client_is_recognised_used_as_is_and_never_closed(lock_server: Any, name: str) -> None:
    import gc

    from fencelock import aio
    from fencelock.backends import REGISTRY

    spec = next(s for s in REGISTRY if s.name == lock_server.kind)
    for client, asyncio_api, usable, close in await asyncio.to_thread(_users_clients, lock_server):
        try:
            assert spec.recognizes(client, asyncio_api) is True, (spec.name, type(client))
            if asyncio_api:
                lock = aio.Lock(name, client, ttl=5, renew=False)
                assert lock.backend.name == spec.name
                async with lock as lease:
                    assert lease.fence > 0
                await lock.aclose()
                del lock
                gc.collect()
                if usable is None:
                    assert await client.ping(), "fencelock never closes an asyncio client of yours"
                else:
                    assert await asyncio.to_thread(usable), f"fencelock closed your {type(client).__name__}"
            else:
                lock2 = fencelock.Lock(name, client, ttl=5, renew=False)
                assert lock2.backend.name == spec.name
                with lock2 as lease2:
                    assert lease2.fence > 0
                await asyncio.to_thread(lock2.close)
                del lock2
                gc.collect()
                assert await asyncio.to_thread(usable), f"fencelock closed your {type(client).__name__}"
        finally:
            if close is not None:
                await asyncio.to_thread(close)
            elif usable is None:
                await client.aclose()


# -- the same, one level down: the backend's primitives, with natural expiry ----------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_random_primitive_sequences_keep_their_promises(lock_server: Any, name: str, seed: int) -> None:
    """Primitives straight on the backend (no handle), two tokens, short and long leases, expiry by
    the server's own clock: a grant only of a free name, fences rising, a token asking again after
    its lease ran out gets a new fence, extend and release after expiry answer False and change
    nothing, inspect never reports more time than was granted."""
    from fencelock._core.params import new_token
    from fencelock.backends import open_backend

    backend, _ = open_backend(lock_server.url)
    rng = random.Random(seed)
    tokens = [new_token(), new_token()]
    held: dict[str, tuple[int, float, float]] = {}  # token -> (fence, sent, ttl): granted and not released
    fences: list[int] = []
    steps: list[str] = []
    try:
        for _ in range(30):
            tok = rng.choice(tokens)
            other = tokens[1 - tokens.index(tok)]
            ttl = rng.choice((0.25, 0.5, 3.0))
            op = rng.choice(("try", "try", "extend", "release", "expire", "wait"))
            steps.append(f"{tokens.index(tok)}:{op}:{ttl}")
            now = time.monotonic()
            if op == "try":
                sent = time.monotonic()
                got = backend.try_acquire(name, tok, int(ttl * 1000), "model", False)
                if other in held and held[other][1] + held[other][2] - MARGIN > time.monotonic():
                    assert got.fence is None, f"granted beside a live lease: {steps}"
                if got.fence is not None:
                    if tok in held and held[tok][1] + held[tok][2] - MARGIN > sent:
                        assert got.fence == held[tok][0], f"a repeated request minted a new fence: {steps}"
                    elif got.fence != held.get(tok, (None,))[0]:
                        assert not fences or got.fence > fences[-1], f"fence {got.fence} after {fences}: {steps}"
                        fences.append(got.fence)
                    held.pop(other, None)  # ours now: the other's lease ended on the server
                    held[tok] = (got.fence, sent, ttl)
            elif op == "extend" and tok in held:
                fence, sent0, ttl0 = held[tok]
                sure_live = sent0 + ttl0 - MARGIN > now
                sent = time.monotonic()
                ok = backend.extend(name, tok, int(ttl * 1000))
                if sure_live:
                    assert ok, f"extend of a live lease refused: {steps}"
                if ok:
                    held[tok] = (fence, sent, ttl)
                else:
                    held.pop(tok)
                    info = backend.inspect(name)
                    assert info is None or info.fence != fence, f"a refused extend left the lease: {steps}"
            elif op == "release" and tok in held:
                fence, sent0, ttl0 = held.pop(tok)
                ok = backend.release(name, tok)
                if sent0 + ttl0 - MARGIN > now:
                    assert ok, f"release of a live lease refused: {steps}"
                info = backend.inspect(name)
                assert info is None or info.fence != fence, f"released, still reported held: {steps}"
            elif op == "expire" and tok in held:
                fence, sent0, ttl0 = held.pop(tok)
                # the server ends it on its own (ZooKeeper: the holder's janitor, a moment later)
                assert wait_until(lambda: (backend.inspect(name) or None) is None, timeout=ttl0 + 10), steps
                assert backend.extend(name, tok, 60_000) is False, f"extend after expiry: {steps}"
                assert backend.inspect(name) is None, f"an extend after expiry brought the lease back: {steps}"
                assert backend.release(name, tok) is False, f"release after expiry: {steps}"
            elif op == "wait":
                started = time.monotonic()
                got_fence = backend.wait(name, tok, 0.1)
                # never queued: nothing can be handed over (a backend may answer the fence the
                # token holds already: its lease runs from the try_acquire that granted it)
                assert got_fence is None or got_fence == held.get(tok, (None,))[0], f"handed over unasked: {steps}"
                assert time.monotonic() - started <= 0.1 + lock_server.request_timeout + 1.5, steps
            info = backend.inspect(name)
            if info is not None and info.ttl_remaining is not None:
                live = [v for v in held.values() if v[0] == info.fence]
                if live:
                    assert info.ttl_remaining <= live[0][2] + EPS, f"{info} reports more than {live[0][2]} s: {steps}"
        assert fences, steps
    finally:
        for tok in tokens:
            backend.abandon(name, tok)
        backend.close()


@pytest.mark.parametrize("seed", SEEDS)
async def test_random_asyncio_sequences_keep_the_lock_contract(lock_server: Any, name: str, seed: int) -> None:
    """The asyncio face (its own clients, and for blocking-only libraries the offloading adapter
    with its waits on the loop): one believer, fences rising, LeaseLost after expiry."""
    from fencelock import aio

    rng = random.Random(seed)
    locks = [aio.Lock(name, lock_server.url, ttl=2.0, renew=False) for _ in range(3)]
    leases: list[Any] = [None, None, None]
    fences: list[int] = []
    steps: list[str] = []
    try:
        for _ in range(STEPS):
            i = rng.randrange(3)
            lease = leases[i]
            op = rng.choice(("acquire", "extend", "release", "expire")) if lease is not None else "acquire"
            steps.append(f"{i}:{op}")
            if op == "acquire":
                if lease is not None and not lease.lost:
                    continue
                others = [x for j, x in enumerate(leases) if j != i and x is not None and x.held]
                left = max((x.remaining() for x in others), default=0.0)
                if left > MARGIN:
                    with pytest.raises(LockTimeout):
                        await locks[i].acquire(timeout=0.05)
                    continue
                got = await locks[i].acquire(timeout=left + 10)
                assert not fences or got.fence > fences[-1], f"fence {got.fence} after {fences}: {steps}"
                fences.append(got.fence)
                leases[i] = got
                await got.extend(ttl=rng.choice((0.3, 0.6, 1.5)))
            elif op == "extend":
                sure = lease.held and lease.remaining() > MARGIN
                try:
                    await lease.extend(ttl=rng.choice((0.3, 0.6, 1.5)))
                except LeaseLost:
                    assert not sure, f"extend of a live lease refused: {steps}"
                    assert not lease.held
            elif op == "release":
                sure = lease.held and lease.remaining() > MARGIN
                try:
                    await lease.release()
                except LeaseLost:
                    assert not sure, f"release of a live lease refused: {steps}"
                leases[i] = None
            else:
                await asyncio.to_thread(wait_until, lambda lease=lease: lease.lost, 10)
                assert lease.lost and not lease.held
            believers = [x for x in leases if x is not None and x.held]
            assert len(believers) <= 1, f"{believers}: {steps}"
        assert fences, steps
    finally:
        for x in leases:
            if x is not None and x.held:
                await x.release()
        for lock in locks:
            await lock.aclose()
