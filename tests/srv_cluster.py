"""A real Redis Cluster on loopback: 3 masters + 3 replicas of Debian's redis-server, created with
``redis-cli --cluster create``, stopped by pid.

    cluster = RedisClusterServers(directory).start()
    client = cluster.client()              # the user's own redis.cluster.RedisCluster
    cluster.kill(port)                     # SIGKILL one node (a failover follows)
    cluster.stop()
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from servers import wait_ping

DEBIAN_REDIS = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"

NODE_TIMEOUT_MS = 2000
"""cluster-node-timeout: a master is failed over no sooner than this after it stops answering."""


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_ports(count: int) -> list[int]:
    """``count`` loopback ports whose cluster bus ports (+10000) are free too."""
    ports: list[int] = []
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 < 65536 and port not in ports and _free(port) and _free(port + 10000):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError("no free loopback ports for a cluster")


class RedisClusterServers:
    """Six nodes; ``masters`` and ``replicas`` are filled in once the cluster is created."""

    def __init__(self, directory: Path, nodes: int = 6, replicas: int = 1) -> None:
        self.dir = directory
        self.replicas = replicas
        self.ports = free_cluster_ports(nodes)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def _args(self, port: int) -> list[str]:
        node_dir = self.dir / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        return [
            DEBIAN_REDIS,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(node_dir),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--save", "",
            "--appendonly", "no",
            "--repl-diskless-sync-delay", "0",  # replicas in sync at once, so a failover can happen
            "--daemonize", "no",
            "--logfile", str(node_dir / "server.log"),
        ]  # fmt: skip

    def start(self) -> RedisClusterServers:
        shutil.rmtree(self.dir, ignore_errors=True)
        try:
            for port in self.ports:
                self.procs[port] = subprocess.Popen(
                    self._args(port), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            for port in self.ports:
                self._wait_ping(port)
            create = subprocess.run(
                [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            if create.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {create.stdout}{create.stderr}")
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ping(self, port: int, timeout: float = 30.0) -> None:
        wait_ping(self.procs[port], port, "cluster node", timeout)

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, decode_responses=True)

    def alive_ports(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def wait_ok(self, timeout: float = 120.0) -> None:
        """Until every live node says cluster_state:ok, all 16384 slots are served by live masters and
        every replica is in sync with its master."""
        end = time.monotonic() + timeout
        while True:
            try:
                if all(self._ok(port) for port in self.alive_ports()):
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > end:
                raise RuntimeError("cluster did not become ok in time")
            time.sleep(0.1)

    def _ok(self, port: int) -> bool:
        with self.node(port) as c:
            info = c.execute_command("CLUSTER", "INFO")
            text = info if isinstance(info, str) else info.decode()
            fields = dict(line.split(":", 1) for line in text.split() if ":" in line)
            if fields.get("cluster_state") != "ok" or fields.get("cluster_slots_ok") != "16384":
                return False
            masters = self.masters(port)
            if not all(p in self.alive_ports() for p in masters.values()):
                return False
            # A replica that never finished its first sync cannot take over: wait for the links.
            replication = c.info("replication")
            return replication.get("role") != "slave" or replication.get("master_link_status") == "up"

    def masters(self, via: int | None = None) -> dict[tuple[int, int], int]:
        """Slot range (first, last) -> port of the master serving it, as node ``via`` sees it."""
        port = via if via is not None else self.alive_ports()[0]
        with self.node(port) as c:
            shards = c.execute_command("CLUSTER", "SLOTS")
        return {(int(s[0]), int(s[1])): int(s[2][1]) for s in shards}

    def master_of_slot(self, slot: int) -> int:
        for (first, last), port in self.masters().items():
            if first <= slot <= last:
                return port
        raise LookupError(slot)

    def client(self) -> RedisCluster:
        return RedisCluster(host="127.0.0.1", port=self.alive_ports()[0], socket_timeout=5, socket_connect_timeout=2)

    def kill(self, port: int) -> None:
        proc = self.procs[port]
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(30)
        shutil.rmtree(self.dir, ignore_errors=True)
