"""A bound on every call: past its deadline, the connection's socket is shut down under it.

libpq has no read timeout, and a server that stops answering (SIGSTOP, a dead host behind a live
route, a lock wait on the server) would leave a call blocked in ``poll()`` for ever, in the blocking
API and the asyncio one alike. ``statement_timeout`` cannot help when the server process itself is
not running. So every call is *armed* with its deadline; one daemon thread per process looks at the
armed calls every ``TICK`` seconds and ``shutdown()``s the socket of any call past its deadline.
The blocked ``poll()`` (or the event loop's selector) then sees the socket closed, libpq reports
the connection lost, and the call raises: ``BackendUnavailable`` within ``request_timeout + TICK``.
The connection is then broken and thrown away (a user's pool discards it by itself).

Arming costs a dict store and a dict pop, so the hot path pays microseconds; the thread sleeps on an
Event and exits after a few idle seconds. A forked child starts its own thread on first use.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time

__all__ = ["TICK", "Watchdog", "WATCHDOG"]

TICK = 0.1
IDLE_EXIT = 5.0


class Watchdog:
    def __init__(self) -> None:
        self._armed: dict[int, tuple[float, int]] = {}
        self._fired: set[int] = set()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._firing = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def arm(self, fd: int, timeout: float) -> int:
        """Shut ``fd`` down if still armed ``timeout`` seconds from now; returns the ticket."""
        ticket = next(self._ids)
        self._armed[ticket] = (time.monotonic() + timeout, fd)
        thread = self._thread
        if thread is None or self._pid != os.getpid() or not thread.is_alive():
            self._start()
        return ticket

    def disarm(self, ticket: int) -> bool:
        """Done: forget the ticket. True when the deadline had passed and the socket was shut down.
        Under the lock the watchdog fires under: once this returns, the socket (which the caller may
        now close, and the OS give to someone else) is never touched."""
        with self._firing:
            self._armed.pop(ticket, None)
            if ticket in self._fired:
                self._fired.discard(ticket)
                return True
        return False

    def _start(self) -> None:
        with self._lock:
            thread = self._thread
            if thread is not None and self._pid == os.getpid() and thread.is_alive():
                return
            if self._pid != os.getpid():  # forked: the copied lock may be held by a thread not copied
                self._firing = threading.Lock()
                self._fired = set()
            self._pid = os.getpid()
            thread = threading.Thread(target=self._run, name="fencelock-pg-watchdog", daemon=True)
            self._thread = thread
            thread.start()

    def _run(self) -> None:
        me = threading.current_thread()
        pause = threading.Event()  # never set: Event.wait, not time.sleep (which fails under libfaketime)
        idle_since = time.monotonic()
        while True:
            pause.wait(TICK)
            now = time.monotonic()
            if self._armed:
                idle_since = now
            elif now - idle_since > IDLE_EXIT:
                with self._lock:
                    if not self._armed and self._thread is me:
                        self._thread = None
                        return
                continue
            for ticket, (deadline, fd) in list(self._armed.items()):
                if deadline <= now:
                    with self._firing:
                        if self._armed.pop(ticket, None) is not None:
                            self._fired.add(ticket)
                            _shutdown(fd)


def _shutdown(fd: int) -> None:
    """Shut the socket behind ``fd`` down (both ways) without closing ``fd``: its owner still does."""
    try:
        dup = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        dup.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        dup.close()


WATCHDOG = Watchdog()
