"""Coordination beyond the mutex: ``Semaphore``, ``ReadWriteLock`` and ``Election``, on the same lease.

Source of truth for both APIs, like ``lock.py`` (``scripts/unasync.py`` generates ``_sync/``). Each is
the lock handle with another shape of counted lease (``fencelock.backends.base``, "Counted leases"):
the policy (bounded waits, deadlines, renewal, every loss signal, reentrancy, fork and cancellation
safety) is the lock's, written once; a backend only answers "may this token take ``weight`` of the
name's ``limit`` permits". So every lease is the same ``Lease``: its fence goes to
``fencelock.fencing`` unchanged.

- ``Semaphore(name, backend, limit=N)``: at most ``N`` leases valid at once. Every permit's fence is
  unique and strictly increasing in grant order for that name; waiters are served first come, first
  served and woken by a release.
- ``ReadWriteLock(name, backend)``: ``.read()`` and ``.write()`` are locks on one name. Many readers
  or one writer; once a writer waits, readers that come after it queue behind it (writers are not
  starved), and a writer's release lets every reader queued behind it in together. Fences: every
  grant, reader or writer, takes the name's next fence, so writers' fences strictly increase and a
  reader's fence is higher than every writer's before it and lower than every writer's after it.
  What a reader's fence is good for: a reader that writes back what it read (a cache fill, a
  derived summary) passes its fence to ``fencing.admit`` for that output, and a late write-back of a
  reader that was paused is refused once a later writer's fence was accepted there.
- ``Election(name, backend, value=...)``: ``campaign()`` returns a lease once this candidate leads;
  its fence is the *term*, strictly increasing. ``leader()`` says who leads now (value and term);
  ``observe()`` reports every change of leader. Resigning is releasing the lease. A leader paused or
  cut off past its lease is told by every loss signal, and its term is superseded by the next one:
  storage that admits terms (``fencing.admit``) refuses the deposed leader's late writes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from .._core.params import DEFAULT_ACQUIRE_TIMEOUT, DEFAULT_TTL, Clock, check_label, check_timeout
from .._core.types import Leader
from .._errors import ConfigurationError
from ..backends import open_async_backend
from ..backends.base import RW_LIMIT, AsyncBackend, LockInfo
from . import _compat
from .lock import AsyncLease, AsyncLock, LostCallback

__all__ = ["MAX_PERMITS", "AsyncElection", "AsyncReadWriteLock", "AsyncSemaphore", "Leader"]

MAX_PERMITS = 100_000
"""The most permits a semaphore may have (each holder is a record on the server)."""


def check_limit(limit: object) -> int:
    """A semaphore's permits: an int from 1 to ``MAX_PERMITS``."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PERMITS:
        raise ConfigurationError(
            f"limit must be a whole number of permits from 1 to {MAX_PERMITS:,}, got {limit!r}: how many "
            "holders may hold the semaphore at once"
        )
    return limit


class AsyncSemaphore(AsyncLock):
    """At most ``limit`` holders at once; ``acquire`` returns a lease for one permit.

    The same arguments and API as ``Lock`` (``acquire``, ``try_acquire``, ``with``, ``@sem``), plus
    ``limit``. Every client of one name must use the same ``limit``: while the name has holders or
    waiters, another one raises ``LimitMismatch`` (an idle name takes the limit of its next user).
    ``Semaphore(name, url, limit=1)`` is a mutex: the same name, lock and cost as ``Lock(name, url)``.
    """

    def __init__(
        self,
        name: str,
        backend: Any,
        *,
        limit: int,
        ttl: float = DEFAULT_TTL,
        renew: bool | float = True,
        timeout: float = DEFAULT_ACQUIRE_TIMEOUT,
        on_lost: LostCallback | None = None,
        cancel_on_loss: bool = False,
        label: str | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        limit = check_limit(limit)
        super().__init__(
            name,
            backend,
            ttl=ttl,
            renew=renew,
            timeout=timeout,
            on_lost=on_lost,
            cancel_on_loss=cancel_on_loss,
            label=label,
            clock=clock,
        )
        self._limit = limit

    @property
    def limit(self) -> int:
        return self._limit

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} limit={self._limit} on {self._backend.name} ttl={self.ttl:g}s>"


class AsyncReadWriteLock:
    """Many readers or one writer on one name: ``rw.read()`` and ``rw.write()`` are its two locks.

    ``with rw.read() as lease:`` / ``with rw.write() as lease:`` (or ``acquire``, ``try_acquire``);
    both take the same arguments as ``Lock``. Writers are not starved: once a writer waits, later
    readers queue behind it. See the module docstring for what the fences of each are good for.
    """

    def __init__(
        self,
        name: str,
        backend: Any,
        *,
        ttl: float = DEFAULT_TTL,
        renew: bool | float = True,
        timeout: float = DEFAULT_ACQUIRE_TIMEOUT,
        on_lost: LostCallback | None = None,
        cancel_on_loss: bool = False,
        label: str | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        opened: AsyncBackend
        opened, self._owns_backend = open_async_backend(backend)
        options: dict[str, Any] = {
            "ttl": ttl,
            "renew": renew,
            "timeout": timeout,
            "on_lost": on_lost,
            "cancel_on_loss": cancel_on_loss,
            "label": label,
            "clock": clock,
        }
        self._read = AsyncLock(name, opened, **options)
        self._read._limit, self._read._weight = RW_LIMIT, 1
        self._write = AsyncLock(name, opened, **options)
        self._write._limit, self._write._weight = RW_LIMIT, RW_LIMIT

    @property
    def name(self) -> str:
        return self._read.name

    def read(self) -> AsyncLock:
        """The shared side: any number of readers at once, none while a writer holds."""
        return self._read

    def write(self) -> AsyncLock:
        """The exclusive side: one writer, and no reader, at a time."""
        return self._write

    async def inspect(self) -> LockInfo | None:
        """The current holders (readers, or the writer: ``weight`` tells), or None when free."""
        return await self._read.inspect()  # a cancel a library swallowed still stops it (see Lock.inspect)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} on {self._read.backend.name} ttl={self._read.ttl:g}s>"

    async def aclose(self) -> None:
        """Close connections that fencelock opened for this lock (never a client you passed in)."""
        if self._owns_backend:
            await self._read.backend.aclose()


class AsyncElection:
    """Leader election on one name: at most one leader at a time, each with a higher term.

    ``value`` is what the others see of this candidate when it leads (default ``hostname:pid``):
    an address, an id. ``ttl``, ``renew``, ``on_lost``, ``cancel_on_loss`` and ``clock`` are the
    lock's, for the leader's lease.
    """

    def __init__(
        self,
        name: str,
        backend: Any,
        *,
        value: str | None = None,
        ttl: float = DEFAULT_TTL,
        renew: bool | float = True,
        timeout: float = DEFAULT_ACQUIRE_TIMEOUT,
        on_lost: LostCallback | None = None,
        cancel_on_loss: bool = False,
        clock: Clock = time.monotonic,
    ) -> None:
        if value is not None and not isinstance(value, str):
            raise ConfigurationError(f"value must be a string (what the others see of the leader), got {value!r}")
        self._lock = AsyncLock(
            name,
            backend,
            ttl=ttl,
            renew=renew,
            timeout=timeout,
            on_lost=on_lost,
            cancel_on_loss=cancel_on_loss,
            label=check_label(value),
            clock=clock,
        )

    @property
    def name(self) -> str:
        return self._lock.name

    @property
    def value(self) -> str:
        return self._lock._params.label

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} value={self.value!r} on {self._lock.backend.name}>"

    async def campaign(self, timeout: float | None = None) -> AsyncLease:
        """Wait at most ``timeout`` s (default: the election's) to lead; the lease, whose fence is
        the term. Raises ``LockTimeout`` if another stayed leader all that time. Resign with
        ``lease.release()`` (or a ``with`` block); a lost lease means a lost leadership."""
        return await self._lock.acquire(timeout)

    async def leader(self) -> Leader | None:
        """The current leader (value and term), or None while nobody leads.

        A cancellation that arrives as the read completes is passed on even if the client library
        swallowed it (``asyncio.wait_for`` on Python <= 3.11, around every redis.asyncio command):
        a leader asking who leads, then told to stop, must stop."""
        info = await self._lock.inspect()  # passes on a swallowed cancel (see Lock.inspect)
        return None if info is None else Leader(info.holder, info.fence)

    async def observe(self, interval: float = 0.5, timeout: float | None = None) -> AsyncIterator[Leader | None]:
        """Yield the leader now, then each time it changes (a new term, or None when nobody leads),
        looking every ``interval`` s, for at most ``timeout`` s (default: until you stop iterating).
        A change shorter than ``interval`` may be missed: the terms it skipped are still lower than
        the next one reported."""
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0.01 <= interval <= 3600:
            raise ConfigurationError(f"interval must be from 0.01 to 3600 seconds, got {interval!r}")
        clock = self._lock._clock
        end = None if timeout is None else clock() + check_timeout(timeout)
        last: Leader | bool | None = False  # False: nothing reported yet
        while True:
            now = await self.leader()
            if now != last:
                last = now
                yield now
            if end is not None and clock() + interval > end:
                return
            await _compat.sleep(interval)

    async def aclose(self) -> None:
        """Close connections that fencelock opened for this election (never a client you passed in)."""
        await self._lock.aclose()
