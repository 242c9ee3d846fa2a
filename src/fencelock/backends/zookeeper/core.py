"""The per-client core: bounded kazoo requests, session states, loss watches, our nodes.

One ``Core`` per client (see ``clients``): every backend on that client shares its session, its
janitor and its bookkeeping of nodes (keyed by lock name and token, so tokens keep them apart). It
never references a backend object, so a backend nobody uses any more is collected and its
finalizer can stop the janitor (and the client, when it is ours).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..._errors import BackendUnavailable
from ..base import LossCallback, Unsubscribe
from .grants import Target
from .janitor import Janitor
from .naming import lock_parent
from .urls import check_root

__all__ = ["Core", "LossWatch", "Node"]


@dataclass(slots=True)
class Node:
    """One contender node of ours (keyed by lock name and token)."""

    parent: str
    tag: str
    limit: int = 1
    weight: int = 1
    data: bytes = b""  # its label (rewritten unchanged as the grant mark of a semaphore's waiter)
    name: str | None = None  # None while its create is in flight (the outcome may be unknown)
    czxid: int = 0
    session: int = 0
    checked: bool = False  # its limit was checked against the nodes ahead of it (see grants)
    target: Target | None = None  # what we watch while waiting
    ttl_ms: int = 0  # the lease asked for by the last try_acquire (a grant found by wait uses it)
    expires: float | None = None  # monotonic end of the lease; None while it is only a waiter
    reaping: bool = False  # being deleted (janitor or release): it cannot be extended any more
    retry_at: float = 0.0  # the janitor's next attempt after a failed deletion

    def due(self) -> float | None:
        """When the janitor should delete this node (None: never; it is a waiter or in flight)."""
        if self.expires is None or self.reaping:
            return None
        return max(self.expires, self.retry_at)

    @property
    def path(self) -> str:
        return f"{self.parent}/{self.name}"


@dataclass(slots=True)
class LossWatch:
    key: str
    token: str
    session: int
    callback: Callable[[], LossCallback | None]
    """Weak for bound methods (the lease's own handler): a dropped lease must not be kept alive
    by its watch, or it could never be collected and its renewal never stop."""


class Core:
    """The client, its connection state and what fencelock keeps about it."""

    def __init__(self, client: Any, *, root: str, timeout: float, owns_client: bool, acl: Any) -> None:
        self.client = client
        self.root = check_root(root)
        self.timeout = timeout
        self.owns_client = owns_client
        self.acl = acl
        # the timeout we ask the server for (kazoo has no public accessor, nor one for the
        # negotiated value: see "Assumptions" in the package docstring)
        self.session_timeout = float(client._session_timeout) / 1000.0
        self.timeout_error: type[BaseException] = client.handler.timeout_exception
        self.mutex = threading.Lock()
        self.nodes: dict[tuple[str, str], Node] = {}
        self.watches: dict[int, LossWatch] = {}
        self.connected = threading.Event()
        self.janitor = Janitor(self)
        self.closed = False
        self._started = False
        self.pid = os.getpid()
        client.add_listener(self.on_state)
        if client.connected:
            self.connected.set()

    # -- requests ------------------------------------------------------------------------------

    def ensure_started(self) -> None:
        """Start our own client once (lazily: constructing a lock does no I/O)."""
        if self.owns_client and not self._started:
            with self.mutex:
                if not self._started:
                    self._started = True
                    self.client.start_async()

    def await_connection(self) -> None:
        """Wait (at most ``timeout``) for a connection. A request made while disconnected would be
        queued inside kazoo and could reach the server much later, after we gave up on it."""
        if not self.connected.is_set() and not self.connected.wait(self.timeout):
            raise self.not_connected()

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One kazoo request (``method`` names a ``*_async`` method), its reply within ``timeout``.
        kazoo's own exceptions come out as they are (the caller handles the expected ones, e.g.
        ``NoNodeError``, and ``errors.map_errors`` translates the rest)."""
        self.await_connection()
        pending = getattr(self.client, method + "_async")(*args, **kwargs)
        try:
            return pending.get(timeout=self.timeout)
        except self.timeout_error as err:
            raise BackendUnavailable(f"zookeeper did not answer {method} within {self.timeout:g} s") from err

    def call_each(self, method: str, args: list[tuple[Any, ...]]) -> list[Any]:
        """The same request for each of ``args``, sent at once (one round trip, not one each), all
        replies within one ``timeout``. Each result is the reply or the exception it raised."""
        self.await_connection()
        pending = [getattr(self.client, method + "_async")(*a) for a in args]
        end = time.monotonic() + self.timeout
        results: list[Any] = []
        for p in pending:
            try:
                results.append(p.get(timeout=max(0.0, end - time.monotonic())))
            except self.timeout_error as err:
                raise BackendUnavailable(f"zookeeper did not answer {method} within {self.timeout:g} s") from err
            except Exception as err:  # handed to the caller, which knows what to expect
                results.append(err)
        return results

    def not_connected(self) -> BackendUnavailable:
        if not self.owns_client and self.client.client_state == "CLOSED":
            return BackendUnavailable("zookeeper client is not started (call client.start() first)")
        return BackendUnavailable(
            f"zookeeper unreachable: no connection to {self.client.hosts!r} within {self.timeout:g} s"
        )

    def session_id(self) -> int:
        cid = self.client.client_id
        return int(cid[0]) if cid else 0

    # -- our nodes -----------------------------------------------------------------------------

    def parent(self, key: str) -> str:
        return lock_parent(self.root, key)

    def grant(self, node: Node, started: float, ttl_ms: int) -> int | None:
        """``node`` holds from ``started`` for ``ttl_ms``: the janitor ends it then; its fence.

        None when the janitor has taken the node to delete it (an earlier lease of the token ran
        out): a listing made before that delete landed still shows the node at the head, but it is
        about to go, so it is not a grant (the caller queues again with a new node). Decided under
        the mutex the janitor takes it under: either the janitor sees the new end and leaves the
        node, or the grant sees ``reaping``."""
        with self.mutex:
            if node.reaping:
                return None
            node.expires = started + ttl_ms / 1000.0
            node.target = None
        self.janitor.wake(node.expires)
        return node.czxid

    def hand_to_janitor(self, node: Node, now: float) -> None:
        """We could not delete ``node`` (server unreachable, or we were interrupted): it may live on
        with our session and block the queue, so the janitor deletes it once it can."""
        with self.mutex:
            node.reaping = False
            node.expires = now
        self.janitor.wake(now)

    def forget(self, k: tuple[str, str], node: Node) -> None:
        with self.mutex:
            if self.nodes.get(k) is node:
                del self.nodes[k]

    def delete_node(self, node: Node) -> bool:
        """Delete our node (searching for it by its tag when its create's answer never came: a
        session's requests are applied in order, so a create sent before this search is seen by
        it); True if it existed."""
        from kazoo.exceptions import NoNodeError

        names = [node.name] if node.name is not None else []
        if not names:
            try:
                children = self.call("get_children", node.parent)
            except NoNodeError:
                return False
            names = [c for c in children if c.startswith(f"c-{node.tag}-")]
        found = False
        for name in names:
            try:
                self.call("delete", f"{node.parent}/{name}")
                found = True
            except NoNodeError:
                pass
        return found

    # -- session states and loss events ---------------------------------------------------------

    def on_state(self, state: str) -> None:
        """kazoo state listener (connection thread; must not block): connection flag, loss events."""
        from kazoo.protocol.states import KazooState

        if state == KazooState.CONNECTED:
            self.connected.set()
            session = self.session_id()
            for w in list(self.watches.values()):
                if w.session == session:
                    self.notify(w, "held", "")
                else:
                    self.notify(w, "lost", "the ZooKeeper session expired while disconnected; its lock nodes are gone")
            self.janitor.poke()  # retry what failed while we were away
        elif state == KazooState.SUSPENDED:
            self.connected.clear()
            reason = (
                f"connection to ZooKeeper lost; the session (and the lock) ends {self.session_timeout:g} s "
                "after the server last heard from us unless we reconnect"
            )
            for w in list(self.watches.values()):
                self.notify(w, "doubt", reason)
        else:  # LOST: the session expired or the client was stopped; ephemeral nodes are gone
            self.connected.clear()
            for w in list(self.watches.values()):
                self.notify(w, "lost", "the ZooKeeper session ended (expired or closed); its lock nodes are gone")

    def notify(self, watch: LossWatch, state: str, reason: str) -> None:
        # On kazoo's callback thread, in order: a slow on_lost callback must not stall the
        # connection thread, and "doubt" must never overtake the "held" that follows it.
        from kazoo.protocol.states import Callback

        callback = watch.callback()
        if state == "lost" or callback is None:
            self.watches.pop(id(watch), None)
        if callback is not None:
            self.client.handler.dispatch_callback(Callback("fencelock", callback, (state, reason)))

    def watch_loss(self, key: str, token: str, callback: LossCallback) -> Unsubscribe:
        node = self.nodes.get((key, token))
        getter: Callable[[], LossCallback | None]
        if hasattr(callback, "__self__"):
            getter = weakref.WeakMethod(callback)
        else:
            getter = lambda: callback  # noqa: E731
        watch = LossWatch(key, token, node.session if node is not None else self.session_id(), getter)
        if len(self.watches) > 1024:  # leases dropped without release leave dead entries: prune them
            for wid, w in list(self.watches.items()):
                if w.callback() is None:
                    self.watches.pop(wid, None)
        self.watches[id(watch)] = watch
        # a state change between the grant and now would have been missed: report it
        if not self.client.connected:
            self.notify(watch, "doubt", "connection to ZooKeeper lost right after the lock was granted")
        elif watch.session != self.session_id():
            self.notify(watch, "lost", "the ZooKeeper session changed right after the lock was granted")

        def unsubscribe() -> None:
            self.watches.pop(id(watch), None)

        return unsubscribe

    # -- the end -------------------------------------------------------------------------------

    def shutdown(self, from_gc: bool = False) -> None:
        """Stop the janitor and our listener; stop the client only if it is ours (which closes
        its session, so ZooKeeper deletes its nodes at once)."""
        if os.getpid() != self.pid:
            return  # a forked child: the client, its threads, session and our locks are the parent's
        self.closed = True
        self.janitor.stop()
        self.client.remove_listener(self.on_state)
        if not self.owns_client:
            return
        if from_gc and threading.current_thread() is not threading.main_thread():
            # The collector may run us on one of kazoo's own threads, and stop() joins them.
            try:
                threading.Thread(target=stop_client, args=(self.client,), daemon=True).start()
                return
            except RuntimeError:  # interpreter shutting down: no new threads
                pass
        stop_client(self.client)


def stop_client(client: Any) -> None:
    with contextlib.suppress(Exception):
        client.stop()
    with contextlib.suppress(Exception):
        client.close()
