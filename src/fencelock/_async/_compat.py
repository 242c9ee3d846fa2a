"""The few primitives that differ between asyncio and threads (hand-written twin: _sync/_compat.py).

Everything else in ``_async`` is turned into blocking code by ``scripts/unasync.py``; these are
the pieces that cannot be translated word for word: sleeping that can be interrupted, running a
background renewer, cancelling the holder, and cleanup that must survive a cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

Cancelled: type[BaseException] = asyncio.CancelledError
"""What interrupts a waiting caller: asyncio's cancellation (threads have no such thing)."""

_background: set[asyncio.Task[Any]] = set()


class _Deadlined(Protocol):
    def _check_deadline(self) -> float | None: ...


class AsyncStopper:
    """A sleep that ``stop()`` interrupts at once, from the loop or from any other thread."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def stop(self) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._event.set()
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._event.set)

    @property
    def stopped(self) -> bool:
        return self._event.is_set()

    async def sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if stopped meanwhile."""
        if self._event.is_set():
            return True
        try:
            await asyncio.wait_for(self._event.wait(), max(0.0, seconds))
        except asyncio.TimeoutError:
            return False
        return True


def spawn(fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
    """Run a background coroutine (the renewer); keep a strong reference until it ends."""
    task = asyncio.get_running_loop().create_task(fn(*args), name="fencelock-renewer")
    _background.add(task)
    task.add_done_callback(_background.discard)


def watch_deadline(obj: _Deadlined, delay: float) -> None:
    """Call ``obj._check_deadline()`` after ``delay`` s (again after any delay it returns).

    Holds only a weak reference: a lease nobody refers to any more is not kept alive by its watch.
    """
    ref = weakref.ref(obj)
    loop = asyncio.get_running_loop()

    def fire() -> None:
        target = ref()
        if target is None:
            return
        again = target._check_deadline()
        if again is not None:
            loop.call_later(max(again, 0.001), fire)

    loop.call_later(max(delay, 0.0), fire)


def current_owner() -> asyncio.Task[Any] | None:
    """The task that is acquiring: cancelled on loss when the user opted in."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def interrupt_owner(owner: object, message: str) -> None:
    """Cancel the holding task (thread-safe); ``message`` shows in the CancelledError."""
    if not isinstance(owner, asyncio.Task) or owner.done():
        return
    loop = owner.get_loop()
    if loop.is_closed():
        return
    loop.call_soon_threadsafe(owner.cancel, message)


def was_interrupted_by_us(owner: object) -> None:
    """After converting our own cancellation into ``LeaseLost``, undo its count (3.11+)."""
    uncancel = getattr(owner, "uncancel", None)
    if uncancel is not None:
        uncancel()


T = TypeVar("T")


async def shielded(fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn`` in its own task that a cancellation of the caller does not stop."""

    async def call() -> T:
        return await fn()

    task = asyncio.get_running_loop().create_task(call())
    _background.add(task)
    task.add_done_callback(_background.discard)
    return await asyncio.shield(task)


async def run_cleanup(fn: Callable[[], Awaitable[None]]) -> None:
    """Run ``fn`` to the end even if the caller is cancelled again meanwhile (errors are swallowed:
    cleanup is best effort, the lease's TTL is the backstop)."""

    async def guarded() -> None:
        with contextlib.suppress(Exception):
            await fn()

    task = asyncio.get_running_loop().create_task(guarded())
    _background.add(task)
    task.add_done_callback(_background.discard)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.shield(task)
