"""The primitives of the ZooKeeper backend (see the package docstring for the protocol).

``ZooKeeperBackend`` is blocking: every request is one kazoo call bounded by the backend's
``timeout`` (and a bounded wait for the connection first), kazoo's errors translated by
``errors.map_errors``. ``AsyncZooKeeperBackend`` is that backend behind ``offload.Offloaded`` (each
call in a worker thread that a cancellation waits for), plus ``async_wait``, which waits for the
watch as an asyncio future on the event loop, so no thread is held while a waiter waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from ..._errors import BackendRejected, ConfigurationError, LimitMismatch
from ..base import Attempt, HolderInfo, LockInfo, LossCallback, Unsubscribe, check_counted
from ..offload import Offloaded, off_loop
from . import clients
from .core import Core, Node
from .errors import map_errors
from .grants import CHILDREN, GRANT, foreign_limit, granted, must_signal, waits_on
from .naming import Contender, child_prefix, contenders, token_tag
from .urls import DEFAULT_ROOT, DEFAULT_TIMEOUT, check_root, parse_zk_url

__all__ = ["AsyncZooKeeperBackend", "ZooKeeperBackend"]

GRANT_POLL = 1.0
"""``retry_after`` of a waiter that waits for the grant of the node ahead of it (a semaphore's
second waiter and later): that grant is marked by its owner, so a paused owner would hold the
waiter up; looking again this often bounds that. Every other waiter needs no polling at all."""

JANITOR_RETRY = 0.05
"""``retry_after`` while the janitor deletes this token's expired node (one delete request): then
the token queues again with a new node."""

_WAIT_ROUNDS = 10_000
"""Backstop for the loops of ``wait``: each round either waits on a watch or moves to a node
further ahead, and the clock ends them long before."""

_DONE, _WAIT, _AGAIN = "done", "wait", "again"

OnEvent = Callable[[Any], None]


def _index(order: list[Contender], name: str | None) -> int | None:
    for at, c in enumerate(order):
        if c.name == name:
            return at
    return None


class ZooKeeperBackend:
    """fencelock on ZooKeeper, blocking. Pass your own started ``KazooClient`` (never stopped by us)
    or use ``from_url``. See the package docstring for the protocol."""

    name = "zookeeper"
    _core: Core
    _finalizer: weakref.finalize[[tuple[Any, ...], Core], ZooKeeperBackend]

    def __init__(self, client: Any, *, root: str = DEFAULT_ROOT, timeout: float = DEFAULT_TIMEOUT) -> None:
        clients.check_client(client)
        if not timeout > 0:
            raise ConfigurationError(f"timeout must be a positive number of seconds, got {timeout!r}")
        check_root(root)
        self._attach(
            ("client", id(client), root, timeout),
            lambda: Core(client, root=root, timeout=timeout, owns_client=False, acl=None),
        )

    def _attach(self, key: tuple[Any, ...], make: Callable[[], Core]) -> None:
        self._core = clients.attach(key, make)
        # detaches (stopping the janitor, and our own client, with the last user) when the backend
        # is dropped without close()
        self._finalizer = weakref.finalize(self, clients.detach_from_gc, key, self._core)

    @classmethod
    def from_url(cls, url: str) -> ZooKeeperBackend:
        """A backend on the client fencelock keeps for ``url`` in this process (created on first use)."""
        settings = parse_zk_url(url)

        def make() -> Core:
            client, acl = clients.make_client(settings)
            return Core(client, root=settings.root, timeout=settings.timeout, owns_client=True, acl=acl)

        backend = cls.__new__(cls)
        backend._attach(("url", os.getpid(), url), make)
        return backend

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._core.client.hosts!r}>"

    def close(self) -> None:
        found = self._finalizer.detach()
        if found is not None:
            _, _, (key, core) = found[:3]
            clients.detach(key, core, False)

    @property
    def client(self) -> Any:
        return self._core.client

    @property
    def max_lease(self) -> float:
        """The session timeout: a node (and so a lease) cannot outlive its session."""
        return self._core.session_timeout

    def watch_loss(self, key: str, token: str, callback: LossCallback) -> Unsubscribe:
        return self._core.watch_loss(key, token, callback)

    # -- acquire ------------------------------------------------------------------------------

    def try_acquire(
        self, key: str, token: str, ttl_ms: int, label: str, queue: bool, limit: int = 1, weight: int = 1
    ) -> Attempt:
        if limit != 1 or weight != 1:
            check_counted(limit, weight)
        core = self._core
        core.ensure_started()
        started = time.monotonic()
        k = (key, token)
        with map_errors("acquire"):
            for _ in range(3):
                node = core.nodes.get(k)
                if node is not None and (node.limit, node.weight) != (limit, weight):
                    if node.limit != limit:
                        raise LimitMismatch(key, limit, node.limit)
                    raise ConfigurationError(f"token already asked for {node.weight} permits of {key!r}, not {weight}")
                if node is None or node.name is None:
                    node = self._create(k, label, limit, weight, node)
                order = self._contenders(node.parent)
                at = _index(order, node.name)
                if at is None:  # deleted under us, or our session expired: queue again
                    core.forget(k, node)
                    continue
                node.ttl_ms = ttl_ms
                if not node.checked:
                    current = foreign_limit(order, at)
                    if current is not None:
                        self._withdraw(k, node)
                        raise LimitMismatch(key, limit, current)
                    node.checked = True
                if granted(order, at):
                    fence = self._granted(node, order, at, started, ttl_ms)
                    if fence is None:
                        # the janitor is deleting this token's expired node: once it is gone (and
                        # forgotten), the next try queues a new one
                        return Attempt(fence=None, retry_after=JANITOR_RETRY)
                    return Attempt(fence=fence)
                if not queue:
                    self._withdraw(k, node)
                    return Attempt(fence=None)
                node.target = waits_on(order, at)
                return Attempt(fence=None, retry_after=GRANT_POLL if node.target.kind == GRANT else None)
        return Attempt(fence=None, retry_after=0.05)

    def _create(self, k: tuple[str, str], label: str, limit: int, weight: int, previous: Node | None) -> Node:
        from kazoo.exceptions import NoNodeError

        core = self._core
        if previous is not None:
            # An earlier create's answer never came: it may have made a node, which must not stay
            # behind in the queue beside the one we make now.
            core.delete_node(previous)
        node = Node(
            parent=core.parent(k[0]),
            tag=token_tag(k[1]),
            limit=limit,
            weight=weight,
            data=label.encode("utf-8", "replace"),
        )
        core.nodes[k] = node  # name None: ``abandon`` searches for it if we never hear back
        for attempt in range(3):
            try:
                path, stat = core.call(
                    "create",
                    f"{node.parent}/{child_prefix(node.tag, limit, weight)}",
                    node.data,
                    acl=core.acl,
                    ephemeral=True,
                    sequence=True,
                    include_data=True,
                )
                break
            except NoNodeError:
                # No parent yet (or an operator just deleted it). We make it ourselves rather than
                # with kazoo's ``makepath``, whose hidden retry of the create could reach the server
                # after a cancelled caller's ``abandon`` had already looked for the node.
                if attempt == 2:
                    raise
                try:
                    core.call("ensure_path", node.parent, acl=core.acl)
                except NoNodeError as err:
                    # kazoo creates nodes inside the chroot only, never the chroot itself
                    raise BackendRejected(
                        f"zookeeper refused to create {node.parent!r}: the chroot "
                        f"{core.client.chroot or '/'!r} does not exist; create it first"
                    ) from err
        node.name = path.rsplit("/", 1)[1]
        node.czxid = int(stat.czxid)
        node.session = int(stat.ephemeralOwner)
        return node

    def _contenders(self, parent: str, watch: OnEvent | None = None) -> list[Contender]:
        from kazoo.exceptions import NoNodeError

        try:
            children = self._core.call("get_children", parent, watch=watch)
        except NoNodeError:
            return []
        return contenders(children)

    def _granted(self, node: Node, order: list[Contender], at: int, started: float, ttl_ms: int) -> int | None:
        """``order[at]`` (our ``node``) holds: start its lease; mark the grant for the waiter behind
        it when that one may be waiting for it (see ``grants``). None: the node is being deleted
        (see ``Core.grant``), no grant."""
        first = node.expires is None
        fence = self._core.grant(node, started, ttl_ms)
        if fence is None:
            return None
        if first and must_signal(order, at):
            from kazoo.exceptions import NoNodeError

            # Gone meanwhile (session expired, operator): the lease is lost, as if it had gone
            # right after this answer; renewal finds out.
            with contextlib.suppress(NoNodeError):
                self._core.call("set", node.path, node.data)
        return fence

    def _withdraw(self, k: tuple[str, str], node: Node) -> None:
        """Delete a node we will not wait with (not queued, or refused); the janitor retries."""
        try:
            self._core.delete_node(node)
        except BaseException:
            self._core.hand_to_janitor(node, time.monotonic())
            raise
        self._core.forget(k, node)

    # -- wait -----------------------------------------------------------------------------------

    def wait(self, key: str, token: str, timeout: float) -> int | None:
        """Watch what our node waits for (see ``grants``); when it changes, look whether we hold
        now and, if so, answer the fence; else watch what we wait for now, until ``timeout``."""
        from kazoo.protocol.states import EventType

        core = self._core
        core.ensure_started()
        end = time.monotonic() + max(0.0, timeout)
        k = (key, token)
        node = core.nodes.get(k)
        if node is None or node.target is None:
            # nothing to watch (our node kept vanishing): pause as asked, then try again (an Event,
            # not time.sleep, which fails under libfaketime when only the wall clock is faked)
            threading.Event().wait(max(0.0, min(timeout, 0.05)))
            return None
        with map_errors("wait"):
            for _ in range(_WAIT_ROUNDS):
                target = node.target
                if target is None:
                    return None
                fired = threading.Event()
                kinds: list[Any] = []

                def on_event(event: Any, kinds: list[Any] = kinds, fired: threading.Event = fired) -> None:
                    kinds.append(event.type)
                    fired.set()

                state, fence = self._arm(k, node, on_event)
                if state == _DONE:
                    return fence
                if state == _WAIT:
                    left = end - time.monotonic()
                    if left <= 0 or not fired.wait(left):
                        return None
                    if kinds[0] == EventType.NONE:  # the connection dropped, not the node
                        return None
                    if target.kind != CHILDREN:  # (a children watch looks when it is armed again)
                        state, fence = self._look(k, node)
                        if state == _DONE:
                            return fence
                if time.monotonic() >= end:
                    return None
        return None

    async def async_wait(self, key: str, token: str, timeout: float) -> int | None:
        """``wait`` for asyncio: the watch is awaited as a future on the event loop (no thread is
        held while we wait); setting it and looking afterwards run in worker threads. Cancelling it
        leaves nothing behind: the node stays queued until the caller's ``abandon``."""
        from kazoo.protocol.states import EventType

        core = self._core
        core.ensure_started()
        loop = asyncio.get_running_loop()
        end = time.monotonic() + max(0.0, timeout)
        k = (key, token)
        node = core.nodes.get(k)
        if node is None or node.target is None:
            await asyncio.sleep(max(0.0, min(timeout, 0.05)))
            return None
        with map_errors("wait"):
            for _ in range(_WAIT_ROUNDS):
                target = node.target
                if target is None:
                    return None
                fired: asyncio.Future[bool] = loop.create_future()

                def settle(kind: Any, fired: asyncio.Future[bool] = fired) -> None:
                    if not fired.done():
                        fired.set_result(kind != EventType.NONE)

                def on_event(event: Any, settle: Callable[[Any], None] = settle) -> None:
                    with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                        loop.call_soon_threadsafe(settle, event.type)

                state, fence = await off_loop(self._arm, k, node, on_event)
                if state == _DONE:
                    return fence
                if state == _WAIT:
                    left = end - time.monotonic()
                    if left <= 0:
                        return None
                    try:
                        changed = await asyncio.wait_for(fired, left)
                    except asyncio.TimeoutError:
                        return None
                    if not changed:
                        return None
                    if target.kind != CHILDREN:
                        state, fence = await off_loop(self._look, k, node)
                        if state == _DONE:
                            return fence
                if time.monotonic() >= end:
                    return None
        return None

    def _arm(self, k: tuple[str, str], node: Node, on_event: OnEvent) -> tuple[str, int | None]:
        """Set the watch on what ``node`` waits for. ``(_WAIT, None)``: set, nothing happened yet;
        ``(_DONE, fence or None)``: granted, or our node is gone; ``(_AGAIN, None)``: it changed
        already (looked at: arm again for what we wait for now)."""
        from kazoo.exceptions import NoNodeError

        target = node.target
        if target is None:
            return _DONE, None
        started = time.monotonic()
        if target.kind == CHILDREN:  # the watch and a look in one request
            return self._settle(k, node, self._contenders(node.parent, watch=on_event), started, armed=True)
        # ``get``, not ``exists``: on a node that is gone already, exists would leave a watch for
        # its creation behind (in kazoo and on the server), which never fires for a sequential name.
        try:
            _, stat = self._core.call("get", f"{node.parent}/{target.child}", watch=on_event)
        except NoNodeError:
            return self._look(k, node)
        if target.kind == GRANT and int(stat.version) >= 1:
            return self._look(k, node)  # marked granted already: we may be in too
        return _WAIT, None

    def _look(self, k: tuple[str, str], node: Node) -> tuple[str, int | None]:
        started = time.monotonic()
        return self._settle(k, node, self._contenders(node.parent), started, armed=False)

    def _settle(
        self, k: tuple[str, str], node: Node, order: list[Contender], started: float, armed: bool
    ) -> tuple[str, int | None]:
        at = _index(order, node.name)
        if at is None:  # gone (session expired, operator): try_acquire queues again
            self._core.forget(k, node)
            return _DONE, None
        if granted(order, at):
            return _DONE, self._granted(node, order, at, started, node.ttl_ms)
        node.target = waits_on(order, at)
        if armed and node.target.kind == CHILDREN:
            return _WAIT, None  # the children watch just set is the one we need
        return _AGAIN, None

    # -- leave, extend, release -----------------------------------------------------------------

    def abandon(self, key: str, token: str) -> None:
        core = self._core
        k = (key, token)
        node = core.nodes.get(k)
        if node is None:
            return
        core.ensure_started()
        try:
            with map_errors("abandon"):
                core.delete_node(node)
        except BaseException:
            # Could not reach the server (or were interrupted): the node may live on with our
            # session and block the queue. Hand it to the janitor, which deletes it once it can.
            core.hand_to_janitor(node, time.monotonic())
            raise
        core.forget(k, node)

    def extend(self, key: str, token: str, ttl_ms: int) -> bool:
        core = self._core
        started = time.monotonic()
        k = (key, token)
        node = core.nodes.get(k)
        if node is None or node.name is None:
            return False
        core.ensure_started()
        with core.mutex:
            if node.reaping or node.expires is None or node.expires <= started:
                return False  # ran out: the janitor deletes it (or did)
            # Stretched before asking, so the janitor cannot delete the node while the answer is on
            # its way (we would then report a lease that no longer exists as extended).
            previous = node.expires
            node.expires = max(previous, started + ttl_ms / 1000.0)
        try:
            with map_errors("extend"):
                stat = core.call("exists", node.path)
        except BaseException:
            with core.mutex:  # not extended after all: the lease ends when it would have
                node.expires = previous
            raise
        if stat is None or int(stat.ephemeralOwner) != node.session or node.session != core.session_id():
            core.forget(k, node)
            return False
        with core.mutex:
            node.expires = started + ttl_ms / 1000.0
        core.janitor.wake(node.expires)
        return True

    def release(self, key: str, token: str) -> bool:
        core = self._core
        now = time.monotonic()
        k = (key, token)
        with core.mutex:
            node = core.nodes.get(k)
            if node is None or node.name is None or node.reaping:
                return False
            expired = node.expires is None or node.expires <= now
            node.reaping = True
        core.ensure_started()
        try:
            with map_errors("release"):
                existed = core.delete_node(node)
        except BaseException:
            core.hand_to_janitor(node, now)  # the holder is done with it either way
            raise
        core.forget(k, node)
        return existed and not expired

    # -- look -------------------------------------------------------------------------------------

    def _holders(self, parent: str) -> tuple[list[Contender], list[tuple[Contender, Any]]] | None:
        """The queue and its holders with their (data, stat), oldest grant first; None when a holder
        went away between the two requests (look again)."""
        order = self._contenders(parent)
        if not order:
            return order, []
        limit = order[0].limit
        total = 0
        holding = []
        for c in order:
            total += c.weight
            if total > limit:
                break
            if c.limit == limit:  # another limit behind the head: refused, leaving at once
                holding.append(c)
        from kazoo.exceptions import NoNodeError

        replies = self._core.call_each("get", [(f"{parent}/{c.name}",) for c in holding])
        for reply in replies:
            if isinstance(reply, NoNodeError):
                return None
            if isinstance(reply, BaseException):
                raise reply
        return order, list(zip(holding, replies, strict=True))

    def inspect(self, key: str) -> LockInfo | None:
        with map_errors("inspect"):
            look = self._settled_holders(key)
            if look is None:
                return None
            order, holding = look
            holders = tuple(
                HolderInfo(int(stat.czxid), (data or b"").decode("utf-8", "replace"), None, c.weight)
                for c, (data, stat) in holding
            )
            newest = holders[-1]
            return LockInfo(
                key, newest.fence, newest.holder, None, len(order) - len(holders), holders=holders, limit=order[0].limit
            )

    def _settled_holders(self, key: str) -> tuple[list[Contender], list[tuple[Contender, Any]]] | None:
        """``_holders`` of ``key``'s parent, looked at again (at most 3 times) while a node vanishes
        between the listing and the reads; None when nobody holds it."""
        core = self._core
        core.ensure_started()
        parent = core.parent(key)
        for _ in range(3):
            look = self._holders(parent)
            if look is None:
                continue  # released meanwhile: look again
            return look if look[1] else None
        return None

    def force_release(self, key: str) -> str | None:
        """Operator's override (``fencelock release --force``): delete the holders' nodes whoever
        they are (every holder of a counted name); returns their labels (None when free). Holders
        learn at their next renewal; the waiters next in line get the permits."""
        from kazoo.exceptions import NoNodeError

        with map_errors("force release"):
            look = self._settled_holders(key)
            if look is None:
                return None
            _, holding = look
            parent = self._core.parent(key)
            for reply in self._core.call_each("delete", [(f"{parent}/{c.name}",) for c, _ in holding]):
                if isinstance(reply, BaseException) and not isinstance(reply, NoNodeError):
                    raise reply  # gone already is fine; a refusal (ACL) is not
            return ", ".join((data or b"").decode("utf-8", "replace") for _, (data, _) in holding)


class AsyncZooKeeperBackend(Offloaded):
    """fencelock on ZooKeeper for asyncio: ``ZooKeeperBackend``'s calls in worker threads (so no
    kazoo call blocks the event loop), its waits on the loop (so no thread is held while waiting)."""

    sync: ZooKeeperBackend

    def __init__(self, client: Any, *, root: str = DEFAULT_ROOT, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(ZooKeeperBackend(client, root=root, timeout=timeout))

    @classmethod
    def from_url(cls, url: str) -> AsyncZooKeeperBackend:
        """A backend on the client fencelock keeps for ``url`` in this process (created on first use)."""
        backend = cls.__new__(cls)
        Offloaded.__init__(backend, ZooKeeperBackend.from_url(url))
        return backend

    @property
    def client(self) -> Any:
        return self.sync.client
