"""Redis Sentinel on loopback: a master, one replica and three sentinels (Debian's redis-server and
redis-sentinel), stopped by pid.

The replica authenticates to the master as ACL user ``repl``; ``cut_replication()`` disables that
user and drops its connection, so writes made afterwards stay on the master alone (the replica
cannot reconnect) while the sentinels, which use the default user, still see both servers.
``restore_replication()`` undoes it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis
from redis.sentinel import Sentinel

from servers import wait_ping
from srv_tls import free_port

DEBIAN_REDIS = "/usr/bin/redis-server"
DEBIAN_SENTINEL = "/usr/bin/redis-sentinel"
SERVICE = "flmaster"
DOWN_AFTER_MS = 1000
REPL_PASSWORD = "repl-pass"


class SentinelSetup:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.master_port = free_port()
        self.replica_port = free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    # -- processes ---------------------------------------------------------------------------------

    def _server_args(self, port: int, *extra: str) -> list[str]:
        node_dir = self.dir / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        return [
            DEBIAN_REDIS,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(node_dir),
            "--save", "",
            "--appendonly", "no",
            "--repl-diskless-sync-delay", "0",
            "--daemonize", "no",
            "--logfile", str(node_dir / "server.log"),
            *extra,
        ]  # fmt: skip

    def _spawn(self, port: int, args: list[str]) -> None:
        self.procs[port] = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._wait_ping(port)

    def start(self) -> SentinelSetup:
        shutil.rmtree(self.dir, ignore_errors=True)
        try:
            self._spawn(self.master_port, self._server_args(self.master_port))
            with self.server(self.master_port) as m:
                m.execute_command(
                    "ACL", "SETUSER", "repl", "on", f">{REPL_PASSWORD}", "+psync", "+replconf", "+ping", "+sync"
                )
            self._spawn(
                self.replica_port,
                self._server_args(
                    self.replica_port,
                    "--replicaof", "127.0.0.1", str(self.master_port),
                    "--masteruser", "repl",
                    "--masterauth", REPL_PASSWORD,
                ),
            )  # fmt: skip
            self.wait_replica_in_sync()
            for port in self.sentinel_ports:
                conf = self.dir / f"sentinel-{port}.conf"
                conf.write_text(
                    f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {self.dir}\n"
                    f"logfile {self.dir}/sentinel-{port}.log\n"
                    f"sentinel monitor {SERVICE} 127.0.0.1 {self.master_port} 2\n"
                    f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                    f"sentinel failover-timeout {SERVICE} 10000\n"
                    f"sentinel parallel-syncs {SERVICE} 1\n"
                )
                self._spawn(port, [DEBIAN_SENTINEL, str(conf)])
            self.wait_sentinels_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ping(self, port: int, timeout: float = 30.0) -> None:
        wait_ping(self.procs[port], port, "server on", timeout)

    def server(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, decode_responses=True)

    def wait_replica_in_sync(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while True:
            with self.server(self.replica_port) as r:
                if r.info("replication").get("master_link_status") == "up":
                    return
            if time.monotonic() > end:
                raise RuntimeError("replica never synced")
            time.sleep(0.05)

    def wait_sentinels_ready(self, timeout: float = 60.0) -> None:
        """Until every sentinel knows the replica and the two other sentinels (a failover needs a
        majority of sentinels that know each other)."""
        end = time.monotonic() + timeout
        while True:
            ready = True
            for port in self.sentinel_ports:
                with self.server(port) as s:
                    replicas = s.execute_command("SENTINEL", "REPLICAS", SERVICE)
                    others = s.execute_command("SENTINEL", "SENTINELS", SERVICE)
                ready = ready and len(replicas) == 1 and len(others) == 2
            if ready:
                return
            if time.monotonic() > end:
                raise RuntimeError("sentinels did not discover each other and the replica")
            time.sleep(0.1)

    # -- what tests do -----------------------------------------------------------------------------

    def sentinel(self) -> Sentinel:
        return Sentinel([("127.0.0.1", p) for p in self.sentinel_ports], socket_timeout=2, socket_connect_timeout=2)

    def current_master_port(self) -> int:
        with self.server(self.sentinel_ports[0]) as s:
            _host, port = s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(port)

    def cut_replication(self) -> None:
        with self.server(self.master_port) as m:
            m.execute_command("ACL", "SETUSER", "repl", "off")
            m.execute_command("CLIENT", "KILL", "USER", "repl")
        end = time.monotonic() + 30
        with self.server(self.replica_port) as r:
            while r.info("replication").get("master_link_status") == "up":
                if time.monotonic() > end:
                    raise RuntimeError("replication link stayed up")
                time.sleep(0.02)

    def restore_replication(self) -> None:
        with self.server(self.master_port) as m:
            m.execute_command("ACL", "SETUSER", "repl", "on")
        self.wait_replica_in_sync()

    def kill(self, port: int) -> None:
        proc = self.procs[port]
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)

    def wait_failover(self, timeout: float = 120.0) -> int:
        """Until the sentinels name the former replica as master and it says role:master."""
        end = time.monotonic() + timeout
        while True:
            try:
                if self.current_master_port() == self.replica_port:
                    with self.server(self.replica_port) as r:
                        if r.info("replication").get("role") == "master":
                            return self.replica_port
            except redis.RedisError:
                pass
            if time.monotonic() > end:
                raise RuntimeError("no failover")
            time.sleep(0.1)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(30)
        shutil.rmtree(self.dir, ignore_errors=True)
