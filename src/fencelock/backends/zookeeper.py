"""ZooKeeper backend (kazoo): ephemeral sequential nodes, a fence from the ensemble's zxid.

Layout. Each lock name has a parent node ``<root>/<encoded name>`` (``root`` defaults to
``/fencelock``); every contender creates one ephemeral sequential child under it:

    /fencelock/L<percent-encoded name>/c-<sha256(token)[:32]>-<10-digit sequence>   data: holder label

``<encoded name>`` is ``L`` + the UTF-8 name percent-encoded with only ``A-Za-z0-9_.-~`` left as
is (``H`` + its SHA-256 when that would exceed 200 characters), so slashes, spaces, newlines and
non-ASCII characters stay inside one path segment and no name can reach another lock's parent. The
child carries a hash of the token, not the token: any client allowed to list the parent can read
its children's names, and the token is what lets ``release``/``extend`` act on a lease.

Who holds it. The child with the lowest sequence number holds the lock; the others wait, each
watching only the child just before it (no herd: a release wakes exactly one waiter), so waiters
are served first come, first served. ``wait()`` blocks on that watch, never polls. A node is
ephemeral: when its session dies (process killed, host gone) ZooKeeper deletes it, which frees
the lock or moves the queue. ``try_acquire(queue=True)`` creates the node once per token and keeps
it while the caller waits; ``abandon`` deletes it.

Fence: the holder's node **creation zxid** (``czxid``). Every write to an ensemble gets a zxid
(epoch << 32 | counter) that grows strictly across the ensemble's whole history and survives
leader changes, so a node created later has a larger czxid, whatever its path. The sequence
suffix would not do: it is the parent's child counter and restarts at 0 when the parent is deleted
and recreated (an operator cleaning up empty parents), which would hand out fences lower than ones
already used. The holder is always the oldest live node, so fences grow in the
order the lock is held. czxids stay below 2**53 (exact in JSON and Lua) for 2**21 leader epochs.

Lease and session. A node lives as long as its session, so a lease cannot be vouched for past
the session timeout: ``max_lease`` is that timeout (the lock shortens longer TTLs to it). The
deadline is measured from before the request that granted or extended it was sent; the server
restarts the session's timer when that request arrives, later, so the session outlives the lease,
and a holder paused past its session timeout finds its lease expired on its own clock before it
can write. Session states map to the lease through
``watch_loss``: SUSPENDED (connection lost, session maybe alive) -> ``"doubt"``; CONNECTED again
with the same session -> ``"held"``; LOST (expired or closed) or reconnected with a new session
-> ``"lost"``. ``extend`` checks that our node still exists and is owned by our live session.

TTL on the server's side. ZooKeeper has no expiry for an ephemeral node while its session lives,
but a lease must free the lock when it runs out unrenewed (renewal off, renewer stopped, lease
dropped). A janitor thread (one per client) deletes the node of a lease whose TTL has passed
(measured from a moment no earlier than the holder's own clock started it, so it always ends after
the holder stopped trusting it), and retries deletions that failed while disconnected.

Sharing. All locks made from the same URL in one process share one ``KazooClient`` (one session,
one janitor), and all locks given the same ``KazooClient`` share its bookkeeping: a lock per file
costs no new session. Tokens keep their nodes apart; the last backend closed (or collected) stops
what fencelock started.

Connection. ``zk://[user:password@]host:port[,host:port...][/chroot][?options]``; user/password
become kazoo digest auth (``auth_data``) and the nodes get a digest ACL for that identity only.
Options: ``session_timeout`` (s, default 10), ``timeout`` (s: longest wait for one request or
for a connection, default 3), ``root`` (default ``/fencelock``), and kazoo's TLS settings passed
through: ``use_ssl``, ``verify_certs``, ``check_hostname`` (true/false), ``ca``, ``certfile``,
``keyfile``, ``keyfile_password``. The chroot must exist (fencelock creates its root inside
it, as every ZooKeeper client does). A user's own ``KazooClient`` is used as is and never stopped
by us (start it yourself). Every request is bounded by ``timeout``; a server that is down or
silent becomes ``BackendUnavailable`` within it, never a hang.

Assumptions. The server must grant the session timeout asked for (``minSessionTimeout`` <= it <=
``maxSessionTimeout``; ZooKeeper's defaults are 2 and 20 ticks, 4-40 s with tickTime 2000): kazoo
does not expose the negotiated value, and a shorter one would let a lease outlive its session.
An ensemble that loses acknowledged writes (all data wiped, a restore from an old snapshot)
restarts or rewinds zxids; that is outside ZooKeeper's guarantees and fences can repeat then.
Empty parent nodes stay behind (as with kazoo's own ``Lock``); deleting them is safe at any time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, unquote, urlsplit

from .._errors import (
    AuthenticationFailed,
    BackendError,
    BackendRejected,
    BackendUnavailable,
    ConfigurationError,
)
from .base import Attempt, LockInfo, LossCallback, Unsubscribe

__all__ = ["AsyncZooKeeperBackend", "ZooKeeperBackend", "lock_parent", "parse_zk_url", "queue_order"]

DEFAULT_ROOT = "/fencelock"
DEFAULT_SESSION_TIMEOUT = 10.0
DEFAULT_TIMEOUT = 3.0
JANITOR_MAX_SLEEP = 1.0
"""The janitor looks again at least this often (retrying deletions that failed)."""

_CHILD = re.compile(r"^c-([0-9a-f]{32})-(\d{10})$")
_TLS_BOOL = ("use_ssl", "verify_certs", "check_hostname")
_TLS_STR = ("ca", "certfile", "keyfile", "keyfile_password")

T = TypeVar("T")
log = logging.getLogger("fencelock")

# -- names ---------------------------------------------------------------------------------------


def encode_name(name: str) -> str:
    """One path segment per lock name, injective: ``L`` + percent-encoding, or ``H`` + SHA-256."""
    encoded = "L" + quote(name, safe="")
    if len(encoded) > 200:  # keep paths short; the prefix letter keeps the two forms apart
        encoded = "H" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
    return encoded


def lock_parent(root: str, name: str) -> str:
    """The parent node of lock ``name`` (its contenders are its children)."""
    return f"{root}/{encode_name(name)}"


def token_tag(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:32]


def queue_order(children: list[str]) -> list[str]:
    """Our contender nodes in queue order (lowest sequence first); foreign children are ignored."""
    ours = [c for c in children if _CHILD.match(c)]
    ours.sort(key=lambda c: int(c[-10:]))
    return ours


# -- URL -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZkSettings:
    """What ``from_url`` parsed: kazoo's arguments plus fencelock's own options."""

    hosts: str
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    timeout: float = DEFAULT_TIMEOUT
    root: str = DEFAULT_ROOT
    auth: tuple[str, str] | None = None
    tls: dict[str, Any] = field(default_factory=dict)


def _positive(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number > 0 or number == float("inf"):
        raise ConfigurationError(f"zk:// option {name} must be a positive number of seconds, got {value!r}")
    return number


def _check_root(root: str) -> str:
    if (
        not root.startswith("/")
        or root.endswith("/")
        or "//" in root
        or any(part in (".", "..") for part in root.split("/")[1:])
    ):
        raise ConfigurationError(f"zk:// option root must be an absolute node path like /fencelock, got {root!r}")
    return root


def parse_zk_url(url: str) -> ZkSettings:
    """Parse ``zk://[user:pass@]host:port[,host:port][/chroot][?options]`` (see the module docstring)."""
    if not isinstance(url, str) or not url.startswith(("zk://", "zookeeper://")):
        raise ConfigurationError(f"not a ZooKeeper URL: use zk://host:port[,host:port]/chroot, got {url!r}")
    parts = urlsplit(url)
    netloc = parts.netloc
    auth = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, sep, password = userinfo.partition(":")
        if not sep or not user:
            raise ConfigurationError("zk:// credentials must be user:password@ (digest auth)")
        auth = (unquote(user), unquote(password))
    if not netloc:
        raise ConfigurationError("zk:// URL names no server: use zk://host:port[,host:port]")
    for host_port in netloc.split(","):
        host, sep, port = host_port.rpartition(":")
        if not host_port or (sep and not port.isdigit()) or (sep and not host):
            raise ConfigurationError(f"zk:// URL has a bad host:port {host_port!r}")
        if sep and not 1 <= int(port) <= 65535:
            raise ConfigurationError(f"zk:// URL has a bad port in {host_port!r}: it must be from 1 to 65535")
    chroot = parts.path.rstrip("/")
    if chroot and (not chroot.startswith("/") or "//" in chroot):
        raise ConfigurationError(f"zk:// chroot must be a node path like /apps/locks, got {parts.path!r}")
    settings: dict[str, Any] = {}
    tls: dict[str, Any] = {}
    for key, values in parse_qs(parts.query, keep_blank_values=True).items():
        value = values[-1]
        if key in ("session_timeout", "timeout"):
            settings[key] = _positive(key, value)
        elif key == "root":
            settings["root"] = _check_root(value)
        elif key in _TLS_BOOL:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigurationError(f"zk:// option {key} must be true or false, got {value!r}")
            tls[key] = value.lower() in ("true", "1", "yes")
        elif key in _TLS_STR:
            tls[key] = value
        else:
            raise ConfigurationError(
                f"unknown zk:// option {key!r}: use session_timeout, timeout, root, "
                "use_ssl, verify_certs, check_hostname, ca, certfile, keyfile, keyfile_password"
            )
    return ZkSettings(hosts=netloc + chroot, auth=auth, tls=tls, **settings)


# -- errors --------------------------------------------------------------------------------------


@contextlib.contextmanager
def map_errors(what: str) -> Iterator[None]:
    """Translate kazoo's exceptions into fencelock's tree, in one place."""
    from kazoo import exceptions as kex
    from kazoo.handlers.threading import KazooTimeoutError

    try:
        yield
    except BackendError:
        raise
    except kex.AuthFailedError as err:
        raise AuthenticationFailed(f"zookeeper refused our credentials during {what}") from err
    except (
        kex.ConnectionLoss,
        kex.SessionExpiredError,  # also ConnectionClosedError: the client was stopped
        kex.OperationTimeoutError,
        kex.ConnectionDropped,
        kex.SessionMovedError,
        KazooTimeoutError,
        asyncio.TimeoutError,
        OSError,
    ) as err:
        raise BackendUnavailable(f"zookeeper unreachable during {what}: {type(err).__name__} {err}".rstrip()) from err
    except kex.NoAuthError as err:
        raise BackendRejected(
            f"zookeeper refused {what}: no permission on the lock's nodes (ACL); the client needs "
            "CREATE, DELETE and READ on the lock root"
        ) from err
    except kex.KazooException as err:
        raise BackendRejected(f"zookeeper refused {what}: {type(err).__name__} {err}".rstrip()) from err


# -- the protocol, without I/O -------------------------------------------------------------------
#
# Each primitive is a generator that yields requests (``_Call``: a kazoo ``*_async`` method and its
# arguments; ``_Watch``: block until a node changes) and receives their results (kazoo exceptions are
# thrown into it). ``_run_sync`` and ``_run_async`` drive the same generators, so the blocking and
# asyncio backends cannot drift (psycopg 3's generators/waiting split).


@dataclass(frozen=True, slots=True)
class _Call:
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Watch:
    """Watch ``path``; the result is True when it was deleted or changed within ``timeout``.
    An empty ``path`` only pauses for ``timeout`` (nothing to watch) and gives False."""

    path: str
    timeout: float


_Op = _Call | _Watch
Steps = Generator[_Op, Any, T]


@dataclass(slots=True)
class _Node:
    """One contender node of ours (keyed by lock name and token)."""

    parent: str
    tag: str
    name: str | None = None  # None while its create is in flight (the outcome may be unknown)
    czxid: int = 0
    session: int = 0
    pred: str | None = None  # the node we watch while waiting
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
class _LossWatch:
    key: str
    token: str
    session: int
    callback: Callable[[], LossCallback | None]
    """Weak for bound methods (the lease's own handler): a dropped lease must not be kept alive
    by its watch, or it could never be collected and its renewal never stop."""


class _Core:
    """Everything both backends share: the client, the protocol steps and the bookkeeping.

    Never references the backend object, so a backend nobody uses any more is collected and its
    finalizer can stop the janitor (and the client, when it is ours).
    """

    def __init__(self, client: Any, *, root: str, timeout: float, owns_client: bool, acl: Any) -> None:
        self.client = client
        self.root = _check_root(root)
        self.timeout = timeout
        self.owns_client = owns_client
        self.acl = acl
        # the timeout we ask the server for (kazoo has no public accessor, nor one for the
        # negotiated value: see "Assumptions" above)
        self.session_timeout = float(client._session_timeout) / 1000.0
        self.mutex = threading.Lock()
        self.nodes: dict[tuple[str, str], _Node] = {}
        self.watches: dict[int, _LossWatch] = {}
        self.connected = threading.Event()
        self.connect_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()
        self.cv = threading.Condition()
        self.janitor: threading.Thread | None = None
        self.next_wake = 0.0
        self.closed = False
        self._started = False
        self.pid = os.getpid()
        client.add_listener(self.on_state)
        if client.connected:
            self.connected.set()

    # -- connection --------------------------------------------------------------------------

    def ensure_started(self) -> None:
        """Start our own client once (lazily: constructing a lock does no I/O)."""
        if self.owns_client and not self._started:
            with self.mutex:
                if not self._started:
                    self._started = True
                    self.client.start_async()

    def not_connected(self) -> BackendUnavailable:
        if not self.owns_client and self.client.client_state == "CLOSED":
            return BackendUnavailable("zookeeper client is not started (call client.start() first)")
        return BackendUnavailable(
            f"zookeeper unreachable: no connection to {self.client.hosts!r} within {self.timeout:g} s"
        )

    def on_state(self, state: str) -> None:
        """kazoo state listener (connection thread; must not block): connection flag, loss events."""
        from kazoo.protocol.states import KazooState

        if state == KazooState.CONNECTED:
            self.connected.set()
            with self.mutex:
                waiters, self.connect_waiters = self.connect_waiters, set()
            for loop, fut in waiters:
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                    loop.call_soon_threadsafe(_settle_none, fut)
            session = self.session_id()
            for w in list(self.watches.values()):
                if w.session == session:
                    self.notify(w, "held", "")
                else:
                    self.notify(w, "lost", "the ZooKeeper session expired while disconnected; its lock nodes are gone")
            with self.cv:
                self.cv.notify()  # the janitor retries what failed while we were away
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

    def notify(self, watch: _LossWatch, state: str, reason: str) -> None:
        # On kazoo's callback thread, in order: a slow on_lost callback must not stall the
        # connection thread, and "doubt" must never overtake the "held" that follows it.
        from kazoo.protocol.states import Callback

        callback = watch.callback()
        if state == "lost" or callback is None:
            self.watches.pop(id(watch), None)
        if callback is not None:
            self.client.handler.dispatch_callback(Callback("fencelock", callback, (state, reason)))

    async def wait_connected(self) -> bool:
        """asyncio twin of ``connected.wait(timeout)``: no thread is held while we wait."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        entry = (loop, fut)
        with self.mutex:
            self.connect_waiters.add(entry)
        try:
            if self.connected.is_set():  # connected between the caller's check and our entry
                return True
            await asyncio.wait_for(fut, self.timeout)
            return True
        except asyncio.TimeoutError:
            return self.connected.is_set()
        finally:
            with self.mutex:
                self.connect_waiters.discard(entry)

    def session_id(self) -> int:
        cid = self.client.client_id
        return int(cid[0]) if cid else 0

    # -- bookkeeping -------------------------------------------------------------------------

    def parent(self, key: str) -> str:
        return lock_parent(self.root, key)

    def grant(self, node: _Node, started: float, ttl_ms: int) -> int:
        with self.mutex:
            node.expires = started + ttl_ms / 1000.0
            node.pred = None
        self.wake_janitor(node.expires)
        return node.czxid

    def forget(self, k: tuple[str, str], node: _Node) -> None:
        with self.mutex:
            if self.nodes.get(k) is node:
                del self.nodes[k]

    # -- protocol steps ----------------------------------------------------------------------

    def _create(self, key: str, token: str, label: str) -> Steps[_Node]:
        from kazoo.exceptions import NoNodeError

        node = _Node(parent=self.parent(key), tag=token_tag(token))
        self.nodes[(key, token)] = node  # name None: ``abandon`` searches for it if we never hear back
        for attempt in range(3):
            try:
                path, stat = yield _Call(
                    "create",
                    (f"{node.parent}/c-{node.tag}-", label.encode("utf-8", "replace")),
                    {"acl": self.acl, "ephemeral": True, "sequence": True, "include_data": True},
                )
                break
            except NoNodeError:
                # No parent yet (or an operator just deleted it). We make it ourselves rather than
                # with kazoo's ``makepath``, whose hidden retry of the create could reach the server
                # after a cancelled caller's ``abandon`` had already looked for the node.
                if attempt == 2:
                    raise
                try:
                    yield _Call("ensure_path", (node.parent,), {"acl": self.acl})
                except NoNodeError as err:
                    # kazoo creates nodes inside the chroot only, never the chroot itself
                    raise BackendRejected(
                        f"zookeeper refused to create {node.parent!r}: the chroot "
                        f"{self.client.chroot or '/'!r} does not exist; create it first"
                    ) from err
        node.name = path.rsplit("/", 1)[1]
        node.czxid = int(stat.czxid)
        node.session = int(stat.ephemeralOwner)
        return node

    def _queue(self, parent: str) -> Steps[list[str] | None]:
        from kazoo.exceptions import NoNodeError

        try:
            children = yield _Call("get_children", (parent,))
        except NoNodeError:
            return None
        return queue_order(children)

    def try_acquire(self, key: str, token: str, ttl_ms: int, label: str, queue: bool) -> Steps[Attempt]:
        started = time.monotonic()
        k = (key, token)
        for _ in range(3):
            node = self.nodes.get(k)
            if node is None or node.name is None:
                node = yield from self._create(key, token, label)
            order = (yield from self._queue(node.parent)) or []
            if node.name not in order:  # deleted under us, or our session expired: queue again
                self.forget(k, node)
                continue
            at = order.index(node.name)
            node.ttl_ms = ttl_ms
            if at == 0:
                return Attempt(fence=self.grant(node, started, ttl_ms))
            if not queue:
                yield from self._delete(node)
                self.forget(k, node)
                return Attempt(fence=None)
            node.pred = f"{node.parent}/{order[at - 1]}"
            return Attempt(fence=None)
        return Attempt(fence=None, retry_after=0.05)

    def wait(self, key: str, token: str, timeout: float) -> Steps[int | None]:
        """Watch the node before ours; when it goes away, look whether we are first now and, if so,
        the lock is ours (its fence); else None (``try_acquire`` sorts out what changed)."""
        node = self.nodes.get((key, token))
        if node is None or node.pred is None:
            # nothing to watch (our node kept vanishing): pause as asked, then try again
            yield _Watch("", min(timeout, 0.05))
            return None
        if not (yield _Watch(node.pred, timeout)):
            return None
        started = time.monotonic()
        if node.name is None:
            return None
        order = (yield from self._queue(node.parent)) or []
        if order[:1] != [node.name]:
            return None  # not first yet (the one before us gave up) or gone: try_acquire sorts it out
        return self.grant(node, started, ttl_ms=node.ttl_ms)

    def _delete(self, node: _Node) -> Steps[bool]:
        """Delete our node (searching for it when its create's answer never came); True if it existed."""
        from kazoo.exceptions import NoNodeError

        names = [node.name] if node.name is not None else []
        if not names:
            try:
                children = yield _Call("get_children", (node.parent,))
            except NoNodeError:
                return False
            names = [c for c in children if c.startswith(f"c-{node.tag}-")]
        found = False
        for name in names:
            try:
                yield _Call("delete", (f"{node.parent}/{name}",))
                found = True
            except NoNodeError:
                pass
        return found

    def abandon(self, key: str, token: str) -> Steps[None]:
        k = (key, token)
        node = self.nodes.get(k)
        if node is None:
            return
        try:
            yield from self._delete(node)
        except BaseException:
            # Could not reach the server (or were cancelled): the node may live on with our
            # session and block the queue. Hand it to the janitor, which deletes it once it can.
            with self.mutex:
                node.expires = time.monotonic()
            self.wake_janitor(node.expires)
            raise
        self.forget(k, node)

    def extend(self, key: str, token: str, ttl_ms: int) -> Steps[bool]:
        started = time.monotonic()
        k = (key, token)
        node = self.nodes.get(k)
        if node is None or node.name is None:
            return False
        with self.mutex:
            if node.reaping or node.expires is None or node.expires <= started:
                return False  # ran out: the janitor deletes it (or did)
            # Stretched before asking, so the janitor cannot delete the node while the answer is on
            # its way (we would then report a lease that no longer exists as extended).
            previous = node.expires
            node.expires = max(previous, started + ttl_ms / 1000.0)
        try:
            stat = yield _Call("exists", (node.path,))
        except BaseException:
            with self.mutex:  # not extended after all: the lease ends when it would have
                node.expires = previous
            raise
        if stat is None or int(stat.ephemeralOwner) != node.session or node.session != self.session_id():
            self.forget(k, node)
            return False
        with self.mutex:
            node.expires = started + ttl_ms / 1000.0
        self.wake_janitor(node.expires)
        return True

    def release(self, key: str, token: str) -> Steps[bool]:
        now = time.monotonic()
        k = (key, token)
        with self.mutex:
            node = self.nodes.get(k)
            if node is None or node.name is None or node.reaping:
                return False
            expired = node.expires is None or node.expires <= now
            node.reaping = True
        try:
            existed = yield from self._delete(node)
        except BaseException:
            with self.mutex:  # the janitor retries: the holder is done with it either way
                node.reaping = False
                node.expires = now
            self.wake_janitor(now)
            raise
        self.forget(k, node)
        return existed and not expired

    def inspect(self, key: str) -> Steps[LockInfo | None]:
        from kazoo.exceptions import NoNodeError

        parent = self.parent(key)
        for _ in range(3):
            order = yield from self._queue(parent)
            if not order:
                return None
            try:
                data, stat = yield _Call("get", (f"{parent}/{order[0]}",))
            except NoNodeError:
                continue  # released meanwhile: look again
            label = (data or b"").decode("utf-8", "replace")
            return LockInfo(key, int(stat.czxid), label, None, len(order) - 1)
        return None

    def force_release(self, key: str) -> Steps[str | None]:
        """Operator's override: delete the holder's node whoever it is; returns its holder label
        (None when free). Its holder learns at its next renewal; the next waiter gets the lock."""
        from kazoo.exceptions import NoNodeError

        parent = self.parent(key)
        for _ in range(3):
            order = yield from self._queue(parent)
            if not order:
                return None
            path = f"{parent}/{order[0]}"
            try:
                data, _ = yield _Call("get", (path,))
                yield _Call("delete", (path,))
            except NoNodeError:
                continue  # released meanwhile: look at the new holder
            return (data or b"").decode("utf-8", "replace")
        return None

    # -- loss events -------------------------------------------------------------------------

    def watch_loss(self, key: str, token: str, callback: LossCallback) -> Unsubscribe:
        node = self.nodes.get((key, token))
        getter: Callable[[], LossCallback | None]
        if hasattr(callback, "__self__"):
            getter = weakref.WeakMethod(callback)
        else:
            getter = lambda: callback  # noqa: E731
        watch = _LossWatch(key, token, node.session if node is not None else self.session_id(), getter)
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

    # -- janitor: server-side end of leases, deletions that failed ---------------------------

    def wake_janitor(self, due: float) -> None:
        with self.cv:
            if self.closed:
                return
            if self.janitor is None:
                self.janitor = threading.Thread(target=self._janitor_loop, name="fencelock-zk-janitor", daemon=True)
                self.janitor.start()
            elif due < self.next_wake:
                # only when it must wake earlier than planned: a notify per acquire would cost a
                # context switch each time, and most leases are released long before their end
                self.cv.notify()

    def _janitor_loop(self) -> None:
        while True:
            with self.cv:
                if self.closed:
                    return
                now = time.monotonic()
                dues = [d for n in list(self.nodes.values()) if (d := n.due()) is not None]
                sleep = min([JANITOR_MAX_SLEEP, *(d - now for d in dues)])
                if sleep > 0:
                    self.next_wake = now + sleep
                    self.cv.wait(sleep)
                    continue
                self.next_wake = now
            try:
                self._reap_due()
            except Exception:  # never let the janitor die: leases would stop ending on the server
                log.exception("fencelock zookeeper janitor failed; retrying")
                time.sleep(JANITOR_MAX_SLEEP)

    def _reap_due(self) -> None:
        now = time.monotonic()
        session = self.session_id()
        due: list[tuple[tuple[str, str], _Node]] = []
        with self.mutex:
            for k, node in list(self.nodes.items()):
                when = node.due()
                if when is None or when > now:
                    continue
                if node.name is not None and node.session != session and session != 0:
                    del self.nodes[k]  # its session is gone, and ZooKeeper deleted the node with it
                    continue
                node.reaping = True
                due.append((k, node))
        if due and not self.connected.wait(min(self.timeout, JANITOR_MAX_SLEEP)):
            with self.mutex:
                for _, node in due:
                    node.reaping = False
            return
        for k, node in due:
            try:
                _run_sync(self, self._delete(node), "delete an expired lease")
            except BackendError as err:
                log.warning("could not delete an expired lock node under %s (will retry): %s", node.parent, err)
                with self.mutex:
                    node.reaping = False
                    node.retry_at = time.monotonic() + JANITOR_MAX_SLEEP
                continue
            with self.mutex:
                if self.nodes.get(k) is node:
                    del self.nodes[k]

    def shutdown(self, from_gc: bool = False) -> None:
        """Stop the janitor and our listener; stop the client only if it is ours (which closes
        its session, so ZooKeeper deletes its nodes at once)."""
        if os.getpid() != self.pid:
            return  # a forked child: the client, its threads, session and our locks are the parent's
        with self.cv:
            self.closed = True
            self.cv.notify_all()
        self.client.remove_listener(self.on_state)
        if not self.owns_client:
            return
        if from_gc and threading.current_thread() is not threading.main_thread():
            # The collector may run us on one of kazoo's own threads, and stop() joins them.
            try:
                threading.Thread(target=_stop_client, args=(self.client,), daemon=True).start()
                return
            except RuntimeError:  # interpreter shutting down: no new threads
                pass
        _stop_client(self.client)


def _stop_client(client: Any) -> None:
    with contextlib.suppress(Exception):
        client.stop()
    with contextlib.suppress(Exception):
        client.close()


# -- drivers -------------------------------------------------------------------------------------


def _run_sync(core: _Core, steps: Steps[T], what: str) -> T:
    """Drive ``steps`` with blocking kazoo calls, each bounded by ``core.timeout``.

    Errors go into the generator (so its cleanup runs, e.g. ``abandon`` handing its node to the
    janitor) and come out translated. While disconnected, a request waits (bounded) for the
    connection instead of being queued inside kazoo, where it could run much later.
    """
    from kazoo.exceptions import KazooException

    core.ensure_started()
    with map_errors(what):
        reply: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    op = steps.throw(error) if error is not None else steps.send(reply)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
                reply, error = None, None
                try:
                    if not core.connected.is_set() and not core.connected.wait(core.timeout):
                        raise core.not_connected()
                    if isinstance(op, _Watch):
                        reply = _watch_sync(core, op)
                    else:
                        reply = getattr(core.client, op.method + "_async")(*op.args, **op.kwargs).get(
                            timeout=core.timeout
                        )
                except (KazooException, OSError, BackendUnavailable, core.client.handler.timeout_exception) as err:
                    error = err
        finally:
            steps.close()


def _watch_sync(core: _Core, op: _Watch) -> bool:
    from kazoo.protocol.states import EventType

    if not op.path:
        time.sleep(max(0.0, op.timeout))
        return False
    fired = threading.Event()
    kind: list[str] = []

    def on_event(event: Any) -> None:
        kind.append(event.type)
        fired.set()

    stat = core.client.exists_async(op.path, watch=on_event).get(timeout=core.timeout)
    if stat is None:
        return True
    if not fired.wait(max(0.0, op.timeout)):
        return False
    return bool(kind) and kind[0] != EventType.NONE  # NONE: the connection dropped, not the node


async def _run_async(core: _Core, steps: Steps[T], what: str) -> T:
    """Drive ``steps`` with kazoo's async results bridged to asyncio futures (no thread blocks);
    otherwise exactly as ``_run_sync``."""
    from kazoo.exceptions import KazooException

    core.ensure_started()
    with map_errors(what):
        reply: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    op = steps.throw(error) if error is not None else steps.send(reply)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
                reply, error = None, None
                try:
                    if not core.connected.is_set() and not await core.wait_connected():
                        raise core.not_connected()
                    if isinstance(op, _Watch):
                        reply = await _watch_async(core, op)
                    else:
                        ares = getattr(core.client, op.method + "_async")(*op.args, **op.kwargs)
                        reply = await asyncio.wait_for(_future(ares), core.timeout)
                except (KazooException, OSError, BackendUnavailable, asyncio.TimeoutError) as err:
                    error = err
        finally:
            steps.close()


def _settle_none(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _future(ares: Any) -> asyncio.Future[Any]:
    """An asyncio future settled by a kazoo ``IAsyncResult`` (whose callbacks run on kazoo's thread)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any) -> None:
        if fut.done():
            return
        try:
            fut.set_result(result.get_nowait())
        except BaseException as err:
            fut.set_exception(err)

    def done(result: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, result)

    ares.rawlink(done)
    return fut


async def _watch_async(core: _Core, op: _Watch) -> bool:
    from kazoo.protocol.states import EventType

    if not op.path:
        await asyncio.sleep(max(0.0, op.timeout))
        return False
    loop = asyncio.get_running_loop()
    fired: asyncio.Future[bool] = loop.create_future()

    def settle(kind: Any) -> None:
        if not fired.done():
            fired.set_result(kind != EventType.NONE)

    def on_event(event: Any) -> None:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, event.type)

    stat = await asyncio.wait_for(_future(core.client.exists_async(op.path, watch=on_event)), core.timeout)
    if stat is None:
        return True
    try:
        return await asyncio.wait_for(fired, max(0.0, op.timeout))
    except asyncio.TimeoutError:
        return False


# -- the backends --------------------------------------------------------------------------------


def _make_client(settings: ZkSettings) -> tuple[Any, Any]:
    """A KazooClient for ``settings`` (not started) and the ACL our nodes get."""
    try:
        from kazoo.client import KazooClient
        from kazoo.security import make_digest_acl
    except ImportError as err:  # pragma: no cover - an optional dependency
        raise ConfigurationError("the ZooKeeper backend needs kazoo: pip install 'fencelock[zookeeper]'") from err
    acl = None
    kwargs: dict[str, Any] = dict(settings.tls)
    if settings.auth is not None:
        user, password = settings.auth
        kwargs["auth_data"] = [("digest", f"{user}:{password}")]
        acl = [make_digest_acl(user, password, all=True)]
    client = KazooClient(
        hosts=settings.hosts,
        timeout=settings.session_timeout,
        # reconnect quickly after an outage (kazoo's default backs off to a minute)
        connection_retry={"max_tries": -1, "delay": 0.05, "backoff": 2, "max_delay": 1.0},
        **kwargs,
    )
    return client, acl


def _check_client(client: Any) -> None:
    try:
        from kazoo.client import KazooClient
    except ImportError as err:  # pragma: no cover
        raise ConfigurationError("the ZooKeeper backend needs kazoo: pip install 'fencelock[zookeeper]'") from err
    if not isinstance(client, KazooClient):
        raise ConfigurationError(f"expected a kazoo KazooClient, got {type(client).__name__}")


# One core (client, session, janitor thread, bookkeeping) per client: a lock per file in the demo
# would otherwise open a ZooKeeper session and three threads per file. Locks made from the same URL
# in one process share the client fencelock creates for it; locks given the same KazooClient share
# one core for it. Tokens keep their nodes apart; the last backend closed stops the core.
_cores_mutex = threading.Lock()
_cores_owner = 0  # thread id holding _cores_mutex (see _detach_from_gc)
_cores: dict[tuple[Any, ...], list[Any]] = {}  # key -> [core, number of backends using it]


def _attach_core(key: tuple[Any, ...], make: Callable[[], _Core]) -> _Core:
    global _cores_owner
    with _cores_mutex:
        _cores_owner = threading.get_ident()
        try:
            entry = _cores.get(key)
            if entry is None or entry[0].closed:
                entry = _cores[key] = [make(), 0]
            entry[1] += 1
            return entry[0]  # type: ignore[no-any-return]
        finally:
            _cores_owner = 0


def _detach_core(key: tuple[Any, ...], core: _Core, from_gc: bool) -> None:
    global _cores_owner
    with _cores_mutex:
        _cores_owner = threading.get_ident()
        try:
            entry = _cores.get(key)
            if entry is not None and entry[0] is core:
                entry[1] -= 1
                if entry[1] > 0:
                    return
                del _cores[key]
        finally:
            _cores_owner = 0
    core.shutdown(from_gc)


def _after_fork_in_child() -> None:
    # The parent's cores stay the parent's (their keys carry its pid, their shutdown does nothing in
    # a child); a lock another thread held at fork time would never be released here.
    global _cores_mutex, _cores_owner
    _cores_mutex = threading.Lock()
    _cores_owner = 0
    _cores.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _detach_from_gc(key: tuple[Any, ...], core: _Core) -> None:
    """Finalizer of a backend dropped without close(). The collector can run it anywhere, also in
    this very thread while it holds ``_cores_mutex`` (inside ``_attach_core``): then detach from
    another thread instead of deadlocking on our own lock."""
    if _cores_owner != threading.get_ident():
        _detach_core(key, core, True)
        return
    with contextlib.suppress(RuntimeError):  # interpreter shutting down: the process exit closes all
        threading.Thread(target=_detach_core, args=(key, core, True), daemon=True).start()


class _Base:
    name = "zookeeper"
    _core: _Core
    _finalizer: weakref.finalize[[tuple[Any, ...], _Core], _Base]

    def __init__(self, client: Any, *, root: str = DEFAULT_ROOT, timeout: float = DEFAULT_TIMEOUT) -> None:
        _check_client(client)
        if not timeout > 0:
            raise ConfigurationError(f"timeout must be a positive number of seconds, got {timeout!r}")
        _check_root(root)
        self._attach(
            ("client", id(client), root, timeout),
            lambda: _Core(client, root=root, timeout=timeout, owns_client=False, acl=None),
        )

    def _attach(self, key: tuple[Any, ...], make: Callable[[], _Core]) -> None:
        self._core = _attach_core(key, make)
        # detaches (stopping the janitor, and our own client, with the last user) when the backend
        # is dropped without close()
        self._finalizer = weakref.finalize(self, _detach_from_gc, key, self._core)

    @classmethod
    def _from_url(cls, url: str) -> Any:
        settings = parse_zk_url(url)

        def make() -> _Core:
            client, acl = _make_client(settings)
            return _Core(client, root=settings.root, timeout=settings.timeout, owns_client=True, acl=acl)

        backend = cls.__new__(cls)
        backend._attach(("url", os.getpid(), url), make)
        return backend

    def _detach(self) -> Callable[[], None] | None:
        found = self._finalizer.detach()
        if found is None:
            return None
        _, _, (key, core) = found[:3]
        return lambda: _detach_core(key, core, False)

    @property
    def client(self) -> Any:
        return self._core.client

    @property
    def max_lease(self) -> float:
        """The session timeout: a node (and so a lease) cannot outlive its session."""
        return self._core.session_timeout

    def watch_loss(self, key: str, token: str, callback: LossCallback) -> Unsubscribe:
        return self._core.watch_loss(key, token, callback)


class ZooKeeperBackend(_Base):
    """fencelock on ZooKeeper, blocking. Pass your own started ``KazooClient`` (never stopped by us)
    or use ``from_url``. See the module docstring for the protocol."""

    @classmethod
    def from_url(cls, url: str) -> ZooKeeperBackend:
        """A backend on the client fencelock keeps for ``url`` in this process (created on first use)."""
        backend: ZooKeeperBackend = cls._from_url(url)
        return backend

    def try_acquire(self, key: str, token: str, ttl_ms: int, label: str, queue: bool) -> Attempt:
        return _run_sync(self._core, self._core.try_acquire(key, token, ttl_ms, label, queue), "acquire")

    def wait(self, key: str, token: str, timeout: float) -> int | None:
        return _run_sync(self._core, self._core.wait(key, token, timeout), "wait")

    def abandon(self, key: str, token: str) -> None:
        _run_sync(self._core, self._core.abandon(key, token), "abandon")

    def extend(self, key: str, token: str, ttl_ms: int) -> bool:
        return _run_sync(self._core, self._core.extend(key, token, ttl_ms), "extend")

    def release(self, key: str, token: str) -> bool:
        return _run_sync(self._core, self._core.release(key, token), "release")

    def inspect(self, key: str) -> LockInfo | None:
        return _run_sync(self._core, self._core.inspect(key), "inspect")

    def force_release(self, key: str) -> str | None:
        """Operator's override (``fencelock release --force``): delete the holder's node."""
        return _run_sync(self._core, self._core.force_release(key), "force release")

    def close(self) -> None:
        detach = self._detach()
        if detach is not None:
            detach()


class AsyncZooKeeperBackend(_Base):
    """fencelock on ZooKeeper for asyncio: the same protocol, kazoo's async results awaited as
    futures, so no kazoo call blocks the event loop and no thread is held while waiting."""

    @classmethod
    def from_url(cls, url: str) -> AsyncZooKeeperBackend:
        """A backend on the client fencelock keeps for ``url`` in this process (created on first use)."""
        backend: AsyncZooKeeperBackend = cls._from_url(url)
        return backend

    async def try_acquire(self, key: str, token: str, ttl_ms: int, label: str, queue: bool) -> Attempt:
        return await _run_async(self._core, self._core.try_acquire(key, token, ttl_ms, label, queue), "acquire")

    async def wait(self, key: str, token: str, timeout: float) -> int | None:
        return await _run_async(self._core, self._core.wait(key, token, timeout), "wait")

    async def abandon(self, key: str, token: str) -> None:
        await _run_async(self._core, self._core.abandon(key, token), "abandon")

    async def extend(self, key: str, token: str, ttl_ms: int) -> bool:
        return await _run_async(self._core, self._core.extend(key, token, ttl_ms), "extend")

    async def release(self, key: str, token: str) -> bool:
        return await _run_async(self._core, self._core.release(key, token), "release")

    async def inspect(self, key: str) -> LockInfo | None:
        return await _run_async(self._core, self._core.inspect(key), "inspect")

    async def force_release(self, key: str) -> str | None:
        """Operator's override: delete the holder's node."""
        return await _run_async(self._core, self._core.force_release(key), "force release")

    async def aclose(self) -> None:
        detach = self._detach()
        if detach is not None:
            # kazoo's stop() joins its threads: do it off the loop
            await asyncio.to_thread(detach)
