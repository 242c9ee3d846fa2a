"""ZooKeeper-specific behaviour, on a real ZooKeeper (Debian's jar; see srv_zookeeper.py).

The contract suite (test_contract.py) covers what every backend shares; here: sessions (expiry,
connection loss and recovery through a TCP proxy we can cut), fences across parent re-creation,
FIFO queueing, counted leases on ZooKeeper's nodes (names, who watches what, the grant mark,
racing limits; the generic counted tests are in test_counted_primitives.py), lock-name encoding,
a user's own KazooClient, asyncio, and errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kazoo.client import KazooClient

import fencelock
from fencelock import aio
from fencelock._core.params import new_token
from fencelock.backends.base import RW_LIMIT
from fencelock.backends.zookeeper import ZooKeeperBackend, encode_name, lock_parent, parse_zk_url, token_tag
from fencelock_chaos.servers import ZooKeeper
from servers import free_port, wait_until
from srv_zookeeper import ZK_ROOT, ZooKeeperLockServer

CTX = mp.get_context("spawn")


def zkb(lock: fencelock.Lock) -> ZooKeeperBackend:
    """The lock's backend, typed: the ZooKeeper one."""
    backend = lock.backend
    assert isinstance(backend, ZooKeeperBackend)
    return backend


@pytest.fixture
def zk(zookeeper_server: ZooKeeperLockServer) -> ZooKeeperLockServer:
    return zookeeper_server


# -- a TCP proxy we can cut --------------------------------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a ZooKeeper; ``cut()`` drops every connection and refuses new
    ones (accepts and closes them) until ``restore()``: a network partition between one client
    and the server, while the server and other clients carry on."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = int(self.listener.getsockname()[1])
        self._cut = threading.Event()
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._mutex = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        end = time.monotonic() + 300  # bounded even if a test forgets to close us
        while not self._stop.is_set() and time.monotonic() < end:
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            if self._cut.is_set():
                conn.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                conn.close()
                continue
            with self._mutex:
                self._socks += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(None)
        with contextlib.suppress(OSError):
            while True:  # ends when either side closes (cut() closes both)
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def cut(self) -> None:
        self._cut.set()
        with self._mutex:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self._thread.join(5)
        self.listener.close()


@pytest.fixture
def proxy(zk: ZooKeeperLockServer) -> Iterator[TcpProxy]:
    p = TcpProxy(zk.server.port)
    try:
        yield p
    finally:
        p.close()


def proxied_url(proxy: TcpProxy, session_timeout: float) -> str:
    return f"zk://127.0.0.1:{proxy.port}/?session_timeout={session_timeout:g}&timeout=1"


def record_events(lock: fencelock.Lock, lease: fencelock.Lease) -> list[str]:
    """Subscribe to the backend's own session events for ``lease`` (beside the lease's)."""
    events: list[str] = []
    zkb(lock).watch_loss(lease.name, lease.token, lambda state, reason: events.append(state))
    return events


# -- sessions ----------------------------------------------------------------------------------


def test_session_expiry_while_holding_frees_the_lock_and_tells_the_holder(zk: ZooKeeperLockServer, name: str) -> None:
    lost: list[str] = []
    holder_lock = fencelock.Lock(
        name, zk.url_with(session_timeout=2), on_lost=lambda le: lost.append(le.lost_reason or "")
    )
    lease = holder_lock.acquire(timeout=10)
    contender = fencelock.Lock(name, zk.url, ttl=5, renew=False)
    assert contender.try_acquire() is None
    # Expire the session the way kazoo's own test harness does: a second client takes over the
    # session (same id and password) and closes it; ZooKeeper deletes its ephemeral nodes.
    session_id, password = zkb(holder_lock).client.client_id
    thief = KazooClient(hosts=zk.hosts, client_id=(session_id, password), timeout=2)
    thief.start(timeout=10)
    thief.stop()
    thief.close()
    new = contender.acquire(timeout=10)  # free at once: the session's node went with it
    assert new.fence > lease.fence
    assert lease.lost_event.wait(10), "the old holder must be told"
    assert lost and "session" in lost[0]
    with pytest.raises(fencelock.LeaseLost):
        lease.ensure_held()
    with pytest.raises(fencelock.LeaseLost):
        lease.release()
    held = contender.inspect()
    assert held is not None and held.fence == new.fence, "the old holder's release must not touch the new lock"
    new.release()
    holder_lock.close()
    contender.close()


def test_short_connection_loss_puts_the_lease_in_doubt_then_back(
    zk: ZooKeeperLockServer, proxy: TcpProxy, name: str
) -> None:
    lock = fencelock.Lock(name, proxied_url(proxy, session_timeout=6), ttl=6)
    lease = lock.acquire(timeout=10)
    events = record_events(lock, lease)
    session_before = zkb(lock).client.client_id[0]
    proxy.cut()
    try:
        assert wait_until(lambda: lease.in_doubt is not None, 10), "SUSPENDED must put the lease in doubt"
        assert not lease.held
        with pytest.raises(fencelock.LeaseLost, match="in doubt"):
            lease.ensure_held()
        assert zk.children(name), "the server still has the node: the session is alive"
    finally:
        proxy.restore()
    # reconnected within the session timeout: same session, same node, the lease holds again
    assert wait_until(lambda: lease.in_doubt is None and lease.held, 10)
    assert zkb(lock).client.client_id[0] == session_before
    assert events[:1] == ["doubt"] and "held" in events and "lost" not in events
    assert not lease.lost
    lease.extend()
    info = lock.inspect()
    assert info is not None and info.fence == lease.fence
    lease.release()
    lock.close()


def test_connection_loss_past_the_session_timeout_loses_the_lease(
    zk: ZooKeeperLockServer, proxy: TcpProxy, name: str
) -> None:
    lock = fencelock.Lock(name, proxied_url(proxy, session_timeout=1.2))
    lease = lock.acquire(timeout=10)
    events = record_events(lock, lease)
    contender = fencelock.Lock(name, zk.url, ttl=5, renew=False)
    proxy.cut()
    try:
        assert wait_until(lambda: "doubt" in events, 10)
        # the server expires the unreachable session and deletes its node: the contender gets in
        new = contender.acquire(timeout=20)
        assert new.fence > lease.fence
    finally:
        proxy.restore()
    # on reconnect the server says the session expired: the backend reports the loss
    assert wait_until(lambda: "lost" in events, 15), events
    assert events.index("doubt") < events.index("lost") and "held" not in events
    assert lease.lost
    with pytest.raises(fencelock.LeaseLost):
        lease.release()
    info = contender.inspect()
    assert info is not None and info.fence == new.fence
    new.release()
    lock.close()
    contender.close()


def test_a_waiter_cut_off_leaves_no_node_behind_once_it_reconnects(
    zk: ZooKeeperLockServer, proxy: TcpProxy, name: str
) -> None:
    holder_lock = fencelock.Lock(name, zk.url, ttl=30)
    holder = holder_lock.acquire(timeout=10)
    waiter_lock = fencelock.Lock(name, proxied_url(proxy, session_timeout=8))
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            waiter_lock.acquire(timeout=30)
        except BaseException as err:
            errors.append(err)

    t = threading.Thread(target=wait)
    t.start()
    assert wait_until(lambda: len(zk.children(name)) == 2, 10), "the waiter is queued"
    session = zkb(waiter_lock).client.client_id[0]
    proxy.cut()
    try:
        t.join(30)
        # it could neither wait nor delete its node (abandon failed): its session still lives...
        assert errors and isinstance(errors[0], fencelock.BackendUnavailable)
        assert len(zk.children(name)) == 2
    finally:
        proxy.restore()
    # ...and once it is back, the janitor deletes the node it left in the queue
    assert wait_until(lambda: len(zk.children(name)) == 1, 15)
    cid = zkb(waiter_lock).client.client_id
    assert cid is not None and cid[0] == session, "same session: ZooKeeper did not delete the node for us"
    holder.release()
    third = fencelock.Lock(name, zk.url, ttl=5)
    lease = third.try_acquire()
    assert lease is not None, "nobody may be stuck in front of us"
    lease.release()
    holder_lock.close()
    waiter_lock.close()
    third.close()


def _paused_holder(url: str, name: str, ready: Any, go: Any, out: Any) -> None:
    lock = fencelock.Lock(name, url)
    lease = lock.acquire(timeout=10)
    ready.put(lease.fence)
    go.wait(60)  # we are SIGSTOPped somewhere before or in here
    try:
        lease.ensure_held()  # what a holder does right before each write
        out.put(("wrote", lease.fence))
    except fencelock.LeaseLost as err:
        out.put(("refused", str(err)))


def test_holder_paused_past_its_session_learns_it_lost_before_writing(zk: ZooKeeperLockServer, name: str) -> None:
    ready, go, out = CTX.Queue(), CTX.Event(), CTX.Queue()
    url = zk.url_with(session_timeout=1)
    proc = CTX.Process(target=_paused_holder, args=(url, name, ready, go, out))
    proc.start()
    assert proc.pid is not None
    try:
        old_fence = ready.get(timeout=60)
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            # the session expires while the holder sleeps; someone else takes the lock
            new = fencelock.Lock(name, zk.url, ttl=5, renew=False).acquire(timeout=20)
            assert new.fence > old_fence
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        go.set()
        verdict, detail = out.get(timeout=30)
        assert verdict == "refused", "the paused holder must not believe it still holds the lock"
        assert "TTL" in detail or "session" in detail
        new.release()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def test_max_lease_is_the_session_timeout(zk: ZooKeeperLockServer, name: str) -> None:
    lock = fencelock.Lock(name, zk.url_with(session_timeout=2), ttl=60)
    assert zkb(lock).max_lease == 2
    assert lock.ttl == 2, "a lease cannot be vouched for past its session"
    lock.close()


def test_a_grant_racing_the_janitor_deleting_the_expired_node_is_refused(zk: ZooKeeperLockServer, name: str) -> None:
    """Found by the stress test (seed 1, election on ZooKeeper, a server pause): a grant that came
    back after its TTL is re-asked by the lock (``try_acquire`` with the same token) while the
    janitor is deleting that token's expired node. The listing still shows the node, so it was
    granted again, and the holder believed a fresh lease on a node that was gone a moment later:
    two leaders. Forced interleaving: the janitor is held between taking the node and deleting it."""
    b = ZooKeeperBackend.from_url(zk.url)
    other = ZooKeeperBackend.from_url(zk.url_with(timeout=3))  # another session: another process
    core = b._core
    taken, go = threading.Event(), threading.Event()
    delete = core.delete_node

    def held_janitor(node: Any) -> bool:
        if threading.current_thread().name == "fencelock-zk-janitor":
            taken.set()  # the node is marked for deletion (reaping)...
            go.wait(30)  # ...and its delete is on its way
        return delete(node)

    core.delete_node = held_janitor  # type: ignore[method-assign]
    try:
        token = new_token()
        assert b.try_acquire(name, token, 200, "late", True).fence is not None
        assert taken.wait(10), "the janitor takes the node once its 200 ms are over"
        again = b.try_acquire(name, token, 30_000, "late", True)  # the lock re-asking after a late grant
        go.set()
        assert wait_until(lambda: not zk.children(name), 10), "the janitor deleted the node"
        rival = new_token()
        rival_fence = other.try_acquire(name, rival, 30_000, "rival", False).fence
        assert rival_fence is not None, "the name is free"
        assert again.fence is None, "a node the janitor is deleting was granted: its holder and the rival both hold"
        assert b.extend(name, token, 30_000) is False
        assert other.release(name, rival) is True
        for _ in range(100):  # and the token queues again with a new node (bounded: 100 x 50 ms)
            if (fence := b.try_acquire(name, token, 30_000, "late", True).fence) is not None:
                break
            b.wait(name, token, 0.05)
        assert fence is not None and fence > rival_fence, "a new node, behind the rival's"
        assert b.release(name, token) is True
    finally:
        go.set()
        b.close()
        other.close()


def test_unrenewed_lease_frees_the_lock_while_the_session_lives(zk: ZooKeeperLockServer, name: str) -> None:
    lock = fencelock.Lock(name, zk.url, ttl=0.3, renew=False)
    lease = lock.acquire(timeout=5)
    assert wait_until(lambda: not zk.children(name), 10), "the janitor deletes the node of an ended lease"
    assert lease.lost
    assert zkb(lock).client.connected, "the session itself is fine"
    lock.close()


# -- fences ------------------------------------------------------------------------------------


def test_fences_keep_growing_when_the_parent_is_deleted_and_recreated(zk: ZooKeeperLockServer, name: str) -> None:
    lock = fencelock.Lock(name, zk.url, ttl=5, renew=False)
    fences = []
    for _ in range(3):
        with lock as lease:
            fences.append(lease.fence)
    parent = zk.lock_path(name)
    assert zk.admin.get_children(parent) == []
    zk.admin.delete(parent)  # an operator cleans up: the child counter starts again at 0
    with lock as lease:
        (child,) = zk.children(name)
        assert child.endswith("-0000000000"), "the sequence suffix restarted..."
        assert lease.fence > max(fences), "...the czxid fence did not"
        _, stat = zk.admin.get(f"{parent}/{child}")
        assert lease.fence == stat.czxid
    assert fences == sorted(fences) and len(set(fences)) == 3
    lock.close()


def test_node_holds_the_label_never_the_token(zk: ZooKeeperLockServer, name: str) -> None:
    lock = fencelock.Lock(name, zk.url, ttl=5, label="worker-7 on host-a")
    with lock as lease:
        (child,) = zk.children(name)
        data, _ = zk.admin.get(f"{zk.lock_path(name)}/{child}")
        assert data == b"worker-7 on host-a"
        assert lease.token not in child and lease.token.encode() not in data
        assert token_tag(lease.token) in child
        info = lock.inspect()
        assert info is not None and info.holder == "worker-7 on host-a" and info.waiters == 0
    lock.close()


def test_operator_force_release_hands_the_lock_to_the_next_waiter(zk: ZooKeeperLockServer, name: str) -> None:
    lost: list[str] = []
    holder_lock = fencelock.Lock(name, zk.url, ttl=0.9, label="stuck-worker", on_lost=lambda le: lost.append("x"))
    holder = holder_lock.acquire(timeout=10)
    waiter = fencelock.Lock(name, zk.url, ttl=5)
    got: list[fencelock.Lease] = []
    t = threading.Thread(target=lambda: got.append(waiter.acquire(timeout=30)))
    t.start()
    assert wait_until(lambda: len(zk.children(name)) == 2, 10)
    assert ZooKeeperBackend.from_url(zk.url).force_release(name) == "stuck-worker"
    t.join(30)
    assert got and got[0].fence > holder.fence, "the queue moves on at once"
    assert holder.lost_event.wait(10) and lost, "the old holder learns at its next renewal"
    got[0].release()
    assert ZooKeeperBackend.from_url(zk.url).force_release(name) is None, "free: nothing removed"
    holder_lock.close()
    waiter.close()


# -- waiting -----------------------------------------------------------------------------------


def _queued_worker(url: str, name: str, index: int, queued: Any, out: Any) -> None:
    lock = fencelock.Lock(name, url, ttl=30)
    queued.put(index)  # about to enqueue; the parent waits until our node shows up
    lease = lock.acquire(timeout=60)
    out.put((index, lease.fence))
    time.sleep(0.01)
    lease.release()


def test_waiters_in_other_processes_are_served_in_arrival_order(zk: ZooKeeperLockServer, name: str) -> None:
    holder_lock = fencelock.Lock(name, zk.url, ttl=30)
    holder = holder_lock.acquire(timeout=10)
    queued, out = CTX.Queue(), CTX.Queue()
    procs = []
    try:
        for i in range(3):
            p = CTX.Process(target=_queued_worker, args=(zk.url, name, i, queued, out))
            p.start()
            procs.append(p)
            assert queued.get(timeout=60) == i
            # the next one starts only once this one's node is in the queue
            assert wait_until(lambda i=i: len(zk.children(name)) == i + 2, 30)
        holder.release()
        got = [out.get(timeout=60) for _ in procs]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)
    assert [i for i, _ in got] == [0, 1, 2]
    fences = [f for _, f in got]
    assert fences == sorted(fences) and fences[0] > holder.fence
    holder_lock.close()


def test_each_waiter_watches_only_its_predecessor(zk: ZooKeeperLockServer, name: str) -> None:
    # Locks from one URL in one process share a KazooClient, so its watch table shows every
    # waiter's watch: one per node, on the node just before it (a release wakes one waiter).
    holder_lock = fencelock.Lock(name, zk.url, ttl=30)
    holder = holder_lock.acquire(timeout=10)
    client = zkb(holder_lock).client
    got: list[int] = []

    def take(lock: fencelock.Lock, i: int) -> None:
        lease = lock.acquire(timeout=30)
        got.append(i)
        lease.release()

    threads = []
    for i in range(3):
        t = threading.Thread(target=take, args=(fencelock.Lock(name, zk.url, ttl=30), i))
        t.start()
        threads.append(t)
        assert wait_until(lambda i=i: len(zk.children(name)) == i + 2, 10)
    parent = zk.lock_path(name)
    queue = [f"{parent}/{c}" for c in zk.children(name)]

    def watched() -> dict[str, int]:
        return {p: len(w) for p, w in list(client._data_watchers.items()) if p.startswith(parent + "/") and w}

    assert wait_until(lambda: watched() == {p: 1 for p in queue[:-1]}, 10), watched()
    holder.release()
    for t in threads:
        t.join(30)
    assert got == [0, 1, 2]
    holder_lock.close()


def test_a_waiter_that_gives_up_leaves_the_queue(zk: ZooKeeperLockServer, name: str) -> None:
    holder_lock = fencelock.Lock(name, zk.url, ttl=30)
    holder = holder_lock.acquire(timeout=10)
    waiter = fencelock.Lock(name, zk.url, ttl=30)
    with pytest.raises(fencelock.LockTimeout):
        waiter.acquire(timeout=0.5)
    assert len(zk.children(name)) == 1, "only the holder's node is left"
    holder.release()
    lease = waiter.acquire(timeout=10)
    lease.release()
    holder_lock.close()
    waiter.close()


# -- counted leases (semaphores, read-write locks) --------------------------------------------------

RW = RW_LIMIT
TTL_MS = 30_000


def _grant(b: ZooKeeperBackend, name: str, limit: int, weight: int, label: str) -> tuple[str, int]:
    token = new_token()
    attempt = b.try_acquire(name, token, TTL_MS, label, False, limit, weight)
    assert attempt.fence is not None, label
    return token, attempt.fence


def _queue(b: ZooKeeperBackend, name: str, limit: int, weight: int, label: str) -> str:
    token = new_token()
    assert b.try_acquire(name, token, TTL_MS, label, True, limit, weight).fence is None, label
    return token


def _child_of(zk: ZooKeeperLockServer, name: str, token: str) -> str:
    (child,) = [c for c in zk.children(name) if token_tag(token) in c]
    return f"{zk.lock_path(name)}/{child}"


def _waiting(b: ZooKeeperBackend, name: str, tokens: list[str], timeout: float) -> tuple[dict[str, Any], list[Any]]:
    """Each token's ``wait`` in a thread of its own; the results, by token, once they return."""
    got: dict[str, Any] = {}

    def run(token: str) -> None:
        got[token] = b.wait(name, token, timeout)

    threads = [threading.Thread(target=run, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    return got, threads


def test_counted_nodes_carry_limit_and_weight_and_a_mutex_keeps_its_name_form(
    zk: ZooKeeperLockServer, name: str
) -> None:
    b = ZooKeeperBackend.from_url(zk.url)
    try:
        mutex, _ = _grant(b, name + ":m", 1, 1, "m")
        sem, _ = _grant(b, name + ":s", 5, 1, "s")
        writer, _ = _grant(b, name + ":w", RW, RW, "w")
        # the form every earlier fencelock version reads (and so refuses to share a name with)
        assert re.fullmatch(rf"c-{token_tag(mutex)}-\d{{10}}", zk.children(name + ":m")[0])
        assert re.fullmatch(rf"c-{token_tag(sem)}-L5W1-\d{{10}}", zk.children(name + ":s")[0])
        assert re.fullmatch(rf"c-{token_tag(writer)}-L{RW}W{RW}-\d{{10}}", zk.children(name + ":w")[0])
    finally:
        b.close()


def test_each_counted_waiter_watches_only_what_it_waits_for(zk: ZooKeeperLockServer, name: str) -> None:
    # Backends from one URL share one KazooClient: its watch tables show every waiter's watch.
    b = ZooKeeperBackend.from_url(zk.url)
    client = b.client
    rw, sem = name + ":rw", name + ":sem"
    try:
        w0, _ = _grant(b, rw, RW, RW, "w0")
        r1, r2 = _queue(b, rw, RW, 1, "r1"), _queue(b, rw, RW, 1, "r2")
        w3 = _queue(b, rw, RW, RW, "w3")
        r4 = _queue(b, rw, RW, 1, "r4")
        h0, _ = _grant(b, sem, 2, 1, "h0")
        h1, _ = _grant(b, sem, 2, 1, "h1")
        s2, s3, s4 = (_queue(b, sem, 2, 1, f"s{i}") for i in (2, 3, 4))
        waiting = [r1, r2, w3, r4]
        got_rw, threads = _waiting(b, rw, waiting, 30)
        got_sem, more = _waiting(b, sem, [s2, s3, s4], 30)
        threads += more

        def watched(name: str) -> dict[str, int]:
            parent = zk.lock_path(name)
            data = {
                p[len(parent) + 1 :]: len(w)
                for p, w in list(client._data_watchers.items())
                if p.startswith(parent + "/") and w
            }
            children = len(client._child_watchers.get(parent, ()))
            return {**data, **({"children": children} if children else {})}

        def node(name: str, token: str) -> str:
            return _child_of(zk, name, token).rsplit("/", 1)[1]

        # readers behind a writer watch that writer; a writer its predecessor; a reader behind it that writer
        expected_rw = {node(rw, w0): 2, node(rw, r2): 1, node(rw, w3): 1}
        # a semaphore's first waiter watches the children; each later one the node just ahead of it
        expected_sem = {"children": 1, node(sem, s2): 1, node(sem, s3): 1}
        assert wait_until(lambda: watched(rw) == expected_rw and watched(sem) == expected_sem, 10), (
            watched(rw),
            watched(sem),
        )
        assert b.release(rw, w0) is True
        assert wait_until(lambda: r1 in got_rw and r2 in got_rw, 10)
        assert got_rw[r1] is not None and got_rw[r2] is not None, "both readers let in by the writer's release"
        assert w3 not in got_rw and r4 not in got_rw, "the writer waits for the readers, the reader behind it too"
        for r in (r1, r2):
            assert b.release(rw, r) is True
        assert wait_until(lambda: w3 in got_rw, 10) and got_rw[w3] is not None, "the readers' release lets it in"
        assert r4 not in got_rw
        assert b.release(rw, w3) is True
        assert wait_until(lambda: r4 in got_rw, 10) and got_rw[r4] is not None
        assert b.release(rw, r4) is True
        assert b.release(sem, h0) is True
        assert wait_until(lambda: s2 in got_sem, 10) and got_sem[s2] is not None
        assert s3 not in got_sem
        assert b.release(sem, h1) is True
        assert wait_until(lambda: s3 in got_sem, 10) and got_sem[s3] is not None
        assert b.release(sem, s2) is True
        assert wait_until(lambda: s4 in got_sem, 10) and got_sem[s4] is not None
        for t in (s3, s4):
            assert b.release(sem, t) is True
        for t in threads:
            t.join(30)
    finally:
        b.close()


def test_a_semaphore_waiter_behind_another_is_woken_by_its_grant(zk: ZooKeeperLockServer, name: str) -> None:
    # Two holders leave at once: the first waiter learns from its children watch; the second waits
    # for the first one's grant, which the first marks by rewriting its data (version 0 -> 1).
    b = ZooKeeperBackend.from_url(zk.url)
    try:
        holders = [_grant(b, name, 2, 1, f"h{i}")[0] for i in range(2)]
        s2, s3 = _queue(b, name, 2, 1, "s2"), _queue(b, name, 2, 1, "s3")
        got, threads = _waiting(b, name, [s2, s3], 20)
        assert wait_until(lambda: len(b.client._child_watchers.get(zk.lock_path(name), ())) == 1, 10)
        for h in holders:
            assert b.release(name, h) is True
        for t in threads:
            t.join(30)
        assert got[s2] is not None, "the first waiter is let in"
        assert got[s3] is not None, "the second waiter is woken by the first one's grant, not by its timeout"
        data, stat = zk.admin.get(_child_of(zk, name, s2))
        assert (data, stat.version) == (b"s2", 1), "the grant mark keeps the label"
        _, stat = zk.admin.get(_child_of(zk, name, s3))
        assert stat.version == 0, "nobody waits behind the last one: no mark"
        for t in (s2, s3):
            assert b.release(name, t) is True
    finally:
        b.close()


def test_a_request_refused_for_its_limit_leaves_no_node(zk: ZooKeeperLockServer, name: str) -> None:
    b = ZooKeeperBackend.from_url(zk.url)
    try:
        token, _ = _grant(b, name, 3, 1, "sem")
        for limit, weight in ((1, 1), (4, 1), (RW, RW)):
            with pytest.raises(fencelock.LimitMismatch):
                b.try_acquire(name, new_token(), TTL_MS, "wrong", True, limit, weight)
        assert zk.children(name) == [_child_of(zk, name, token).rsplit("/", 1)[1]]
        assert b.release(name, token) is True
    finally:
        b.close()


def test_concurrent_requests_with_different_limits_never_hold_together(zk: ZooKeeperLockServer, name: str) -> None:
    # Each request checks, after its node exists, every live node ahead of it: of two requests that
    # both passed, the later one saw the earlier, so no two holders ever disagree on the limit.
    backends = [ZooKeeperBackend.from_url(zk.url_with(timeout=5 + i / 10)) for i in range(4)]  # 4 sessions
    try:
        for round_ in range(8):
            lock = f"{name}:{round_}"
            go = threading.Barrier(len(backends))
            held: list[tuple[int, str, ZooKeeperBackend]] = []

            def ask(b: ZooKeeperBackend, limit: int, lock: str, go: threading.Barrier, held: list[Any]) -> None:
                token = new_token()
                go.wait(10)
                with contextlib.suppress(fencelock.LimitMismatch):
                    if b.try_acquire(lock, token, TTL_MS, "x", False, limit, 1).fence is not None:
                        held.append((limit, token, b))

            threads = [
                threading.Thread(target=ask, args=(b, 1 + i % 2 * 2, lock, go, held)) for i, b in enumerate(backends)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert held, "somebody gets the idle name"
            assert len({limit for limit, _, _ in held}) == 1, held
            for _, token, b in held:
                assert b.release(lock, token) is True
            assert not zk.children(lock), "refused requests leave no node"
    finally:
        for b in backends:
            b.close()


def test_counted_fences_are_the_holders_czxids(zk: ZooKeeperLockServer, name: str) -> None:
    b = ZooKeeperBackend.from_url(zk.url)
    try:
        grants = [_grant(b, name, 3, 1, f"p{i}") for i in range(3)]
        info = b.inspect(name)
        assert info is not None
        for (token, fence), holder in zip(grants, info.holders, strict=True):
            _, stat = zk.admin.get(_child_of(zk, name, token))
            assert fence == holder.fence == stat.czxid
        for token, _ in grants:
            assert b.release(name, token) is True
    finally:
        b.close()


def test_force_release_of_a_semaphore_removes_every_holder(zk: ZooKeeperLockServer, name: str) -> None:
    b = ZooKeeperBackend.from_url(zk.url)
    try:
        holders = [_grant(b, name, 2, 1, f"h{i}")[0] for i in range(2)]
        waiter = _queue(b, name, 2, 1, "waiter")
        assert b.force_release(name) == "h0, h1"
        assert b.try_acquire(name, waiter, TTL_MS, "waiter", True, 2, 1).fence is not None
        for h in holders:
            assert b.extend(name, h, TTL_MS) is False, "a holder learns at its next renewal"
        assert b.release(name, waiter) is True
        assert b.force_release(name) is None
    finally:
        b.close()


def test_the_janitor_ends_an_unrenewed_counted_lease(zk: ZooKeeperLockServer, name: str) -> None:
    b = ZooKeeperBackend.from_url(zk.url)
    try:
        token = new_token()
        assert b.try_acquire(name, token, 300, "short", False, RW, RW).fence is not None
        reader = _queue(b, name, RW, 1, "reader")
        got, threads = _waiting(b, name, [reader], 10)
        threads[0].join(15)
        assert got[reader] is not None, "the writer's node went at the end of its lease: the reader is in"
        assert b.extend(name, token, TTL_MS) is False
        assert b.release(name, reader) is True
    finally:
        b.close()


# -- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "suffix",
    ["a/b", "a%2Fb", "with space", "new\nline", "caf\u00e9 \u6587\u4ef6", "..", ".", "x" * 300, "/"],
)
def test_any_name_stays_in_its_own_parent(zk: ZooKeeperLockServer, name: str, suffix: str) -> None:
    full = name + suffix
    parent = lock_parent(ZK_ROOT, full)
    assert parent.count("/") == ZK_ROOT.count("/") + 1, "one path segment per name"
    lock = fencelock.Lock(full, zk.url, ttl=5)
    neighbour = fencelock.Lock(name, zk.url, ttl=5)  # the prefix of our name: another lock
    with lock as lease, neighbour as other:
        assert lease.fence != other.fence
        assert zk.admin.get_children(parent)
    lock.close()
    neighbour.close()


def test_name_encoding_is_injective() -> None:
    names = ["a/b", "a%2Fb", "a%252Fb", "a b", "a+b", "", ".", "..", "L", "H" + "0" * 64, "x" * 300, "x" * 301]
    encoded = [encode_name(n) for n in names]
    assert len(set(encoded)) == len(names)
    assert all("/" not in e and e not in (".", "..") for e in encoded)


# -- a user's own client -----------------------------------------------------------------------


def test_a_users_own_kazoo_client_is_used_and_never_stopped(zk: ZooKeeperLockServer, name: str) -> None:
    client = KazooClient(hosts=zk.hosts, timeout=5)
    client.start(timeout=10)
    try:
        lock = fencelock.Lock(name, client, ttl=5)
        assert zkb(lock).client is client
        with lock as lease:
            assert zk.children(name)
            info = lock.inspect()
            assert info is not None and info.fence == lease.fence
        lock.close()
        assert client.connected, "fencelock must not stop a client it did not create"
        assert client.exists(lock_parent(ZK_ROOT, name)) is not None
    finally:
        client.stop()
        client.close()


def test_a_users_client_that_was_never_started_is_a_clear_error(zk: ZooKeeperLockServer, name: str) -> None:
    client = KazooClient(hosts=zk.hosts, timeout=5)
    backend = ZooKeeperBackend(client, timeout=0.2)
    lock = fencelock.Lock(name, backend, ttl=5)
    with pytest.raises(fencelock.BackendUnavailable, match="start"):
        lock.acquire(timeout=1)
    assert not client.connected, "we never start (or stop) a user's client"


def test_a_forked_child_gets_its_own_client_for_the_same_url(zk: ZooKeeperLockServer, name: str) -> None:
    lock = fencelock.Lock(name, zk.url, ttl=5)
    lease = lock.acquire(timeout=10)
    pid = os.fork()
    if pid == 0:  # child: the parent's client has no threads here; a new one must be made
        code = 3
        try:
            child = fencelock.Lock(name + ":child", zk.url, ttl=5)
            code = 1 if zkb(child).client is zkb(lock).client else 0
            if code == 0:
                with child:
                    pass
                code = 2 if fencelock.Lock(name, zk.url, ttl=5).try_acquire() is not None else 0
        finally:
            os._exit(code)
    status = 0
    for _ in range(3000):  # bounded: 30 s
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.01)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")
    assert os.waitstatus_to_exitcode(status) == 0, "own client; locks work; the parent's lock is still held"
    assert lease.held
    lease.release()
    lock.close()


# -- asyncio -----------------------------------------------------------------------------------


async def test_async_waiter_wakes_on_release_without_blocking_the_loop(zk: ZooKeeperLockServer, name: str) -> None:
    holder_lock = aio.Lock(name, zk.url, ttl=30)
    waiter_lock = aio.Lock(name, zk.url, ttl=30)
    holder = await holder_lock.acquire(timeout=10)
    waiter = asyncio.create_task(waiter_lock.acquire(timeout=30))
    await asyncio.sleep(0.3)
    assert not waiter.done()
    # The release runs on the same loop as the waiting task: if waiting blocked the loop, this
    # could only happen after the waiter timed out (and then it would raise LockTimeout).
    await holder.release()
    lease = await asyncio.wait_for(waiter, 30)
    assert lease.fence > holder.fence
    info = await waiter_lock.inspect()
    assert info is not None and info.fence == lease.fence
    await lease.release()
    await holder_lock.aclose()
    await waiter_lock.aclose()


async def test_async_waiters_hold_no_thread_while_they_wait(zk: ZooKeeperLockServer, name: str) -> None:
    # More waiters than the loop's default executor has threads: if each held a thread while it
    # waited, the holder's release (a call in that executor too) would queue behind their 30 s waits.
    waiters = (os.cpu_count() or 1) + 4 + 4  # the default executor: min(32, cpus + 4) threads
    holder_lock = aio.Lock(name, zk.url, ttl=30)
    holder = await holder_lock.acquire(timeout=10)
    locks = [aio.Lock(name, zk.url, ttl=30) for _ in range(waiters)]

    granted: list[int] = []  # fences in the order the grants arrived (each releases before the next)

    async def take(lock: aio.Lock) -> None:
        lease = await lock.acquire(timeout=30)
        granted.append(lease.fence)
        await lease.release()

    # The tasks start together, so their queue nodes may be created in any order: what must hold
    # is that grants follow the queue (fences rise in grant order), not the order of the task list.
    tasks = [asyncio.create_task(take(lock)) for lock in locks]
    assert await asyncio.to_thread(wait_until, lambda: len(zk.children(name)) == waiters + 1, 20)
    started = time.monotonic()
    await holder.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    assert time.monotonic() - started < 25, "the waiters were served one after another, not after their timeouts"
    assert len(granted) == waiters and granted == sorted(granted) and granted[0] > holder.fence
    for lock in [holder_lock, *locks]:
        await lock.aclose()


async def test_a_cancelled_async_acquire_leaves_no_node_behind(zk: ZooKeeperLockServer, name: str) -> None:
    holder_lock = aio.Lock(name, zk.url, ttl=30)
    holder = await holder_lock.acquire(timeout=10)
    waiter = aio.Lock(name, zk.url, ttl=30)
    for delay in (0.0, 0.002, 0.3):  # in its first request, maybe its second, then while it waits
        task = asyncio.create_task(waiter.acquire(timeout=30))
        await asyncio.sleep(delay)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.to_thread(wait_until, lambda: len(zk.children(name)) == 1, 10), delay
    await holder.release()
    assert await asyncio.to_thread(wait_until, lambda: not zk.children(name), 10)
    await holder_lock.aclose()
    await waiter.aclose()


async def test_async_user_client_and_session_loss(zk: ZooKeeperLockServer, name: str) -> None:
    client = KazooClient(hosts=zk.hosts, timeout=2)
    await asyncio.to_thread(client.start, 10)
    try:
        lock = aio.Lock(name, client, cancel_on_loss=True)
        with pytest.raises(fencelock.LeaseLost):
            async with lock as lease:
                session_id, password = client.client_id
                thief = KazooClient(hosts=zk.hosts, client_id=(session_id, password), timeout=2)
                await asyncio.to_thread(thief.start, 10)
                await asyncio.to_thread(thief.stop)
                thief.close()
                for _ in range(1000):  # bounded: 10 s; the loss cancels us long before
                    await asyncio.sleep(0.01)
        assert lease.lost and "session" in (lease.lost_reason or "")
        await lock.aclose()
        assert client.connected, "kazoo made a new session; the client is still the user's"
    finally:
        await asyncio.to_thread(client.stop)
        client.close()


# -- errors ------------------------------------------------------------------------------------


def test_no_server_is_backend_unavailable_not_a_hang(name: str) -> None:
    port = free_port()  # nothing listens there
    lock = fencelock.Lock(name, f"zk://127.0.0.1:{port}/?timeout=0.5", ttl=5)
    started = time.monotonic()
    with pytest.raises(fencelock.BackendUnavailable):
        lock.acquire(timeout=60)
    assert time.monotonic() - started < 30, "bounded by the backend timeout, not the 60 s acquire timeout"
    lock.close()


async def test_async_no_server_is_backend_unavailable(name: str) -> None:
    lock = aio.Lock(name, f"zk://127.0.0.1:{free_port()}/?timeout=0.5", ttl=5)
    with pytest.raises(fencelock.BackendUnavailable):
        await lock.acquire(timeout=60)
    await lock.aclose()


def test_server_going_down_is_backend_unavailable(name: str) -> None:
    server = ZooKeeper().start()
    try:
        url = f"zk://127.0.0.1:{server.port}/?timeout=4&session_timeout=5"  # a loaded host: connects take seconds
        lock = fencelock.Lock(name, url, ttl=5)
        lease = lock.acquire(timeout=10)
        server.stop()
        started = time.monotonic()
        with pytest.raises(fencelock.BackendUnavailable):
            lock.inspect()
        with pytest.raises(fencelock.BackendUnavailable):
            lease.release()
        with pytest.raises(fencelock.BackendUnavailable):
            fencelock.Lock(name, url, ttl=5).acquire(timeout=60)
        assert time.monotonic() - started < 30, "each call is bounded by the backend timeout"
        lock.close()
    finally:
        server.stop()


def test_paused_server_is_backend_unavailable(zk: ZooKeeperLockServer, name: str) -> None:
    lock = fencelock.Lock(name, zk.url_with(timeout=0.5), ttl=5)
    assert lock.inspect() is None  # connected
    zk.pause()
    try:
        with pytest.raises(fencelock.BackendUnavailable):
            lock.inspect()
    finally:
        zk.resume()
    lock.close()


@pytest.mark.parametrize(
    "url",
    [
        "zk://",
        "zk://host:port",
        "zk://:2181",
        "zk://h:2181/?session_timeout=-1",
        "zk://h:2181/?session_timeout=soon",
        "zk://h:2181/?timeout=0",
        "zk://h:2181/?bogus=1",
        "zk://h:2181/?root=relative",
        "zk://h:2181/?root=/a/../b",
        "zk://h:2181/?use_ssl=maybe",
        "zk://user@h:2181",
        "zk://h:2181//double",
    ],
)
def test_bad_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(fencelock.ConfigurationError):
        fencelock.Lock("x", url)


def test_digest_credentials_protect_the_lock_nodes(zk: ZooKeeperLockServer, name: str) -> None:
    import uuid

    root = f"/fl-auth-{uuid.uuid4().hex[:8]}"  # its own root: the ACL must not reach other tests' nodes
    good = fencelock.Lock(name, f"zk://alice:s3cret@{zk.hosts}/?root={root}", ttl=5)
    with good as lease:
        acl, _ = zkb(good).client.get_acls(f"{root}/{encode_name(name)}")
        assert [a.id.scheme for a in acl] == ["digest"] and acl[0].id.id.startswith("alice:")
        intruder = fencelock.Lock(name, f"zk://alice:wrong@{zk.hosts}/?root={root}", ttl=5)
        with pytest.raises(fencelock.BackendRejected, match="permission"):
            intruder.acquire(timeout=1)
        assert good.inspect() is not None and good.inspect().fence == lease.fence  # type: ignore[union-attr]
        intruder.close()
    good.close()


def test_chroot_from_the_url_is_used_and_must_exist(zk: ZooKeeperLockServer, name: str) -> None:
    import uuid

    chroot = f"/apps-{uuid.uuid4().hex[:8]}/locks"
    lock = fencelock.Lock(name, f"zk://{zk.hosts}{chroot}?session_timeout=4", ttl=5)
    with pytest.raises(fencelock.BackendRejected, match="chroot"):
        lock.acquire(timeout=1)
    zk.admin.ensure_path(chroot)
    with lock as lease:
        (child,) = zk.admin.get_children(f"{chroot}{lock_parent(ZK_ROOT, name)}")
        assert token_tag(lease.token) in child
        assert zk.admin.exists(zk.lock_path(name)) is None, "nothing outside the chroot"
    lock.close()


def test_url_options_reach_kazoo() -> None:
    s = parse_zk_url(
        "zk://al%40ice:p%3Ass@h1:2181,h2:2182/apps/locks?session_timeout=7&root=/l&use_ssl=true&ca=/ca.pem"
    )
    assert s.hosts == "h1:2181,h2:2182/apps/locks"
    assert s.auth == ("al@ice", "p:ss")
    assert s.session_timeout == 7 and s.root == "/l"
    assert s.tls == {"use_ssl": True, "ca": "/ca.pem"}
    backend = ZooKeeperBackend.from_url("zk://u:pw@127.0.0.1:1/chroot?use_ssl=true&verify_certs=false")
    client = backend.client
    assert client.use_ssl is True and client.verify_certs is False
    assert client.chroot == "/chroot"
    assert ("digest", "u:pw") in client.auth_data
    assert not client.connected, "constructing does no I/O"
    backend.close()


def test_wrong_object_is_a_configuration_error() -> None:
    with pytest.raises(fencelock.ConfigurationError):
        ZooKeeperBackend(object())
