"""One redis-py client (so one connection pool) per URL in a process, shared by the locks made from it.

A lock per name (the demo makes one per file) would otherwise open a client, a pool and at least
one connection per lock: 50 locks from one URL held 51 connections on the server, and making each
cost about 100 us. Here the first backend made from a URL creates the client, later ones reuse
it, and the last one closed closes it. The URL is parsed and validated once: a second lock from
the same URL costs a dictionary lookup.

A backend collected without ``close()`` (a lock made for one call and dropped) only counts itself
out: its client stays in the registry, idle, for the next lock from that URL (otherwise every such
lock would pay for a new client and a new connection), until a later user closes it as the last
one, or the process exits. So at most one idle client per URL (per event loop) stays open.

- Blocking clients are shared process-wide: redis-py's pool is thread-safe and checks the pid on
  every checkout, so a forked child never uses a parent's socket. A forked child also starts with
  an empty registry (``os.register_at_fork``): its locks get clients of their own, while the
  entries it inherited are the parent's and are never closed from the child.
- asyncio clients belong to an event loop (their connections do), so they are shared per running
  loop; a backend made outside a running loop gets a client of its own (it may be used in any
  later loop, and two such locks in two loops must not share connections).
- At interpreter exit the blocking clients still open are closed (``atexit``).
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["SharedClient", "attach", "open_count"]


class SharedClient:
    """A client and how many backends use it; ``parsed``: what every backend of the URL starts with
    (the URL parsed and validated once)."""

    __slots__ = ("asyncio", "client", "closed", "key", "loop", "parsed", "pid", "users")

    def __init__(
        self, key: tuple[Any, ...], client: Any, parsed: dict[str, Any], asyncio: bool, loop: Any = None
    ) -> None:
        self.key = key
        self.loop = loop  # a weak reference to the event loop of an asyncio client made in one
        self.client = client
        self.parsed = parsed
        self.asyncio = asyncio
        self.pid = os.getpid()
        self.users = 0
        self.closed = False


# Reentrant: a backend collected (``__del__``) while this thread is inside ``attach`` detaches
# here too, and must not deadlock on our own lock.
_mutex = threading.RLock()
_registry: dict[tuple[Any, ...], SharedClient] = {}


def _loop_key(asyncio: bool) -> Any:
    if not asyncio:
        return None
    import asyncio as aio

    try:
        loop = aio.get_running_loop()
    except RuntimeError:
        return None
    return id(loop), weakref.ref(loop)


def attach(
    url: str, client_kwargs: dict[str, Any], asyncio: bool, make: Callable[[], tuple[Any, dict[str, Any]]]
) -> SharedClient:
    """The shared client for ``url`` (made by ``make`` -> (client, parsed options) on first use),
    counted as used once more. ``detach`` it exactly once."""
    loop = _loop_key(asyncio)
    extra = tuple(sorted((k, repr(v)) for k, v in client_kwargs.items())) if client_kwargs else ()
    key: tuple[Any, ...] = (asyncio, loop[0] if loop else None, url, extra)
    if asyncio and loop is None:
        key = (*key, object())  # outside a running loop: not shared
    with _mutex:
        entry = _registry.get(key)
        if entry is not None and (entry.closed or (loop is not None and entry.loop() is not loop[1]())):
            entry = None  # a loop that ended and whose id came back: not the same loop
        if entry is None:
            _sweep()
            client, parsed = make()
            entry = SharedClient(key, client, parsed, asyncio, loop[1] if loop else None)
            _registry[key] = entry
        entry.users += 1
        return entry


def _sweep() -> None:
    """Forget the idle asyncio clients of event loops that ended (their connections went with the
    loop); called under ``_mutex`` when a new client is made, so the registry stays bounded."""
    for key, entry in list(_registry.items()):
        if entry.loop is not None and entry.loop() is None and entry.users <= 0:
            del _registry[key]


def detach(entry: SharedClient, close: bool = True) -> Any:
    """One user fewer. Returns the client when that was the last user and ``close`` is set (the
    caller closes it: an asyncio client must be closed with ``await``), else None. Without
    ``close`` (a backend collected unclosed) an unused client stays registered for reuse."""
    with _mutex:
        if entry.closed or entry.pid != os.getpid():
            return None  # a parent's client in a forked child: the parent closes it
        entry.users -= 1
        if entry.users > 0 or not close:
            return None
        entry.closed = True
        if _registry.get(entry.key) is entry:
            del _registry[entry.key]
    return entry.client


def open_count() -> int:
    """How many shared clients are open in this process (for tests and monitoring)."""
    with _mutex:
        return sum(1 for e in _registry.values() if not e.closed)


def _after_fork_in_child() -> None:
    global _mutex
    _mutex = threading.RLock()  # another thread may have held it at fork time
    _registry.clear()


def _close_at_exit() -> None:
    with _mutex:
        entries = [e for e in _registry.values() if not e.closed and not e.asyncio and e.pid == os.getpid()]
        _registry.clear()
    for entry in entries:
        entry.closed = True
        try:
            entry.client.close()
        except Exception:  # best effort at exit: the process is ending anyway
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_at_exit)
