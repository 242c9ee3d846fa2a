"""The contract every backend implements: a handful of primitives, no policy.

The lock handle (``fencelock._async.lock`` and its generated sync twin) owns all policy: timeouts,
deadlines, retries, renewal, lost-lease signals. A backend only answers single questions against
its server, each in as few round trips as it can.

Each primitive exists twice with the same meaning: ``Backend`` (blocking) and ``AsyncBackend``
(asyncio). ``ttl_ms`` is the lease length the holder asked for; ``key`` is the lock name as the
user gave it (the backend maps it to its own keys/paths safely: a name is data, never code);
``token`` is the holder's 128-bit secret.

Counted leases. Every name holds at most ``limit`` permits, and each holder takes ``weight`` of
them: a mutex is 1 of 1, a semaphore's permit 1 of N, a read-write lock's reader 1 of ``RW_LIMIT``
and its writer all ``RW_LIMIT``. While a name has holders or queued waiters, every request must
carry the same limit: one with another (a semaphore of 3 where others use 5, a mutex where others
run a semaphore) raises ``LimitMismatch``, never silently merges; an idle name takes the limit of
its next user (so a redeploy may change a limit once the old clients are gone). Every grant,
whatever its weight, mints the name's next fence. Waiting is first come, first served: a request is
granted only when no live waiter is ahead of it and its weight fits in the free permits; a release
hands the freed permits to the waiters at the head of the queue, as many as fit (so all the readers
queued behind a writer get in together).

Required primitives:

- ``try_acquire(key, token, ttl_ms, label, queue, limit=1, weight=1)``: one attempt. Returns
  ``Attempt(fence=...)`` when the permits are now ours, else ``Attempt(fence=None,
  retry_after=seconds or None)``. With ``queue=True`` the backend enqueues ``token`` so that it is
  served first come, first served. Asking again with a token that already holds answers with its
  fence (and refreshes the lease). The other primitives find a token's lease by its token alone.
- ``wait(key, token, timeout)``: block at most ``timeout`` seconds until it may be worth trying
  again. Returns the fence when the lock was *handed over* to ``token`` meanwhile (it is ours for
  the full TTL, granted after the previous ``try_acquire`` was sent: the lease is measured from that
  send), else None (then the handle calls ``try_acquire`` again).
- ``abandon(key, token)``: we stop waiting (timeout, cancellation, error): leave the queue, and if
  the lock was handed or granted to us meanwhile (an answer we never read), pass it on. Idempotent,
  safe to call at any time.
- ``extend(key, token, ttl_ms)``: True if the lock is still ours and now lasts ``ttl_ms`` from now;
  False (and nothing changed) when it is not ours any more.
- ``release(key, token)``: True if it was ours and is now released (or handed on); False if it was
  not ours any more (expired and maybe taken): then nothing was changed.
- ``inspect(key)``: a ``LockInfo`` (every holder of a counted name in ``holders``), or None when free.
- ``close()`` / ``aclose()``: release connections the backend opened itself (never the user's own client).

Every primitive raises ``BackendUnavailable`` (or another ``BackendError``) within the backend's
``request_timeout`` (plus, for ``wait``, the timeout asked for) when the server cannot answer;
none returns a value that could be mistaken for contention.

Optional abilities are small protocols, checked with ``isinstance`` once per backend class:

- ``WatchesLoss``: the backend learns of a loss by itself (ZooKeeper session events) and calls
  ``callback(state, reason)`` from any thread; the others are found out by renewal alone.
- ``CapsLease``: ``max_lease`` seconds, the longest lease the backend can vouch for (ZooKeeper:
  its session timeout); a lock with a longer ``ttl`` is shortened to it, renewal in proportion.
- ``ForceReleases`` and ``KnowsLastFence``: what the operator CLI can use when it is there
  (``fencelock release --force``, the last fence in ``fencelock status``).
- ``WaitsOnLoop``: a blocking backend's ``async_wait`` coroutine, which ``offload.Offloaded`` uses
  for its asyncio ``wait`` (see below).

``OPTIONAL`` lists them with the attribute each names; wrappers (``Passthrough``, ``Offloaded``)
take exactly the abilities of what they wrap from it, so a new ability is one protocol added there.

Construction (what the registry in ``backends/__init__.py`` calls; not part of the protocols,
which describe instances): each class has a ``from_url(url)`` classmethod, which parses the URL
without I/O and raises ``ConfigurationError`` for a bad one; a backend that takes users' own
clients (``BackendSpec.clients``) is made with ``cls(client)``, or ``cls.for_client(client)`` when
it has one (to share one instance among the locks given the same client), and never closes that
client. A ``request_timeout`` attribute (seconds) is the bound on one call to a server that does
not answer (below).

How a backend serves both APIs (pick by what its client library offers):

1. The library has a blocking and an asyncio API of the same shape (redis-py, psycopg 3): write the
   asyncio backend; ``scripts/unasync.py`` generates the blocking one (CI checks it is current).
2. The library is blocking only (sqlite3, kazoo): write the blocking backend; ``offload.Offloaded``
   makes the asyncio one, each call in a worker thread that a cancellation waits for. If waiting
   would hold a thread for long, give the blocking backend an ``async_wait`` coroutine on the
   library's own wake-up source (a socket, a watch callback): the adapter uses it instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .._errors import ConfigurationError

__all__ = [
    "RW_LIMIT",
    "AsyncBackend",
    "Attempt",
    "Backend",
    "CapsLease",
    "ForceReleases",
    "HolderInfo",
    "KnowsLastFence",
    "LockInfo",
    "LossCallback",
    "Passthrough",
    "OPTIONAL",
    "Unsubscribe",
    "WaitsOnLoop",
    "WatchesLoss",
    "check_counted",
    "optional_abilities",
]

RW_LIMIT = 1 << 30
"""The limit of a read-write lock's name: a reader takes 1 permit, a writer all of them."""



def check_counted(limit: object, weight: object) -> None:
    """A counted request's shape, checked by every backend before any I/O: 1 <= limit <= RW_LIMIT,
    1 <= weight <= limit (bad ones are the caller's bug)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= RW_LIMIT:
        raise ConfigurationError(f"limit must be an integer from 1 to {RW_LIMIT} (a read-write lock), got {limit!r}")
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= limit:
        raise ConfigurationError(f"weight must be an integer from 1 to the limit ({limit}), got {weight!r}")


LossCallback = Callable[[str, str], None]
"""``callback(state, reason)``; ``state`` is ``"doubt"`` (connection suspended: the lease may be gone),
``"held"`` (recovered: the session survived) or ``"lost"`` (gone for good)."""
Unsubscribe = Callable[[], None]


@dataclass(frozen=True, slots=True)
class Attempt:
    """Outcome of one ``try_acquire``: ``fence`` when granted, else an optional retry hint."""

    fence: int | None
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class HolderInfo:
    """One holder of a name's permits (one lease)."""

    fence: int
    holder: str
    """Its label (``hostname:pid`` by default; an election candidate's value). Never the token."""
    ttl_remaining: float | None
    weight: int = 1


@dataclass(frozen=True, slots=True)
class LockInfo:
    """What a backend can tell about a held name (for ``fencelock status`` and debugging).

    ``fence``, ``holder`` and ``ttl_remaining`` describe the newest grant (the highest fence: for a
    mutex or an election, *the* holder); ``holders`` lists every current holder, oldest grant first
    (empty means only the newest is known), and ``limit`` the name's permits (1: a mutex)."""

    name: str
    fence: int
    holder: str
    ttl_remaining: float | None
    waiters: int | None = None
    holders: tuple[HolderInfo, ...] = ()
    limit: int = 1


@runtime_checkable
class Backend(Protocol):
    """Blocking backend primitives (see the module docstring for their meaning)."""

    name: str
    """Short backend name used in errors and logs: ``redis``, ``zookeeper``, ``sqlite``."""

    def try_acquire(
        self, key: str, token: str, ttl_ms: int, label: str, queue: bool, limit: int = 1, weight: int = 1
    ) -> Attempt: ...

    def wait(self, key: str, token: str, timeout: float) -> int | None: ...

    def abandon(self, key: str, token: str) -> None: ...

    def extend(self, key: str, token: str, ttl_ms: int) -> bool: ...

    def release(self, key: str, token: str) -> bool: ...

    def inspect(self, key: str) -> LockInfo | None: ...

    def close(self) -> None: ...


@runtime_checkable
class AsyncBackend(Protocol):
    """asyncio backend primitives (see the module docstring for their meaning)."""

    name: str

    async def try_acquire(
        self, key: str, token: str, ttl_ms: int, label: str, queue: bool, limit: int = 1, weight: int = 1
    ) -> Attempt: ...

    async def wait(self, key: str, token: str, timeout: float) -> int | None: ...

    async def abandon(self, key: str, token: str) -> None: ...

    async def extend(self, key: str, token: str, ttl_ms: int) -> bool: ...

    async def release(self, key: str, token: str) -> bool: ...

    async def inspect(self, key: str) -> LockInfo | None: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class WatchesLoss(Protocol):
    """A backend that learns of a lost lease by itself (both APIs: the callback may come from any thread)."""

    def watch_loss(self, key: str, token: str, callback: LossCallback) -> Unsubscribe: ...


@runtime_checkable
class CapsLease(Protocol):
    """A backend that cannot vouch for a lease longer than ``max_lease`` seconds."""

    @property
    def max_lease(self) -> float: ...


@runtime_checkable
class ForceReleases(Protocol):
    """An operator may delete the lock whatever its token (``fencelock release --force``)."""

    def force_release(self, key: str) -> str | None:
        """Delete the lock now; returns who held it (the label), or None when it was free."""
        ...


@runtime_checkable
class KnowsLastFence(Protocol):
    """The backend can tell the last fence it issued for a name (``fencelock status``)."""

    def last_fence(self, key: str) -> int:
        """The last fence issued for ``key`` (0 when none)."""
        ...


@runtime_checkable
class WaitsOnLoop(Protocol):
    """A blocking backend that can also wait on the event loop, on its library's own wake-up
    source (``offload.Offloaded`` uses it instead of holding a worker thread for the wait)."""

    async def async_wait(self, key: str, token: str, timeout: float) -> int | None: ...


OPTIONAL: tuple[tuple[type, str], ...] = (
    (WatchesLoss, "watch_loss"),
    (CapsLease, "max_lease"),
    (ForceReleases, "force_release"),
    (KnowsLastFence, "last_fence"),
    (WaitsOnLoop, "async_wait"),
)
"""Every optional ability: its protocol and the attribute it names (one each)."""


def optional_abilities(backend: object) -> list[str]:
    """The attributes of the optional abilities ``backend`` has, each asked with ``isinstance``."""
    return [attr for protocol, attr in OPTIONAL if isinstance(backend, protocol)]


class Passthrough:
    """A blocking backend that forwards every primitive to ``inner``: subclass it to observe or
    hook some of them (the CLI notes the grant, the demo records renewals, tests delay replies).

    The optional abilities of ``inner`` are copied as instance attributes, so the wrapper has
    exactly the abilities of what it wraps (Python 3.12+ checks runtime protocols with
    ``getattr_static``: ``__getattr__`` delegation would be invisible there)."""

    _dynamic_abilities = True  # abilities depend on the wrapped backend, not on this class

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        for attr in optional_abilities(inner):
            if attr != "async_wait":  # a blocking wrapper has no event loop to wait on
                setattr(self, attr, getattr(inner, attr))

    def try_acquire(
        self, key: str, token: str, ttl_ms: int, label: str, queue: bool, limit: int = 1, weight: int = 1
    ) -> Attempt:
        if limit == 1 and weight == 1:
            return self.inner.try_acquire(key, token, ttl_ms, label, queue)
        return self.inner.try_acquire(key, token, ttl_ms, label, queue, limit, weight)

    def wait(self, key: str, token: str, timeout: float) -> int | None:
        return self.inner.wait(key, token, timeout)

    def abandon(self, key: str, token: str) -> None:
        self.inner.abandon(key, token)

    def extend(self, key: str, token: str, ttl_ms: int) -> bool:
        return self.inner.extend(key, token, ttl_ms)

    def release(self, key: str, token: str) -> bool:
        return self.inner.release(key, token)

    def inspect(self, key: str) -> LockInfo | None:
        return self.inner.inspect(key)

    def close(self) -> None:
        self.inner.close()
