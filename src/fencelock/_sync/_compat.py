"""The few primitives that differ between threads and asyncio (hand-written twin of _async/_compat.py)."""

from __future__ import annotations

import collections
import contextlib
import functools
import heapq
import inspect
import itertools
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, ParamSpec, Protocol, TypeVar

from .._errors import ConfigurationError

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("fencelock")


class Cancelled(BaseException):
    """Threads cannot be cancelled; this is never raised, it only keeps the shared code alike."""


CAN_CANCEL = False
"""Threads cannot be interrupted: ``cancel_on_loss`` is refused (asyncio twin: True)."""

OWNER_KIND = "thread"
"""What holds a lease here, in messages."""


def current_owner_id() -> int:
    """Who is calling: the current thread."""
    return threading.get_ident()


def decorate(lock: Any, fn: Callable[P, R]) -> Callable[P, R]:
    """``@lock`` on a plain function: each call runs inside ``with lock``."""
    if inspect.iscoroutinefunction(fn):
        raise ConfigurationError(
            f"{getattr(fn, '__name__', fn)!r} is a coroutine function: fencelock.Lock would be released before "
            "it runs; decorate it with fencelock.aio.Lock"
        )

    @functools.wraps(fn)
    def locked(*args: P.args, **kwargs: P.kwargs) -> R:
        with lock:
            return fn(*args, **kwargs)

    return locked


class _Deadlined(Protocol):
    _watch_gen: int

    def _check_deadline(self) -> float | None: ...


Mutex = threading.Lock
"""Mutual exclusion between threads (the asyncio twin uses ``asyncio.Lock``)."""


class Stopper:
    """A sleep that ``stop()`` interrupts at once, from any thread."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def stop(self) -> None:
        self._event.set()

    @property
    def stopped(self) -> bool:
        return self._event.is_set()

    def sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if stopped meanwhile."""
        return self._event.wait(max(0.0, seconds))


def sleep(seconds: float) -> None:
    """Sleep on an Event, not time.sleep: under libfaketime (FAKETIME_DONT_FAKE_MONOTONIC=1)
    time.sleep fails with EINVAL (NOTES.md)."""
    threading.Event().wait(max(0.0, seconds))


def spawn(fn: Callable[..., None], *args: Any) -> None:
    """Run the renewer on a daemon thread (it holds only a weak reference to its lease)."""
    threading.Thread(target=fn, args=args, name="fencelock-renewer", daemon=True).start()


class _DeadlineWatcher:
    """One daemon thread per process that fires timers on weakly held objects (lease deadlines,
    the start of a lease's renewer). A thread per lease would cost ~100 us per acquire; a heap
    push under a lock, with a thread check, cost a few; this costs a tuple appended to a deque.

    ``watch`` appends to ``_incoming`` without taking the lock, and wakes the thread only when the
    new time is earlier than the one it sleeps until (``_wake_at``): with one TTL for every lease,
    each new deadline comes after the pending ones, so the common acquire never wakes the thread.
    The thread moves the incoming entries into its heap when it wakes. Entries of leases that were
    released or collected are dropped in bulk when the entries double (so memory stays within
    twice the live leases, plus a constant), not one by one on release.

    Why no entry is missed (CPython runs one bytecode at a time): the thread sets ``_wake_at`` to
    +inf ("tell me") before it drains ``_incoming``, and to the time it will sleep until only after;
    a producer appends first and reads ``_wake_at`` second. A producer that read a time later than
    its entry (+inf included) notifies under the lock, which the thread holds until it waits, so
    the notice is not lost; one that read a time no later than its entry either appended before
    the drain that follows, or the thread wakes by that time and drains it then.
    """

    COMPACT_MIN = 4096

    def __init__(self) -> None:
        self._cv = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, weakref.ref[Any], int]] = []
        self._incoming: collections.deque[tuple[float, int, weakref.ref[Any], int]] = collections.deque()
        self._seq = itertools.count()
        self._wake_at = math.inf  # no thread yet: the first watch starts it
        self._compact_at = self.COMPACT_MIN
        self._thread: threading.Thread | None = None

    def watch(self, obj: Any, delay: float, gen: int) -> None:
        """After ``delay`` s call ``obj._check_deadline()`` if ``obj`` is alive and its
        ``_watch_gen`` is still ``gen``; again after the delay it returns."""
        when = time.monotonic() + max(delay, 0.0)
        self._incoming.append((when, next(self._seq), weakref.ref(obj), gen))
        if when >= self._wake_at and len(self._incoming) < self._compact_at:
            return  # the thread wakes before this is due, and drains it then
        with self._cv:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="fencelock-deadlines", daemon=True)
                self._thread.start()
            else:
                self._cv.notify()

    def _drain(self) -> None:
        incoming = self._incoming
        heap = self._heap
        while incoming:
            heapq.heappush(heap, incoming.popleft())
        if len(heap) > self._compact_at:
            # Entries of released, lost or collected leases, and of replaced watches, wait for
            # their time; drop them in bulk instead.
            alive = [e for e in heap if (t := e[2]()) is not None and t._watch_gen == e[3] and not _finished(t)]
            heapq.heapify(alive)
            self._heap = alive
            self._compact_at = max(self.COMPACT_MIN, 2 * len(alive))

    def _run(self) -> None:
        while True:
            with self._cv:
                while True:
                    self._wake_at = math.inf  # from here until it waits, every watch notifies
                    self._drain()
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        _, _, ref, gen = heapq.heappop(self._heap)
                        break
                    self._wake_at = self._heap[0][0] if self._heap else math.inf
                    if self._incoming:
                        continue
                    self._cv.wait(None if not self._heap else self._wake_at - now)
            target = ref()
            if target is None or target._watch_gen != gen:
                continue
            try:
                again = target._check_deadline()
            except Exception:
                # Never drop a deadline: a check that raised is tried again shortly.
                log.exception("fencelock: a lease's deadline check failed; checking again shortly")
                again = RECHECK
            if again is not None:
                self.watch(target, max(again, 0.001), gen)


def _finished(obj: Any) -> bool:
    return bool(getattr(obj, "_released", False) or getattr(obj, "_lost_reason", None))


_watcher = _DeadlineWatcher()


def _after_fork_in_child() -> None:
    # The parent's watcher thread does not exist in the child; leases inherited by the child are
    # not the child's to watch or renew (they refuse to act there: see Lease._check_process).
    global _watcher
    _watcher = _DeadlineWatcher()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def watch_deadline(obj: _Deadlined, delay: float) -> None:
    """Call ``obj._check_deadline()`` after ``delay`` s, again after any delay it returns, as long
    as ``obj._watch_gen`` is what it was when this watch started (a newer watch replaces it)."""
    _watcher.watch(obj, delay, obj._watch_gen)


def unwatch_deadline(obj: _Deadlined) -> None:
    """The lease ended (released or lost): nothing to do here, its entry is skipped when its time
    comes or dropped at the next compaction (the asyncio twin cancels its loop timer)."""
    return None


def cancel_requests() -> int:
    """Threads have no cancellation (the asyncio twin counts pending ones)."""
    return 0


def check_cancel(before: int) -> None:
    return None


RECHECK = 0.1
"""Seconds before a deadline check that failed is run again."""


def current_owner() -> Any:
    return None


def interrupt_owner(owner: object, message: str, lease: object) -> None:
    """Threads cannot be interrupted; the sync API tells the holder by event, callback and check."""
    return None


def settle_cancels(owner: object, ours: int) -> bool:
    return True


T = TypeVar("T")


def shielded(fn: Callable[[], T]) -> T:
    """Threads are not cancelled: just call."""
    return fn()


CLEANUP_GRACE = 0.5
"""Longest wait, in seconds, for the cleanup of an acquire that timed out or failed (see the
asyncio twin): past it, the cleanup goes on in a background thread."""


def run_cleanup(fn: Callable[[], None]) -> None:
    """Best-effort cleanup (errors are swallowed, the lease's TTL is the backstop), waited for at
    most ``CLEANUP_GRACE`` s: against a server that stopped answering it would block for a whole
    request timeout, so it runs in a thread of its own that outlives the wait if it must."""

    def guarded() -> None:
        with contextlib.suppress(Exception):
            fn()

    try:
        worker = threading.Thread(target=guarded, name="fencelock-cleanup", daemon=True)
        worker.start()
    except RuntimeError:  # no thread to be had (a thread limit): clean up here, unbounded
        guarded()
        return
    worker.join(CLEANUP_GRACE)
