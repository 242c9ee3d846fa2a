"""The asyncio face of a blocking backend: each primitive in a worker thread.

For backends whose client library is blocking only (sqlite3, kazoo): see "How a backend serves both
APIs" in ``base``. ``Offloaded`` wraps the blocking backend; a backend whose ``wait`` would hold a
thread for long gives its blocking class an ``async_wait`` coroutine that waits on the library's own
wake-up source instead (a socket read on the loop, a watch callback turned into a future), and the
adapter uses it. Optional abilities (``base.OPTIONAL``) are passed through only when the blocking
backend has them.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from typing import Any, TypeVar

from .base import Attempt, Backend, LockInfo, optional_abilities

__all__ = ["Offloaded", "off_loop"]

T = TypeVar("T")

_BLOCKING_CALLS = frozenset({"force_release", "last_fence"})
"""Optional abilities that are server calls: awaited here, in a worker thread (``watch_loss``
registers a callback and ``max_lease`` is a number: both are used as they are)."""


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking call in a worker thread. If the caller is cancelled meanwhile, still wait for
    the thread (it cannot be stopped, and each call is bounded by the backend's request timeout)
    before passing the cancellation on: the lock's cleanup that follows (``abandon``) then sees
    what the call did, so a lock granted to a cancelled acquire is dropped, not left behind. The
    cancellation wins over whatever the call ended with, an error too (a request that hung on a
    frozen server and then failed): else the task would lose its cancel."""
    # What asyncio.to_thread does (default executor, caller's contextvars), minus the task it wraps
    # around the future: the future alone is enough to shield.
    call = functools.partial(contextvars.copy_context().run, fn, *args)
    future = asyncio.get_running_loop().run_in_executor(None, call)
    interrupted: BaseException | None = None
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError as err:
            interrupted = err
        except Exception:
            if interrupted is None:
                raise
            # the call failed after we were cancelled: the future is done, the cancellation wins
    if interrupted is not None:
        if not future.cancelled():
            future.exception()  # retrieved: the cancellation wins
        raise interrupted
    return future.result()


class Offloaded:
    """An asyncio backend made of a blocking one (``sync``)."""

    _dynamic_abilities = True  # abilities differ per instance: ``backends.abilities`` asks each one

    def __init__(self, sync: Backend) -> None:
        self.sync = sync
        self.name = sync.name
        found = optional_abilities(sync)
        self._native_wait = sync.async_wait if "async_wait" in found else None  # type: ignore[attr-defined]
        # Optional abilities, present here exactly when the blocking backend has them (asked with
        # isinstance, base.OPTIONAL). Instance attributes, not __getattr__: Python 3.12+ checks
        # runtime protocols with getattr_static. The blocking calls among them go to a thread.
        for attr in found:
            if attr in _BLOCKING_CALLS:
                setattr(self, attr, functools.partial(off_loop, getattr(sync, attr)))
            elif attr != "async_wait":  # used by wait() below, not an ability of the asyncio face
                setattr(self, attr, getattr(sync, attr))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self.sync!r}>"

    async def try_acquire(
        self, key: str, token: str, ttl_ms: int, label: str, queue: bool, limit: int = 1, weight: int = 1
    ) -> Attempt:
        if limit == 1 and weight == 1:  # the mutex: the blocking backend's own defaults
            return await off_loop(self.sync.try_acquire, key, token, ttl_ms, label, queue)
        return await off_loop(self.sync.try_acquire, key, token, ttl_ms, label, queue, limit, weight)

    async def wait(self, key: str, token: str, timeout: float) -> int | None:
        if self._native_wait is not None:
            result: int | None = await self._native_wait(key, token, timeout)
            return result
        return await off_loop(self.sync.wait, key, token, timeout)

    async def abandon(self, key: str, token: str) -> None:
        await off_loop(self.sync.abandon, key, token)

    async def extend(self, key: str, token: str, ttl_ms: int) -> bool:
        return await off_loop(self.sync.extend, key, token, ttl_ms)

    async def release(self, key: str, token: str) -> bool:
        return await off_loop(self.sync.release, key, token)

    async def inspect(self, key: str) -> LockInfo | None:
        return await off_loop(self.sync.inspect, key)

    async def aclose(self) -> None:
        await off_loop(self.sync.close)  # closing may be blocking I/O (a checkpoint, joining threads)
