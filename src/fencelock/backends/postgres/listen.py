"""Wake-ups by LISTEN/NOTIFY: one listening connection per backend, shared by its waiters.

A release (or abandon, or a grant that leaves permits free) hands the permits to the waiters at the
head of the queue inside its own transaction and notifies each grantee on the schema's channel with
``"<md5 of its token> <fence>"`` (never the token itself: any session may LISTEN). PostgreSQL
delivers a notification when the notifying transaction commits, to every session that was
listening before. The listener is a daemon thread on a connection of its own, started (LISTEN
confirmed) before the first request that can enqueue, so no handoff made after that can be missed
while it stays connected; it keeps recent handoffs for a while (a waiter may ask just after the
notification came), and hands each to the waiter that registered for it, whatever thread or event
loop that waiter runs on.

Nothing depends on it for safety: a handoff is a lease row, and a waiter that missed its
notification finds it at its next poll (``try_acquire`` answers a token that holds with its
fence). When the listening connection breaks it reconnects with backoff and ``healthy`` is False
meanwhile: waiters then poll (see ``PostgresBackend.wait``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

__all__ = ["AsyncPause", "AsyncWaiter", "Listener", "Pause", "Waiter", "token_hash"]

RECENT_MAX = 4096
RECENT_AGE = 30.0
IDLE_EXIT = 15.0
"""Seconds without a waiter after which the listener closes its connection and its thread ends
(the next request that may queue starts it again): a backend that waited once keeps nothing open."""


def token_hash(token: str) -> str:
    """How a notification names a grantee: the md5 of its token, as the SQL's ``md5()`` writes it."""
    return hashlib.md5(token.encode(), usedforsecurity=False).hexdigest()


class Listener:
    """One LISTENing connection and its dispatch (see the module docstring)."""

    def __init__(self, connect: Callable[[], Any], channel: str) -> None:
        self._connect = connect
        self.channel = channel
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._subs: dict[str, Callable[[int], None]] = {}
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._last_use = time.monotonic()
        self.healthy = False

    def start(self, timeout: float) -> bool:
        """Connect and LISTEN (in the listener's thread); True once listening, False if that did not
        happen within ``timeout`` (waiters poll meanwhile; the thread keeps trying)."""
        if self._pid != os.getpid():  # forked: the parent's thread is gone, and its lock may be held
            self._lock = threading.Lock()
            self._thread = None
        with self._lock:
            self._last_use = time.monotonic()
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._stop = threading.Event()
                self._ready = threading.Event()
                self.healthy = False
                self._subs = {}
                self._thread = threading.Thread(target=self._run, name="fencelock-pg-listen", daemon=True)
                self._thread.start()
        self._ready.wait(timeout)
        return self.healthy

    def _run(self) -> None:
        from psycopg import sql

        me = threading.current_thread()
        stop = self._stop
        failures = 0
        while not stop.is_set() and not self._retire(me):
            conn = None
            try:
                conn = self._connect()
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                self._set_health(me, True)
                self._ready.set()
                failures = 0
                while not stop.is_set() and not self._retire(me):
                    for note in conn.notifies(timeout=0.5):
                        self._deliver(note.payload)
            except Exception:
                self._set_health(me, False)
                failures += 1
                self._ready.set()  # a start() waiting for us learns that we are not listening
                stop.wait(min(2.0, 0.05 * 2 ** min(failures, 6)) * random.uniform(0.5, 1.0))
            finally:
                self._set_health(me, False)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()

    def _set_health(self, me: threading.Thread, healthy: bool) -> None:
        with self._lock:
            if self._thread is me:
                self.healthy = healthy

    def _retire(self, me: threading.Thread) -> bool:
        """True (and this thread is no longer the listener) when nobody waited for ``IDLE_EXIT`` s."""
        with self._lock:
            if self._thread is not me:
                return True
            if not self._subs and time.monotonic() - self._last_use > IDLE_EXIT:
                self.healthy = False
                self._thread = None  # the next start() makes a new one
                return True
            return False

    def _deliver(self, payload: str) -> None:
        digest, _, fence_text = payload.partition(" ")
        try:
            fence = int(fence_text)
        except ValueError:
            return
        with self._lock:
            callback = self._subs.pop(digest, None)
            if callback is None:
                now = time.monotonic()
                self._recent[digest] = (fence, now)
                while self._recent and (
                    len(self._recent) > RECENT_MAX or next(iter(self._recent.values()))[1] < now - RECENT_AGE
                ):
                    self._recent.popitem(last=False)
        if callback is not None:
            callback(fence)

    def subscribe(self, digest: str, callback: Callable[[int], None]) -> int | None:
        """Call ``callback(fence)`` when a handoff to ``digest`` arrives; returns the fence at once
        instead when it already arrived (nothing is registered then)."""
        with self._lock:
            self._last_use = time.monotonic()
            got = self._recent.pop(digest, None)
            if got is not None:
                return got[0]
            self._subs[digest] = callback
        return None

    def unsubscribe(self, digest: str) -> None:
        with self._lock:
            self._subs.pop(digest, None)

    def close(self, wait: bool = True) -> None:
        """Stop listening. ``wait=False`` (from a garbage collector's finalizer, which may run in any
        thread, a lease's renewer included) only tells the thread to stop: it ends within 0.5 s."""
        self._stop.set()
        thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread() and self._pid == os.getpid():
            thread.join(2.0)
        self._thread = None


class Waiter:
    """Block a thread until the listener hands ``digest`` a fence, or ``timeout`` passes."""

    @staticmethod
    def wait(listener: Listener, digest: str, timeout: float) -> int | None:
        box: list[int] = []
        done = threading.Event()

        def got(fence: int) -> None:
            box.append(fence)
            done.set()

        fence = listener.subscribe(digest, got)
        if fence is not None:
            return fence
        try:
            done.wait(timeout)
        finally:
            listener.unsubscribe(digest)
        return box[0] if box else None


class AsyncWaiter:
    """The same on an event loop: the listener thread resolves a future of the waiting task's loop."""

    @staticmethod
    async def wait(listener: Listener, digest: str, timeout: float) -> int | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()

        def resolve(fence: int) -> None:
            if not future.done():
                future.set_result(fence)

        def got(fence: int) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(resolve, fence)

        fence = listener.subscribe(digest, got)
        if fence is not None:
            return fence
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            return None
        finally:
            listener.unsubscribe(digest)


class Pause:
    """A bounded sleep of the blocking API (Event.wait: ``time.sleep`` fails under libfaketime)."""

    @staticmethod
    def sleep(seconds: float) -> None:
        threading.Event().wait(max(0.0, seconds))


class AsyncPause:
    """The asyncio twin of ``Pause``."""

    @staticmethod
    async def sleep(seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))
