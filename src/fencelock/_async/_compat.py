"""The few primitives that differ between asyncio and threads (hand-written twin: _sync/_compat.py).

Everything else in ``_async`` is turned into blocking code by ``scripts/unasync.py``; these are
the pieces that cannot be translated word for word: sleeping that can be interrupted, running a
background renewer, cancelling the holder, and cleanup that must survive a cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import inspect
import itertools
import logging
import math
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, Protocol, TypeVar, cast

from .._errors import ConfigurationError

P = ParamSpec("P")
R = TypeVar("R")

Cancelled: type[BaseException] = asyncio.CancelledError
"""What interrupts a waiting caller: asyncio's cancellation (threads have no such thing)."""

CAN_CANCEL = True
"""Whether the holder can be interrupted when its lease is lost (``cancel_on_loss``)."""

OWNER_KIND = "task"
"""What holds a lease here, in messages."""

_background: set[asyncio.Task[Any]] = set()
log = logging.getLogger("fencelock")


class _Deadlined(Protocol):
    _watch_gen: int
    _watch_ref: weakref.ref[Any] | None
    _watcher: Any
    _released: bool
    _lost_reason: str | None

    def _check_deadline(self) -> float | None: ...


Mutex = asyncio.Lock
"""Mutual exclusion between the tasks of one loop (the sync twin uses ``threading.Lock``)."""


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


async def sleep(seconds: float) -> None:
    """Sleep on the event loop (the sync twin sleeps on an Event: libfaketime breaks time.sleep)."""
    await asyncio.sleep(seconds)


def spawn(fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
    """Run a background coroutine (the renewer); keep a strong reference until it ends."""
    task = asyncio.get_running_loop().create_task(fn(*args), name="fencelock-renewer")
    _background.add(task)
    task.add_done_callback(_background.discard)


def watch_deadline(obj: _Deadlined, delay: float) -> None:
    """Call ``obj._check_deadline()`` after ``delay`` s (again after any delay it returns), as long
    as ``obj._watch_gen`` is what it was when this watch started (a newer watch replaces it).

    One watcher per event loop keeps every lease's time in a heap, with one loop timer for the
    earliest: a ``call_later`` per lease cost a TimerHandle (~600 bytes) that stayed in the loop
    until the TTL ended, long after the release. Holds only weak references: a lease nobody
    refers to any more is not kept alive by its watch. When the last watched lease ends
    (``unwatch_deadline``: released, lost or collected) the timer is cancelled and the heap
    emptied, so nothing of fencelock's stays pending in the loop. A check that raises is tried
    again shortly: the deadline must never go unwatched.
    """
    global _current
    loop = asyncio.get_running_loop()
    current = _current
    if current is not None and current[0]() is loop:
        watcher = current[1]
    else:
        found = _watchers.get(loop)
        if found is None:
            found = _watchers[loop] = _LoopWatcher(loop)
        watcher = found
        _current = (weakref.ref(loop), watcher)
    watcher.watch(obj, loop, delay)


def unwatch_deadline(obj: _Deadlined) -> None:
    """``obj`` ended (released or lost): forget it; the loop's timer goes with the last one."""
    watcher = obj._watcher
    if watcher is not None:
        watcher.unwatch(obj)


class _LoopWatcher:
    """The deadlines of one event loop's leases (see ``watch_deadline``)."""

    COMPACT_MIN = 1024

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # weak: the loop is the key of ``_watchers``
        self._thread = threading.get_ident()
        self._heap: list[tuple[float, int, weakref.ref[Any], int]] = []
        self._seq = itertools.count()
        self._live: set[weakref.ref[Any]] = set()  # one reference per watched lease
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._compact_at = self.COMPACT_MIN

    @property
    def live(self) -> int:
        """How many leases are watched (for tests)."""
        return len(self._live)

    def watch(self, obj: _Deadlined, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        ref = obj._watch_ref
        if ref is None or obj._watcher is not self:
            ref = obj._watch_ref = weakref.ref(obj, self._collected)
            obj._watcher = self
        self._live.add(ref)
        when = loop.time() + max(delay, 0.0)
        heapq.heappush(self._heap, (when, next(self._seq), ref, obj._watch_gen))
        if when < self._timer_at:
            self._arm(loop, when)
        if len(self._heap) > self._compact_at:
            self._compact()

    def unwatch(self, obj: _Deadlined) -> None:
        if threading.get_ident() != self._thread:
            # Loss noticed on another thread (a backend's callback, a poll of ``lost``): the
            # watcher belongs to its loop's thread.
            loop = self._loop()
            if loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop was closed: nothing left pending
                    loop.call_soon_threadsafe(self.unwatch, obj)
            return
        ref = obj._watch_ref
        if ref is not None:
            # Dropped here, so that once the heap lets go of it too, the reference dies before
            # the lease and its callback (``_collected``) never runs for a lease that ended.
            obj._watch_ref = None
            self._forget(ref)

    def _collected(self, ref: weakref.ref[Any]) -> None:
        # A lease dropped without release: its deadline no longer concerns anyone. Weak
        # reference callbacks run wherever the collector runs.
        if threading.get_ident() == self._thread:
            self._forget(ref)
            return
        loop = self._loop()
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._forget, ref)

    def _forget(self, ref: weakref.ref[Any]) -> None:
        self._live.discard(ref)
        if not self._live:
            self._heap.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._timer_at = math.inf

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._fire)
        self._timer_at = when

    def _compact(self) -> None:
        # Entries of replaced watches wait for their time; drop them in bulk instead.
        alive = [e for e in self._heap if e[2] in self._live and (t := e[2]()) is not None and t._watch_gen == e[3]]
        heapq.heapify(alive)
        self._heap = alive
        self._compact_at = max(self.COMPACT_MIN, 2 * len(alive))

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        loop = asyncio.get_running_loop()
        now = loop.time()
        # self._heap is read afresh each round: a check may end a lease, and the last one to end
        # empties the heap (``_forget``)
        while self._heap and self._heap[0][0] <= now:
            _, _, ref, gen = heapq.heappop(self._heap)
            target = ref()
            if target is None or ref not in self._live or target._watch_gen != gen:
                continue
            try:
                again = target._check_deadline()
            except Exception:
                log.exception("fencelock: a lease's deadline check failed; checking again shortly")
                again = RECHECK
            if again is not None:
                heapq.heappush(self._heap, (now + max(again, 0.001), next(self._seq), ref, gen))
            elif ref in self._live:
                self._forget(ref)  # nothing more to watch for it
        if self._heap and self._timer is None:
            self._arm(loop, self._heap[0][0])


_watchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWatcher] = weakref.WeakKeyDictionary()
_current: tuple[weakref.ref[asyncio.AbstractEventLoop], _LoopWatcher] | None = None  # the last one used


RECHECK = 0.1
"""Seconds before a deadline check that failed is run again."""

REDELIVER = 0.01
"""Seconds between repeated cancellations of a holder whose lease was lost (see ``interrupt_owner``)."""


class _Interruptible(Protocol):
    _released: bool
    _cancels: int


def current_owner_id() -> int:
    """Who is calling: the current task (or, outside one, the thread)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    return id(task) if task is not None else threading.get_ident()


def decorate(lock: Any, fn: Callable[P, R]) -> Callable[P, R]:
    """``@lock`` on an ``async def``: each call runs inside ``async with lock``."""
    if not inspect.iscoroutinefunction(fn):
        raise ConfigurationError(
            f"fencelock.aio.Lock decorates coroutine functions (async def); {getattr(fn, '__name__', fn)!r} is "
            "not one: use fencelock.Lock for a plain function"
        )

    @functools.wraps(fn)
    async def locked(*args: Any, **kwargs: Any) -> Any:
        async with lock:
            return await fn(*args, **kwargs)

    return cast("Callable[P, R]", locked)


def current_owner() -> asyncio.Task[Any] | None:
    """The task that is acquiring: cancelled on loss when the user opted in."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def interrupt_owner(owner: object, message: str, lease: _Interruptible) -> None:
    """Cancel the holding task, and again every ``REDELIVER`` s until it has released the lease
    (thread-safe). ``message`` shows in the CancelledError.

    Once is not enough: on Python <= 3.11 ``asyncio.wait_for`` (which redis.asyncio wraps around
    every command that has a socket timeout) drops a cancel that arrives as the inner operation
    completes, and the section would run on. So cancellation is level-triggered, as in anyio's and
    Trio's cancel scopes: every await inside the block raises until the block is left. The number of
    cancel requests is counted in ``lease._cancels`` so that ``settle_cancels`` can undo exactly ours.
    """
    # Not isinstance(owner, asyncio.Task): that is the C task; a pure-Python task (a custom task
    # factory, pytest-asyncio's runner on 3.10) is a future of the same shape.
    if not asyncio.isfuture(owner) or owner.done():
        return
    loop = owner.get_loop()

    def deliver() -> None:
        if owner.done() or lease._released:
            return
        if owner.cancel(message):
            lease._cancels += 1
        loop.call_later(REDELIVER, deliver)

    with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile: nothing left to stop
        loop.call_soon_threadsafe(deliver)


def cancel_requests() -> int:
    """How many cancellations of the current task are pending (Python 3.11+; 0 before, where
    asyncio keeps no count). Taken before a call, compared after it by ``check_cancel``."""
    if not _COUNTS_CANCELS:
        return 0
    task = asyncio.current_task()
    try:
        return int(task.cancelling())  # type: ignore[union-attr]
    except AttributeError:  # a task without the count, or no task at all
        return 0


_COUNTS_CANCELS = sys.version_info >= (3, 11)
"""Only 3.11+ keeps an honest count. On 3.10 a backported Task (``backports.asyncio.runner``, which
pytest-asyncio uses) has ``cancelling()``, but the libraries' own timeouts there (``async_timeout``
in redis.asyncio) cancel the task and never ``uncancel`` it: every timeout would look like a
swallowed cancellation."""


def check_cancel(before: int) -> None:
    """Raise ``CancelledError`` if the current task was asked to stop since ``cancel_requests()``
    returned ``before`` but the request never reached us: a library swallowed it (asyncio.wait_for
    on Python <= 3.11, which redis.asyncio and others wrap around each command, drops a cancel that
    lands just as the inner operation completes). The task asked to stop; it must stop."""
    if cancel_requests() > before:
        raise asyncio.CancelledError("fencelock: a cancellation swallowed by a library call, delivered again")


def settle_cancels(owner: object, ours: int) -> bool:
    """After turning our own cancellation of ``owner`` into ``LeaseLost``: withdraw our ``ours``
    cancel requests (Python 3.11+ counts them: ``asyncio.timeout()`` and TaskGroup rely on the count).
    Returns True when no other cancellation is pending, i.e. the interruption was ours alone; False
    means somebody else cancelled the task too, and that cancellation must propagate. Python 3.10
    keeps no count: there a cancel from elsewhere in the same moment is reported as ``LeaseLost``."""
    uncancel = getattr(owner, "uncancel", None)
    cancelling = getattr(owner, "cancelling", None)
    if uncancel is None or cancelling is None:
        return True
    for _ in range(ours):
        if cancelling() == 0:
            break
        uncancel()
    return bool(cancelling() == 0)


T = TypeVar("T")


async def shielded(fn: Callable[[], Awaitable[T]]) -> T:
    """Await ``fn()`` so that a cancellation of the caller cannot leave it undone; ``fn`` must be
    safe to run twice (a release by token is: the second finds nothing of ours and changes nothing).

    It runs in the caller's own task: wrapping every release in a Task of its own (and
    ``asyncio.shield``) cost about 10 us and a Task per release. When a cancellation lands while
    it is in flight (so we cannot know whether the server applied it), ``fn()`` is sent again
    from a background task, and the cancellation goes on to the caller at once, as with
    ``asyncio.shield``."""
    try:
        return await fn()
    except asyncio.CancelledError:
        task = asyncio.get_running_loop().create_task(_again(fn), name="fencelock-cleanup")
        _background.add(task)
        task.add_done_callback(_background.discard)
        raise


async def _again(fn: Callable[[], Awaitable[object]]) -> None:
    try:
        await fn()
    except Exception as err:  # the lease's TTL is the backstop
        log.warning("fencelock: a release interrupted by a cancellation failed when sent again: %s", err)


CLEANUP_GRACE = 0.5
"""Longest wait, in seconds, for the cleanup of an acquire that timed out, failed or was cancelled.
Against a healthy server the cleanup takes one round trip; against one that stopped answering it
would take a whole request timeout, so after this grace it goes on in the background instead."""


async def run_cleanup(fn: Callable[[], Awaitable[None]]) -> None:
    """Run ``fn`` (errors are swallowed: cleanup is best effort, the lease's TTL is the backstop)
    and wait for it up to ``CLEANUP_GRACE`` s; past that it finishes in the background.

    A cancellation that arrives meanwhile does not stop the cleanup, and it is passed on once the
    wait is over: swallowing it would leave a task that asked to stop running (a retry loop around
    ``LockTimeout`` could never be stopped; ``asyncio.timeout()`` and TaskGroup would lose it)."""

    async def guarded() -> None:
        with contextlib.suppress(Exception):
            await fn()

    loop = asyncio.get_running_loop()
    task = loop.create_task(guarded())
    _background.add(task)
    task.add_done_callback(_background.discard)
    end = loop.time() + CLEANUP_GRACE
    interrupted: BaseException | None = None
    while not task.done():
        left = end - loop.time()
        if left <= 0:
            break
        try:
            await asyncio.wait((task,), timeout=left)
        except asyncio.CancelledError as err:
            interrupted = err
    if interrupted is not None:
        raise interrupted
