"""A real ZooKeeper for the test run: Debian's jar, a private zoo.cfg, a free loopback port.

Registers itself in ``servers.BACKENDS`` / ``servers.CAPABILITIES`` at import, so the contract
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
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import servers

CLASSPATH = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar"
MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
TICK_MS = 200
SESSION_TIMEOUT = 4.0
"""Session timeout of the contract suite's clients (seconds). It is also their longest lease
(``max_lease``) and how long a killed holder blocks the lock: long enough for the suite's waits,
short enough that a killed holder frees the lock well within its 10 s acquire timeout."""

ZK_ROOT = "/fencelock"


def free_port() -> int:
    """A port nobody listens on right now (loopback only)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def four_letter(port: int, word: bytes, timeout: float = 1.0) -> bytes:
    """Send a four-letter command (``ruok``) and return the answer (b"" when none)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(word)
            chunks = []
            for _ in range(16):  # bounded: the answer is a few bytes
                data = s.recv(1024)
                if not data:
                    break
                chunks.append(data)
            return b"".join(chunks)
    except OSError:
        return b""


class ZooKeeperServer:
    """One standalone ZooKeeper JVM on 127.0.0.1:<port>, data in a temp dir."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.dir = directory
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        (directory / "data").mkdir(parents=True, exist_ok=True)
        self.cfg = directory / "zoo.cfg"
        self.cfg.write_text(
            "\n".join(
                [
                    f"dataDir={directory / 'data'}",
                    f"clientPort={self.port}",
                    "clientPortAddress=127.0.0.1",
                    f"tickTime={TICK_MS}",
                    # the negotiated session timeout must be the one a client asks for (fencelock's
                    # lease is capped by it): widen the default 2..20 ticks window
                    "minSessionTimeout=400",
                    "maxSessionTimeout=60000",
                    "maxClientCnxns=0",  # every fencelock.Lock from a URL has its own session
                    "admin.enableServer=false",
                    "4lw.commands.whitelist=ruok",
                    "forceSync=no",  # a test server: speed over durability
                    "",
                ]
            )
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> None:
        log = open(self.dir / "zookeeper.log", "ab")
        env = dict(os.environ, ZOO_LOG_DIR=str(self.dir), ZOO_LOG4J_PROP="WARN,CONSOLE")
        self.proc = subprocess.Popen(
            ["java", "-Xmx256m", "-XX:+UseSerialGC", "-cp", CLASSPATH, MAIN, str(self.cfg)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        log.close()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"zookeeper exited with {self.proc.returncode}; see {self.dir}/zookeeper.log")
            if four_letter(self.port, b"ruok") == b"imok":
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"zookeeper did not answer ruok within {timeout} s; see {self.dir}/zookeeper.log")

    def stop(self) -> None:
        """SIGKILL the JVM by its pid and reap it (its data directory stays)."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)  # a paused JVM cannot die... it can, but be tidy
            proc.kill()
        proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP the JVM and return once every one of its threads has stopped: kill() only
        queues the signal, and a thread busy on the other core can still answer a request."""
        os.kill(self.pid, signal.SIGSTOP)
        end = time.monotonic() + 5
        while time.monotonic() < end and not self._all_stopped():
            time.sleep(0.001)

    def _all_stopped(self) -> bool:
        try:
            tasks = os.listdir(f"/proc/{self.pid}/task")
            states = []
            for tid in tasks:
                with open(f"/proc/{self.pid}/task/{tid}/stat") as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
        except OSError:
            return False
        return all(state in ("T", "t") for state in states)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


class ZooKeeperLockServer(servers.LockServer):
    """The contract suite's handle: URL, pause/resume, delete the holder's node."""

    kind = "zookeeper"
    capabilities = frozenset({"pause", "delete_key", "fifo", "counted"})

    def __init__(self, directory: Path) -> None:
        from kazoo.client import KazooClient

        self.server = ZooKeeperServer(directory)
        self.server.start()
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


servers.BACKENDS["zookeeper"] = "zookeeper_server"
servers.CAPABILITIES["zookeeper"] = ZooKeeperLockServer.capabilities


@pytest.fixture(scope="session")
def zookeeper_server() -> Iterator[ZooKeeperLockServer]:
    """Debian's ZooKeeper (apt install zookeeperd; .ci/run does it), private config, free port."""
    if shutil.which("java") is None or not os.path.exists("/usr/share/java/zookeeper.jar"):
        pytest.fail("ZooKeeper is missing: apt-get install zookeeperd (.ci/run does it)")
    directory = Path(tempfile.mkdtemp(prefix="fl-zk-"))
    server = ZooKeeperLockServer(directory)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
