"""The process-wide registry of cores: one per URL (our client) or per user's ``KazooClient``.

A lock per file in the demo would otherwise open a ZooKeeper session and three threads per file.
Locks made from the same URL in one process share the client fencelock creates for it; locks given
the same KazooClient share one core for it. Tokens keep their nodes apart; the last backend closed
(or collected without ``close()``) stops the core. A forked child starts with an empty registry:
the parent's clients, their threads and sessions stay the parent's.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any

from ..._errors import ConfigurationError
from .core import Core
from .urls import ZkSettings

__all__ = ["attach", "check_client", "detach", "detach_from_gc", "make_client"]

_NEEDS_KAZOO = "the ZooKeeper backend needs kazoo: pip install 'fencelock[zookeeper]'"


def make_client(settings: ZkSettings) -> tuple[Any, Any]:
    """A KazooClient for ``settings`` (not started) and the ACL our nodes get."""
    try:
        from kazoo.client import KazooClient
        from kazoo.security import make_digest_acl
    except ImportError as err:  # pragma: no cover - an optional dependency
        raise ConfigurationError(_NEEDS_KAZOO) from err
    acl = None
    kwargs: dict[str, Any] = dict(settings.tls)
    if settings.auth is not None:
        user, password = settings.auth
        kwargs["auth_data"] = [("digest", f"{user}:{password}")]
        acl = [make_digest_acl(user, password, all=True)]
    client = KazooClient(
        hosts=settings.hosts,
        timeout=settings.session_timeout,
        # reconnect quickly after an outage (kazoo's default backs off to a minute)
        connection_retry={"max_tries": -1, "delay": 0.05, "backoff": 2, "max_delay": 1.0},
        **kwargs,
    )
    return client, acl


def check_client(client: Any) -> None:
    try:
        from kazoo.client import KazooClient
    except ImportError as err:  # pragma: no cover
        raise ConfigurationError(_NEEDS_KAZOO) from err
    if not isinstance(client, KazooClient):
        raise ConfigurationError(f"expected a kazoo KazooClient, got {type(client).__name__}")


_mutex = threading.Lock()
_owner = 0  # thread id holding _mutex (see detach_from_gc)
_cores: dict[tuple[Any, ...], list[Any]] = {}  # key -> [core, number of backends using it]


def attach(key: tuple[Any, ...], make: Callable[[], Core]) -> Core:
    """The core for ``key`` (made by ``make`` if there is none yet), counted as used once more."""
    global _owner
    with _mutex:
        _owner = threading.get_ident()
        try:
            entry = _cores.get(key)
            if entry is None or entry[0].closed:
                entry = _cores[key] = [make(), 0]
            entry[1] += 1
            return entry[0]  # type: ignore[no-any-return]
        finally:
            _owner = 0


def detach(key: tuple[Any, ...], core: Core, from_gc: bool) -> None:
    """One user of ``core`` fewer; the last one shuts it down."""
    global _owner
    with _mutex:
        _owner = threading.get_ident()
        try:
            entry = _cores.get(key)
            if entry is not None and entry[0] is core:
                entry[1] -= 1
                if entry[1] > 0:
                    return
                del _cores[key]
        finally:
            _owner = 0
    core.shutdown(from_gc)


def _after_fork_in_child() -> None:
    # The parent's cores stay the parent's (their keys carry its pid, their shutdown does nothing in
    # a child); a lock another thread held at fork time would never be released here.
    global _mutex, _owner
    _mutex = threading.Lock()
    _owner = 0
    _cores.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def detach_from_gc(key: tuple[Any, ...], core: Core) -> None:
    """Finalizer of a backend dropped without close(). The collector can run it anywhere, also in
    this very thread while it holds ``_mutex`` (inside ``attach``): then detach from another
    thread instead of deadlocking on our own lock."""
    if _owner != threading.get_ident():
        detach(key, core, True)
        return
    with contextlib.suppress(RuntimeError):  # interpreter shutting down: the process exit closes all
        threading.Thread(target=detach, args=(key, core, True), daemon=True).start()
