"""The contract every backend implements: a handful of primitives, no policy.

The lock handle (``fencelock._async.lock`` and its generated sync twin) owns all policy: timeouts,
deadlines, retries, renewal, lost-lease signals. A backend only answers single questions against
its server, each in as few round trips as it can. A new backend is one small file.

Each primitive exists twice with the same meaning: ``Backend`` (blocking) and ``AsyncBackend``
(asyncio). ``ttl_ms`` is the lease length the holder asked for; ``key`` is the lock name as the
user gave it (the backend maps it to its own keys/paths safely: a name is data, never code).

Primitives:

- ``try_acquire(key, token, ttl_ms, label, queue)``: one attempt. Returns ``Attempt(fence=...)`` when
  the lock is now ours, else ``Attempt(fence=None, retry_after=seconds or None)``. With ``queue=True``
  the backend may enqueue ``token`` so that it is served first come, first served.
- ``wait(key, token, timeout)``: block at most ``timeout`` seconds until it may be worth trying again.
  Returns True when the backend *handed the lock over* to ``token`` (then call ``claim``), or an
  ``Attempt`` with a fence when the handover already made the lock ours for the full TTL at a moment
  after the previous ``try_acquire`` was sent (the lease is measured from that send).
- ``claim(key, token, ttl_ms, label)``: take a lock that was handed over; returns the fence or None.
- ``abandon(key, token)``: we stop waiting (timeout, cancellation): leave the queue, and if the lock
  was handed to us meanwhile, pass it on. Must be safe to call at any time.
- ``extend(key, token, ttl_ms)``: True if the lock is still ours and now lasts ``ttl_ms`` from now.
- ``release(key, token)``: True if it was ours and is now released (or handed on); False if it was
  not ours any more (expired and maybe taken): then nothing was changed.
- ``inspect(key)``: a ``LockInfo`` or None when free.
- ``watch_loss(key, token, callback)``: for backends that learn of a loss by themselves (ZooKeeper
  session events); call ``callback(state, reason)`` from any thread. Returns an un-subscribe function.
- ``close()`` / ``aclose()``: release connections the backend opened itself (never the user's own client).

Optional attribute ``max_lease`` (seconds): the longest lease the backend can vouch for (ZooKeeper:
its session timeout). A lock with a longer ``ttl`` is shortened to it, renewal in proportion.

Every primitive raises ``BackendUnavailable`` (or another ``BackendError``) within a bounded time
when the server cannot answer; none returns a value that could be mistaken for contention.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Attempt", "AsyncBackend", "Backend", "LockInfo", "LossCallback", "Unsubscribe"]

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
class LockInfo:
    """What a backend can tell about a held lock (for ``fencelock status`` and debugging)."""

    name: str
    fence: int
    holder: str
    ttl_remaining: float | None
    waiters: int | None = None


@runtime_checkable
class Backend(Protocol):
    """Blocking backend primitives (see the module docstring for their meaning)."""

    name: str
    """Short backend name used in errors and logs: ``redis``, ``zookeeper``, ``sqlite``."""

    def try_acquire(self, key: str, token: str, ttl_ms: int, label: str, queue: bool) -> Attempt: ...

    def wait(self, key: str, token: str, timeout: float) -> bool | Attempt: ...

    def claim(self, key: str, token: str, ttl_ms: int, label: str) -> int | None: ...

    def abandon(self, key: str, token: str) -> None: ...

    def extend(self, key: str, token: str, ttl_ms: int) -> bool: ...

    def release(self, key: str, token: str) -> bool: ...

    def inspect(self, key: str) -> LockInfo | None: ...

    def watch_loss(self, key: str, token: str, callback: LossCallback) -> Unsubscribe: ...

    def close(self) -> None: ...


@runtime_checkable
class AsyncBackend(Protocol):
    """asyncio backend primitives (see the module docstring for their meaning)."""

    name: str

    async def try_acquire(self, key: str, token: str, ttl_ms: int, label: str, queue: bool) -> Attempt: ...

    async def wait(self, key: str, token: str, timeout: float) -> bool | Attempt: ...

    async def claim(self, key: str, token: str, ttl_ms: int, label: str) -> int | None: ...

    async def abandon(self, key: str, token: str) -> None: ...

    async def extend(self, key: str, token: str, ttl_ms: int) -> bool: ...

    async def release(self, key: str, token: str) -> bool: ...

    async def inspect(self, key: str) -> LockInfo | None: ...

    def watch_loss(self, key: str, token: str, callback: LossCallback) -> Unsubscribe: ...

    async def aclose(self) -> None: ...


def no_loss_watch(key: str, token: str, callback: LossCallback) -> Unsubscribe:
    """``watch_loss`` for backends whose losses are found by renewal only."""
    return _noop


def _noop() -> None:
    return None
