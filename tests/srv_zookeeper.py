"""A real ZooKeeper for the test run: Debian's jar, a private zoo.cfg, a free loopback port.

Registers itself (``servers.register``) at import, so the contract
suite runs against it. The server is started once per session and stopped by its pid.

Capabilities, honestly:
  pause       SIGSTOP / SIGCONT the JVM.
  delete_key  delete the holder's lock node (as an operator would); the renewer must notice.
  fifo        waiters queue as sequential nodes and are served in creation order.
  counted     semaphores and read-write locks (limit, weight) on the same nodes.
Not ``restart_empty`` / ``restart_snapshot``: a ZooKeeper that loses (or rolls back) its data
restarts its zxids, and the fence is the node's creation zxid. Losing acknowledged writes is
outside ZooKeeper's guarantees (every write is fsynced to a quorum's transaction log before it is
acknowledged); fencelock does not try to survive it. Not ``expire_key``: a lock node has no
server-side expiry to trigger (its lifetime is the session's; see test_zookeeper.py for session
expiry). Not ``password``: digest auth never rejects a wrong password, it only yields an identity
without rights, so there is no "wrong password" error to test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

import servers
from fencelock_chaos.servers import ZooKeeper

TICK_MS = 200
SESSION_TIMEOUT = 4.0
"""Session timeout of the contract suite's clients (seconds). It is also their longest lease
(``max_lease``) and how long a killed holder blocks the lock: long enough for the suite's waits,
short enough that a killed holder frees the lock well within its 10 s acquire timeout."""

ZK_ROOT = "/fencelock"


class ZooKeeperLockServer(servers.LockServer):
    """The contract suite's handle: URL, pause/resume, delete the holder's node."""

    kind = "zookeeper"
    capabilities = frozenset({"pause", "delete_key", "fifo", "counted"})
    request_timeout = 3.0  # the request timeout of the URL's client

    def __init__(self) -> None:
        from kazoo.client import KazooClient

        self.server = ZooKeeper(tick_ms=TICK_MS).start()
        self.admin = KazooClient(hosts=self.hosts, timeout=10.0)
        self.admin.start(timeout=15)

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def url(self) -> str:
        return f"zk://{self.hosts}/?session_timeout={SESSION_TIMEOUT:g}"

    def url_with(self, **params: object) -> str:
        """The URL with other query parameters (e.g. a shorter ``session_timeout``)."""
        query = "&".join(f"{k}={v}" for k, v in {"session_timeout": SESSION_TIMEOUT, **params}.items())
        return f"zk://{self.hosts}/?{query}"

    def pause(self) -> None:
        self.server.pause()

    def resume(self) -> None:
        self.server.resume()

    @property
    def upstream(self) -> tuple[str, str, int]:
        return ("tcp", "127.0.0.1", self.server.port)

    def url_through(self, port: int) -> str:
        return f"zk://127.0.0.1:{port}/?session_timeout={SESSION_TIMEOUT:g}"

    def lock_path(self, name: str) -> str:
        from fencelock.backends.zookeeper import lock_parent

        return lock_parent(ZK_ROOT, name)

    def children(self, name: str) -> list[str]:
        """The lock's contender nodes in queue order (holder first)."""
        from fencelock.backends.zookeeper import queue_order

        return queue_order(self.admin.get_children(self.lock_path(name)))

    def delete_lock(self, name: str) -> None:
        holder = self.children(name)[0]
        self.admin.delete(f"{self.lock_path(name)}/{holder}")

    def last_fence(self, name: str) -> int:
        """An upper bound of the fences issued under the lock's current parent node: its pzxid
        (the zxid of the last create or delete of a child). Every later fence is greater."""
        stat = self.admin.exists(self.lock_path(name))
        return 0 if stat is None else int(stat.pzxid)

    def stop(self) -> None:
        try:
            self.admin.stop()
            self.admin.close()
        finally:
            self.server.stop()


servers.register("zookeeper", "zookeeper_server", ZooKeeperLockServer)


@pytest.fixture(scope="session")
def zookeeper_server() -> Iterator[ZooKeeperLockServer]:
    """Debian's ZooKeeper (apt install zookeeperd; .ci/run does it), private config, free port."""
    if shutil.which("java") is None or not os.path.exists("/usr/share/java/zookeeper.jar"):
        pytest.fail("ZooKeeper is missing: apt-get install zookeeperd (.ci/run does it)")
    server = ZooKeeperLockServer()
    try:
        yield server
    finally:
        server.stop()
