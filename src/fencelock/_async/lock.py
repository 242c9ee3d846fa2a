"""The lock handle and its lease: all the policy, written once.

This file is the source of truth for both APIs: ``scripts/unasync.py`` turns it into
``fencelock/_sync/lock.py`` (``AsyncLock`` -> ``Lock``, ``await x`` -> ``x``) and CI fails if the two
drift. Backends (``fencelock.backends``) only answer single questions; here we decide how long to
wait, when a lease ends, when to renew and how the holder is told that it lost the lock.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from .._core.params import (
    DEFAULT_ACQUIRE_TIMEOUT,
    DEFAULT_TTL,
    Clock,
    LockParams,
    check_timeout,
    check_ttl,
    current_pid,
    lease_deadline,
    new_token,
)
from .._errors import AlreadyHeld, BackendError, ConfigurationError, LeaseError, LeaseLost, LockTimeout, NotHeld
from .._metrics import instruments, span_outcome, tracing
from ..backends import abilities, open_async_backend
from ..backends.base import AsyncBackend, Attempt, LockInfo
from . import _compat

__all__ = ["AsyncLease", "AsyncLock"]

log = logging.getLogger("fencelock")

LostCallback = Callable[["AsyncLease"], None]

_HELD: contextvars.ContextVar[tuple[tuple[AsyncLock, int, AsyncLease], ...]] = contextvars.ContextVar(
    "fencelock_held", default=()
)
"""Leases entered with ``with lock`` in this context, innermost last: (lock, who entered, lease).

One variable for every lock (a ContextVar per lock cost a microsecond to make, and a lock is made
per name). A lock looks only at its own entries, and among them only at those its own thread or
task entered: a Lock shared by several threads/tasks must never pop another's lease (one whose
lease expired inside the block would otherwise release its successor's lock on exit), and a child
task inherits a copy of its parent's context, so it must neither pop nor count as holding its
parent's lease."""
P = ParamSpec("P")
R = TypeVar("R")


class AsyncLock:
    """A named distributed lock. Acquiring it yields a lease (``AsyncLease``) carrying a fencing token.

    ``backend`` is a URL of any registered backend (``fencelock.backends.url_help()`` lists them),
    a client object of your own (used as is, never closed by us), or a backend instance.

    - ``ttl``: lease length in seconds (at most 30 days). A crashed holder blocks others for at most
      this long.
    - ``renew``: ``True`` (default) renews every ``ttl/3`` while held; a number sets the interval (at
      most ``ttl/2``, so a failed renewal can be retried); ``False`` lets the lease run out after
      ``ttl`` unless you call ``extend()``.
    - ``timeout``: default acquire timeout in seconds (finite: no wait is unbounded).
    - ``on_lost``: called with the lease when it is lost (from the renewer's thread or task).
    - ``cancel_on_loss`` (asyncio only: ``fencelock.aio.Lock``; threads cannot be cancelled, so
      ``fencelock.Lock`` refuses it): cancel the task that acquired the lease when the lease is lost,
      and again at each await until it leaves the ``async with`` block, which then raises
      ``LeaseLost``.
    - ``label``: who holds it, shown to operators; defaults to ``hostname:pid``.
    - ``clock``: a monotonic clock in seconds, replaceable in tests.

    Not reentrant: acquiring it again from the thread or task that holds it through ``with`` raises
    ``AlreadyHeld`` at once (it would otherwise wait for itself). One ``Lock`` object may be shared
    by many threads or tasks; each gets its own lease. As a decorator (``@lock``), it runs each call
    of the function inside ``with lock:``; ``lock.current_lease()`` gives the call its lease.
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
        self._params = LockParams.make(name, ttl, renew, timeout, label)
        if cancel_on_loss and not _compat.CAN_CANCEL:
            raise ConfigurationError(
                "cancel_on_loss needs asyncio (fencelock.aio.Lock): a thread cannot be cancelled; with "
                "fencelock.Lock use on_lost=callback, lease.lost_event or lease.ensure_held() before each write"
            )
        self._backend: AsyncBackend
        self._backend, self._owns_backend = open_async_backend(backend)
        self._abilities = abilities(self._backend)
        cap = self._backend.max_lease if self._abilities.caps_lease else None  # type: ignore[attr-defined]
        if cap is not None and ttl > cap:
            # The backend cannot vouch for a lease longer than this (ZooKeeper: the session
            # timeout): shorten it, and renew in proportion.
            interval = renew if isinstance(renew, bool) or renew < cap else cap / 3
            self._params = LockParams.make(name, cap, interval, timeout, label)
        self._on_lost = on_lost
        self._cancel_on_loss = cancel_on_loss
        self._clock = clock
        # Counted leases (fencelock.backends.base): a mutex takes 1 of 1 permit; Semaphore and
        # ReadWriteLock set these. The mutex calls the backend without them (its fast path).
        self._limit = 1
        self._weight = 1

    @property
    def name(self) -> str:
        return self._params.name

    @property
    def ttl(self) -> float:
        return self._params.ttl

    @property
    def backend(self) -> AsyncBackend:
        return self._backend

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} on {self._backend.name} ttl={self.ttl:g}s>"

    async def acquire(self, timeout: float | None = None, *, blocking: bool = True, **unknown: Any) -> AsyncLease:
        """Wait at most ``timeout`` seconds (default: the lock's) for the lock; return the lease.

        ``timeout=0`` (or ``blocking=False``) makes a single attempt. Raises ``LockTimeout`` when the
        lock stayed busy and ``BackendUnavailable`` when the server cannot be reached: never a
        silent ``False`` (``try_acquire()`` returns None when busy, for an ``if``).
        """
        if unknown:
            raise _unknown_acquire_arguments(unknown)
        if isinstance(timeout, bool):  # threading's and python-redis-lock's acquire(False)
            raise ConfigurationError(
                f"acquire({timeout}): the first argument is the timeout in seconds, not blocking; for one "
                "attempt use acquire(blocking=False) or try_acquire() (None when busy)"
            )
        if not blocking:
            if timeout is not None:
                raise ConfigurationError("acquire(blocking=False) makes one attempt: do not pass a timeout with it")
            timeout = 0.0
        wait = self._params.acquire_timeout if timeout is None else check_timeout(timeout)
        self._refuse_reentry()
        lease = await self._acquire(wait)
        if lease is None:
            instruments.acquired(self.name, "timeout", wait)
            raise LockTimeout(self.name, wait)
        return lease

    async def try_acquire(self) -> AsyncLease | None:
        """One attempt: the lease, or None when someone else holds the lock right now."""
        self._refuse_reentry()
        return await self._acquire(0.0)

    def _refuse_reentry(self) -> None:
        stack = _HELD.get()
        if not stack:
            return
        me = _compat.current_owner_id()
        for lock, owner, lease in stack:
            if lock is self and owner == me and not lease._released and not lease.lost:
                raise AlreadyHeld(
                    f"lock {self.name!r} is already held by this {_compat.OWNER_KIND} (fence {lease.fence}): "
                    "fencelock locks are not reentrant; use the lease you hold (lock.current_lease()), or "
                    "another lock name"
                )

    def current_lease(self) -> AsyncLease | None:
        """The lease this thread or task holds through its innermost ``with lock:`` block (or a
        call of a function decorated with ``@lock``), else None."""
        me = _compat.current_owner_id()
        for lock, owner, lease in reversed(_HELD.get()):
            if lock is self and owner == me:
                return lease
        return None

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """``@lock``: run every call of ``fn`` inside ``with lock:`` (its lease: ``lock.current_lease()``)."""
        return _compat.decorate(self, fn)

    def _ops(self) -> AsyncBackend:
        """The backend to call: itself, or while a tracer provider is set, a view of it that makes
        a span of each call (so no wrapper runs when tracing is off)."""
        if tracing.active():
            return AsyncTracedBackend(self._backend)
        return self._backend

    async def _acquire(self, wait: float) -> AsyncLease | None:
        p = self._params
        backend = self._ops()
        clock = self._clock
        token = new_token()
        started = clock()
        give_up = started + wait
        queue = wait > 0
        # A cancellation that a library swallowed (asyncio.wait_for on Python <= 3.11 drops one that
        # lands as the inner operation completes) is still counted on the task: look after each
        # round trip, so a cancelled acquire never goes on to wait, or to return a lease.
        cancels = _compat.cancel_requests()
        try:
            counted = self._limit != 1 or self._weight != 1
            while True:
                sent = clock()
                if counted:
                    attempt = await backend.try_acquire(
                        p.name, token, p.ttl_ms, p.label, queue, self._limit, self._weight
                    )
                else:
                    attempt = await backend.try_acquire(p.name, token, p.ttl_ms, p.label, queue)
                _compat.check_cancel(cancels)
                fence = attempt.fence
                if fence is None:
                    left = give_up - clock()
                    if left <= 0:
                        break
                    pause = left if attempt.retry_after is None else min(left, max(attempt.retry_after, 0.001))
                    fence = await backend.wait(p.name, token, pause)
                    _compat.check_cancel(cancels)
                    if fence is None:
                        continue
                # Granted: by this request (the lease runs from its send) or handed over after our
                # last poll was sent (it runs from that send, which precedes the grant).
                if lease_deadline(sent, p.ttl) - clock() < p.ttl / 2:
                    # The answer reached us long after the request (a stalled process or link):
                    # restart the lease from now before a lease object exists. A grant that ran out
                    # meanwhile was never the caller's, so nothing may signal its loss: queue again.
                    sent = clock()
                    renewed = await backend.extend(p.name, token, p.ttl_ms)
                    _compat.check_cancel(cancels)
                    if not renewed:
                        continue
                return self._granted(token, fence, sent, started)
        except BaseException as err:
            # The request in flight may have succeeded on the server (we just never heard back), or
            # we may sit in the queue: leave nothing behind that would block the others.
            await _compat.run_cleanup(lambda: backend.abandon(p.name, token))
            if not isinstance(err, _compat.Cancelled):
                # A library that swallowed a cancellation may fail instead (a call cut short ends in
                # BackendUnavailable): the task was asked to stop, so it stops (the error is chained).
                _compat.check_cancel(cancels)
            raise
        if queue:  # timed out: leave the queue (and pass on a grant that raced the timeout)
            await _compat.run_cleanup(lambda: backend.abandon(p.name, token))
        return None

    def _granted(self, token: str, fence: int, sent: float, started: float) -> AsyncLease:
        lease = AsyncLease(self, token, fence, lease_deadline(sent, self._params.ttl))
        lease._start()  # if the deadline watch cannot start, the acquire fails and the grant is passed on
        instruments.acquired(self.name, "ok", self._clock() - started)
        log.debug("acquired %r fence=%d holder=%s", self.name, fence, self._params.label)
        return lease

    async def inspect(self) -> LockInfo | None:
        """Who holds the lock now (fence, holder label, time left), or None when free.

        A cancellation that arrives as the read completes is passed on even if the client library
        swallowed it (``asyncio.wait_for`` on Python <= 3.11, around every redis.asyncio command):
        a task that asks who holds, then is told to stop, must stop."""
        cancels = _compat.cancel_requests()
        info = await self._backend.inspect(self.name)
        _compat.check_cancel(cancels)
        return info

    async def __aenter__(self) -> AsyncLease:
        lease = await self.acquire()
        _HELD.set((*_HELD.get(), (self, _compat.current_owner_id(), lease)))
        return lease

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack = _HELD.get()
        for i in range(len(stack) - 1, -1, -1):
            if stack[i][0] is self:
                break
        else:
            raise NotHeld(f"leaving a `with` block of lock {self.name!r} that this thread/task did not enter")
        _HELD.set(stack[:i] + stack[i + 1 :])
        await stack[i][2].__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        """Close connections that fencelock opened for this lock (never a client you passed in)."""
        if self._owns_backend:
            await self._backend.aclose()


class AsyncLease:
    """Proof of holding a lock until ``deadline`` (client monotonic clock).

    - ``token``: 128 random bits; only it can release or extend the lock.
    - ``fence``: strictly greater than every fence issued before for this lock name by the backend;
      pass it to the storage (``fencelock.fencing``) so writes of a paused holder are refused.
    - ``remaining()``: seconds left, measured from *before* the acquire request was sent.
    - Loss is signalled four ways: ``lost`` / ``lost_event`` to poll or wait on, ``ensure_held()``
      that raises ``LeaseLost``, the lock's ``on_lost`` callback, and, for asyncio (opt-in with
      ``cancel_on_loss``), cancellation of the task that acquired it.
    """

    def __init__(self, lock: AsyncLock, token: str, fence: int, deadline: float) -> None:
        self._lock = lock
        self.name = lock.name
        self.token = token
        self.fence = fence
        self._deadline = deadline
        self._clock = lock._clock
        self._pid = current_pid()
        self._released = False
        self._lost_reason: str | None = None
        self._doubt: str | None = None
        self._lost_event: threading.Event | None = None
        self._mutex = threading.Lock()
        self._owner = _compat.current_owner() if lock._cancel_on_loss else None
        self._cancelled_by_us = False
        self._cancels = 0  # cancel requests we made of the owner (see _compat.interrupt_owner)
        # One extend in flight at a time (the user's and the renewer's): the server applies them in
        # the order the client sent them, so the last reply is the last one applied.
        self._extending: _compat.Mutex | None = None  # made at the first extend: most leases never extend
        self._stopper: _compat.AsyncStopper | None = None
        self._renewing = False
        self._unwatch: Callable[[], None] | None = None
        self._watch_gen = 0  # the deadline watch of this generation is the live one
        self._watch_ref: Any = None  # the deadline watch's weak reference to us (asyncio)
        self._watcher: Any = None  # and its watcher (asyncio: the loop's), told when we end

    def __repr__(self) -> str:
        state = "released" if self._released else ("lost" if self.lost else "held")
        return f"<{type(self).__name__} {self.name!r} fence={self.fence} {state} remaining={self.remaining():.3f}s>"

    # -- state ---------------------------------------------------------------------------------

    @property
    def deadline(self) -> float:
        """When the lease ends on the client's monotonic clock (``time.monotonic()`` by default)."""
        return self._deadline

    def remaining(self) -> float:
        """Seconds left before the lease ends; 0.0 once it ended, was lost or released."""
        if self._released or self._lost_reason is not None:
            return 0.0
        return max(0.0, self._deadline - self._clock())

    @property
    def lost(self) -> bool:
        """True once the lease was lost (expired without renewal, taken, or its session died)."""
        if self._lost_reason is None and not self._released and self._clock() >= self._deadline:
            self._mark_lost("the TTL ran out before the lease was renewed")
        return self._lost_reason is not None

    @property
    def lost_event(self) -> threading.Event:
        """A ``threading.Event`` set when the lease is lost (made on first use: most leases never need it)."""
        event = self._lost_event
        if event is None:
            with self._mutex:
                if self._lost_event is None:
                    self._lost_event = threading.Event()
                    if self._lost_reason is not None:
                        self._lost_event.set()
                event = self._lost_event
        return event

    @property
    def lost_reason(self) -> str | None:
        return self._lost_reason

    @property
    def in_doubt(self) -> str | None:
        """Why the lease is in doubt right now (backend connection suspended), else None."""
        return self._doubt

    @property
    def held(self) -> bool:
        """True while neither released nor lost nor in doubt (a local check, no round trip)."""
        return not self._released and not self.lost and self._doubt is None

    def ensure_held(self) -> None:
        """Raise unless the lease is still held (a local check: call it before each side effect).

        Checking is not enough on its own (the holder can pause right after it): writes must also
        carry ``fence`` to storage that checks it. Raises ``LeaseLost`` or ``NotHeld``.
        """
        self._check_process()
        if self._released:
            raise NotHeld(f"lease on {self.name!r} (fence {self.fence}) was already released")
        if self.lost:
            raise LeaseLost(self.name, self.fence, self._lost_reason or "lost")
        if self._doubt is not None:
            raise LeaseLost(self.name, self.fence, f"in doubt: {self._doubt}")

    async def wait_lost(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the lease to be lost; True if it was."""
        stopper = _compat.AsyncStopper()
        end = self._clock() + check_timeout(timeout)
        while not self.lost:
            left = end - self._clock()
            if left <= 0:
                return False
            await stopper.sleep(min(left, 0.01))
        return True

    # -- operations ----------------------------------------------------------------------------

    async def extend(self, *args: object, ttl: float | None = None) -> None:
        """Make the lease last ``ttl`` seconds (default: the lock's TTL) *from now*: it sets the time
        left, it does not add to it (redis-py's ``Lock.extend`` adds). Raises ``LeaseLost`` if the
        lock is no longer ours; the lease is then marked lost."""
        if args:
            raise TypeError(
                "extend() takes the new length as a keyword: lease.extend(ttl=30) makes the lease last "
                "30 s from now (it does not add 30 s to what is left)"
            )
        self._check_process()
        if self._released:
            raise NotHeld(f"cannot extend lease on {self.name!r}: it was already released")
        if self.lost:
            raise LeaseLost(self.name, self.fence, self._lost_reason or "lost")
        length = self._lock._params.ttl if ttl is None else check_ttl(ttl)
        if await self._extend_for(length):
            return
        reason = "the lock is no longer ours on the server (expired or taken over)"
        self._mark_lost(reason)
        raise LeaseLost(self.name, self.fence, reason)

    async def _extend_for(self, length: float) -> bool:
        """One EXTEND to ``length`` s from now (the user's or the renewer's, never both at once).

        The deadline is measured from before the request, so it is never later than the expiry the
        server applied. When no reply comes (an error, a cancellation), the server may still have
        applied it: then the lease keeps the earlier of its deadline and the one the request would
        have set, so a shorter extend whose reply was lost is believed too.
        """
        extending = self._extending
        if extending is None:
            with self._mutex:
                if self._extending is None:
                    self._extending = _compat.Mutex()
                extending = self._extending
        async with extending:
            if self._released:
                raise NotHeld(f"cannot extend lease on {self.name!r}: it was already released")
            if self._lost_reason is not None:
                raise LeaseLost(self.name, self.fence, self._lost_reason)
            cancels = _compat.cancel_requests()
            sent = self._clock()
            if lease_deadline(sent, length) < self._deadline:
                # A shorter extend: the server may apply it the moment it reads it, before we hear
                # back, so believe the shorter deadline from now on (found by the stress test).
                self._set_deadline(lease_deadline(sent, length))
            try:
                ok = await self._lock._ops().extend(self.name, self.token, max(1, int(length * 1000)))
            except BaseException as err:
                self._set_deadline(min(self._deadline, lease_deadline(sent, length)))
                if not isinstance(err, _compat.Cancelled):
                    _compat.check_cancel(cancels)  # as in _acquire: a swallowed cancellation still stops us
                raise
            if ok:
                self._set_deadline(lease_deadline(sent, length))
                self._doubt = None
            _compat.check_cancel(cancels)
            return ok

    def _set_deadline(self, deadline: float) -> None:
        """Move the deadline; when it moves earlier (a shorter extend), the deadline watch moves
        with it, so the loss is signalled at the new deadline, not the old one."""
        earlier = deadline < self._deadline
        self._deadline = deadline
        if earlier and not self._released and self._lost_reason is None:
            self._watch_gen += 1  # the running watch stops at its next round: this one replaces it
            _compat.watch_deadline(self, deadline - self._clock())

    async def release(self) -> None:
        """Release the lock. Never deletes a successor's lock: if the lease had already expired and
        the lock is not ours any more, nothing is changed and ``LeaseLost`` says so."""
        self._check_process()
        if self._released:
            raise NotHeld(f"lease on {self.name!r} (fence {self.fence}) was already released")
        self._released = True
        self._stop_background()
        was_lost = self._lost_reason
        backend = self._lock._ops()
        # As in _acquire: a cancellation that a library swallowed as the release completed is still
        # counted on the task, and the task must stop (found by the stress test, in CI).
        cancels = _compat.cancel_requests()
        # Shielded: a cancellation while the release is in flight must not leave the key behind.
        ok = await _compat.shielded(lambda: backend.release(self.name, self.token))
        log.debug("released %r fence=%d holder=%s ok=%s", self.name, self.fence, self._lock._params.label, ok)
        if not ok:
            reason = was_lost or "expired before release; the lock was not ours any more, so nothing was deleted"
            if was_lost is None:
                # Found out only now: every signal still fires (no interruption: we are leaving)
                with self._mutex:
                    self._lost_reason = reason
                self._signal_loss(reason, interrupt=False)
            _compat.check_cancel(cancels)  # the stop asked for goes first; on_lost has fired
            raise LeaseLost(self.name, self.fence, reason)
        _compat.check_cancel(cancels)

    async def __aenter__(self) -> AsyncLease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._released:
            return
        ours = self._cancelled_by_us and isinstance(exc, _compat.Cancelled)
        lost: LeaseLost | None = None
        try:
            await self.release()
        except LeaseLost as err:
            lost = err
        except _compat.Cancelled:
            if not self._cancelled_by_us:
                raise
            ours = True  # our repeated cancel landed in the release (which still completes)
        except BackendError:
            if exc is None:
                raise
        if self._cancelled_by_us:
            # The block was stopped because the lease was lost: say that, unless somebody else
            # cancelled the task too (then their cancellation must go on).
            alone = _compat.settle_cancels(self._owner, self._cancels)
            if ours and not alone:
                if exc is None:
                    raise _compat.Cancelled()
                return
            if ours or exc is None:
                raise LeaseLost(self.name, self.fence, self._lost_reason or "lost") from exc
            return
        if exc is None:
            if lost is not None:
                raise lost
            if self._lost_reason is not None:
                raise LeaseLost(self.name, self.fence, self._lost_reason)

    # -- background: renewal, deadline, backend loss events -----------------------------------

    def _start(self) -> None:
        params = self._lock._params
        if self._lock._abilities.watches_loss:
            self._unwatch = self._lock._backend.watch_loss(  # type: ignore[attr-defined]
                self.name, self.token, self._on_backend_event
            )
        delay = self._deadline - self._clock()
        if params.renew_interval is not None:
            # The renewer (and its stopper) start lazily, at the first renewal: most critical
            # sections end before it, and then no thread, task or event is ever made for them.
            delay = min(delay, params.renew_interval)
        _compat.watch_deadline(self, delay)

    def _stop_background(self) -> None:
        _compat.unwatch_deadline(self)  # nothing is left pending for a lease that ended
        if self._stopper is not None:
            self._stopper.stop()
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None

    def _check_deadline(self) -> float | None:
        """Timer callback: starts the renewer when its first round is due, marks the lease lost at
        its deadline; returns the delay until it wants to be called again (None: never).

        The deadline is checked here whatever becomes of the renewer: if it cannot start (no thread
        to be had) or dies, the lease still ends, with every signal, at its deadline."""
        if self._released or self._lost_reason is not None:
            return None
        left = self._deadline - self._clock()
        if left <= 0:
            self._mark_lost("the TTL ran out before the lease was renewed")
            return None
        interval = self._lock._params.renew_interval
        if interval is not None and not self._renewing:
            try:
                stopper = self._stopper
                if stopper is None:
                    stopper = self._stopper = _compat.AsyncStopper()
                if self._released:  # released meanwhile (from another thread): nothing to renew
                    return None
                _compat.spawn(_renew_loop, weakref.ref(self), stopper, interval)
            except Exception as err:
                log.warning(
                    "cannot start the renewer of %r fence=%d holder=%s, will retry (the lease ends at its "
                    "deadline unless renewed): %s",
                    self.name,
                    self.fence,
                    self._lock._params.label,
                    err,
                )
                instruments.renewed(self.name, "error")
                return min(left, max(interval / 4, 0.01))
            self._renewing = True
        return left

    def _on_backend_event(self, state: str, reason: str = "") -> None:
        """Backend push events: ``doubt`` (connection suspended), ``held`` (recovered), ``lost``."""
        if state == "lost":
            self._mark_lost(reason or "the backend session ended")
        elif state == "doubt":
            self._doubt = reason or "the connection to the lock server is suspended"
            log.warning(
                "lease on %r fence=%d holder=%s in doubt: %s",
                self.name,
                self.fence,
                self._lock._params.label,
                self._doubt,
            )
        elif state == "held":
            self._doubt = None

    def _mark_lost(self, reason: str) -> None:
        with self._mutex:
            if self._lost_reason is not None or self._released:
                return
            self._lost_reason = reason
        self._signal_loss(reason, interrupt=True)

    def _signal_loss(self, reason: str, interrupt: bool) -> None:
        """Every loss signal but the flag (set by the caller): metrics, log, the holder's task,
        ``on_lost``, and last ``lost_event``."""
        self._stop_background()
        instruments.lost(self.name, reason)
        log.warning("lease on %r fence=%d holder=%s lost: %s", self.name, self.fence, self._lock._params.label, reason)
        if interrupt and self._owner is not None:
            self._cancelled_by_us = True
            _compat.interrupt_owner(self._owner, f"fencelock: lease on {self.name!r} was lost: {reason}", self)
        callback = self._lock._on_lost
        if callback is not None:
            try:
                callback(self)
            except Exception:
                log.exception(
                    "on_lost callback for %r fence=%d holder=%s raised", self.name, self.fence, self._lock._params.label
                )
        # Last, so that whoever wakes on the event finds the callback already done.
        with self._mutex:
            event = self._lost_event
        if event is not None:
            event.set()

    def _check_process(self) -> None:
        if current_pid() != self._pid:
            raise NotHeld(
                f"lease on {self.name!r} was acquired by process {self._pid}; a forked child does not "
                "hold its parent's lock (acquire a new one in the child)"
            )


async def _renew_loop(ref: Callable[[], AsyncLease | None], stopper: _compat.AsyncStopper, interval: float) -> None:
    """Extend the lease now, then every ``interval`` s until it is released, lost, or collected.

    Holds only a weak reference between rounds, so dropping the lease (or the lock) stops it. A
    transport error is retried quickly until the lease's own deadline; a refusal (the key is gone or
    not ours) is a loss, signalled at once.
    """
    next_due = 0.0
    pid = os.getpid()
    while True:
        if await stopper.sleep(next_due) or os.getpid() != pid:
            return
        lease = ref()
        if lease is None or lease._released or lease._lost_reason is not None:
            return
        clock = lease._clock
        if clock() >= lease._deadline:
            lease._mark_lost("the TTL ran out before the lease was renewed")
            return
        params = lease._lock._params
        try:
            ok = await lease._extend_for(params.ttl)
        except LeaseError:  # released or lost while this round waited for the user's extend
            return
        except BackendError as err:
            log.warning(
                "renewing %r fence=%d holder=%s failed, will retry: %s", lease.name, lease.fence, params.label, err
            )
            instruments.renewed(lease.name, "error")
            next_due = max(0.001, min(interval / 4, lease._deadline - clock()))
            del lease
            continue
        if stopper.stopped or lease._released:
            return
        if not ok:
            instruments.renewed(lease.name, "lost")
            lease._mark_lost("renewal found the lock gone or held by another owner")
            return
        instruments.renewed(lease.name, "ok")
        next_due = interval
        del lease


class AsyncTracedBackend:
    """A backend seen through spans: ``fencelock.<backend>.<op>`` around each primitive the handle
    calls (``lock.name``, ``fencelock.outcome``, ``fencelock.fence`` when one was granted; an
    error is recorded on its span). Made per operation, only while a tracer provider is set."""

    __slots__ = ("_inner", "_prefix", "name")

    def __init__(self, inner: AsyncBackend) -> None:
        self._inner = inner
        self.name = inner.name
        self._prefix = f"fencelock.{getattr(inner, 'name', 'backend')}."

    async def try_acquire(
        self, key: str, token: str, ttl_ms: int, label: str, queue: bool, limit: int = 1, weight: int = 1
    ) -> Attempt:
        with tracing.span(self._prefix + "try_acquire", {"lock.name": key}) as span:
            if limit == 1 and weight == 1:  # the mutex's call, as the handle makes it untraced
                result = await self._inner.try_acquire(key, token, ttl_ms, label, queue)
            else:
                result = await self._inner.try_acquire(key, token, ttl_ms, label, queue, limit, weight)
            span_outcome(span, result)
            return result

    async def wait(self, key: str, token: str, timeout: float) -> int | None:
        with tracing.span(self._prefix + "wait", {"lock.name": key}) as span:
            result = await self._inner.wait(key, token, timeout)
            span_outcome(span, result)
            return result

    async def extend(self, key: str, token: str, ttl_ms: int) -> bool:
        with tracing.span(self._prefix + "extend", {"lock.name": key}) as span:
            result = await self._inner.extend(key, token, ttl_ms)
            span_outcome(span, result)
            return result

    async def release(self, key: str, token: str) -> bool:
        with tracing.span(self._prefix + "release", {"lock.name": key}) as span:
            result = await self._inner.release(key, token)
            span_outcome(span, result)
            return result

    async def abandon(self, key: str, token: str) -> None:
        await self._inner.abandon(key, token)

    async def inspect(self, key: str) -> LockInfo | None:
        return await self._inner.inspect(key)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _unknown_acquire_arguments(unknown: dict[str, Any]) -> TypeError:
    names = ", ".join(sorted(unknown))
    hint = ""
    if "blocking_timeout" in unknown:
        hint = "; redis-py's blocking_timeout is fencelock's timeout: lock.acquire(timeout=5)"
    return TypeError(
        f"acquire() got unexpected keyword argument(s) {names}: it takes timeout=seconds and blocking=True/False"
        f"{hint}"
    )
