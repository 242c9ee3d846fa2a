"""What a PostgreSQL lock leaves behind: nothing, even when it is never closed.

A lock per name (the demo makes one per file) made from a URL and dropped without ``close()``
must not keep its connections or its LISTEN thread: before the fix, 30 such locks held 60
connections and 30 threads until the process exited (the listener's thread held the backend)."""

from __future__ import annotations

import asyncio
import gc
import threading
import uuid
from typing import Any

import psycopg

import fencelock
from fencelock import aio
from servers import wait_until


def _app_url(postgres_server: Any) -> tuple[str, str]:
    app = f"fl-gc-{uuid.uuid4().hex[:10]}"
    return f"{postgres_server.url}&application_name={app}", app


def _sessions(postgres_server: Any, app: str) -> int:
    rows = postgres_server.query("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,))
    return int(rows[0][0])


def _listeners() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "fencelock-pg-listen")


def test_locks_dropped_without_close_leave_no_connection_or_thread(postgres_server: Any, name: str) -> None:
    url, app = _app_url(postgres_server)
    before = _listeners()
    for i in range(30):
        lock = fencelock.Lock(f"{name}-{i}", url, ttl=5)
        with lock:
            pass
        assert _sessions(postgres_server, app) >= 1  # it did connect
        del lock
    gc.collect()
    assert wait_until(lambda: _sessions(postgres_server, app) == 0, 10), _sessions(postgres_server, app)
    assert wait_until(lambda: _listeners() <= before, 10), _listeners()


def test_a_waiting_lock_still_wakes_while_others_are_collected(postgres_server: Any, name: str) -> None:
    """Collecting one dropped lock stops only its own listener, never another lock's."""
    url, _ = _app_url(postgres_server)
    holder = fencelock.Lock(name, url, ttl=5)
    waiter = fencelock.Lock(name, url, ttl=5)
    lease = holder.acquire()
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(waiter.acquire(timeout=20)))
    t.start()
    for i in range(5):
        dropped = fencelock.Lock(f"{name}-x{i}", url, ttl=5)
        with dropped:
            pass
        del dropped
        gc.collect()
    lease.release()
    t.join(30)
    assert got and got[0].fence > lease.fence
    got[0].release()
    holder.close()
    waiter.close()


async def test_async_locks_dropped_without_close_leave_no_connection(postgres_server: Any, name: str) -> None:
    url, app = _app_url(postgres_server)
    for i in range(20):
        lock = aio.Lock(f"{name}-{i}", url, ttl=5)
        async with lock:
            pass
        del lock
    gc.collect()
    for _ in range(100):  # bounded: 10 s
        if _sessions(postgres_server, app) == 0:
            break
        await asyncio.sleep(0.1)
    assert _sessions(postgres_server, app) == 0


def test_closed_locks_close_their_connections_at_once(postgres_server: Any, name: str) -> None:
    url, app = _app_url(postgres_server)
    locks = [fencelock.Lock(f"{name}-{i}", url, ttl=5) for i in range(5)]
    for lock in locks:
        with lock:
            pass
    for lock in locks:
        lock.close()
    assert wait_until(lambda: _sessions(postgres_server, app) == 0, 5), _sessions(postgres_server, app)
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:  # the server is fine
        assert conn.execute("SELECT 1").fetchone() == (1,)
