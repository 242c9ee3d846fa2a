"""Throwaway servers for a chaos run: a PostgreSQL cluster and a ZooKeeper server.

Each lives in a fresh temporary directory, listens only on a unix socket and/or 127.0.0.1, and is
stopped by its pid (``stop()``, also from ``__exit__``): SIGTERM, then SIGKILL after a bounded wait.
(The lock server is ``fencelock.embedded.EmbeddedRedis``.)
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

__all__ = [
    "PG_ROOT", "ZK_JAR", "Postgres", "ZooKeeper", "free_port", "postgres_bin_dir", "stop_pid", "zookeeper_usable",
]

PG_ROOT = Path("/usr/lib/postgresql")
"""Debian installs each PostgreSQL major version's server binaries in ``PG_ROOT/<major>/bin``."""
ZK_JAR = Path("/usr/share/java/zookeeper.jar")


def postgres_bin_dir(root: Path = PG_ROOT) -> Path:
    """The directory with ``initdb`` and ``postgres`` of the newest PostgreSQL installed: the
    ``FENCELOCK_PG_BIN`` environment variable if set, else the highest ``<root>/<major>/bin``
    (Debian's layout: 15 on Debian 12, newer on 13), else wherever ``initdb`` is on PATH (other
    distributions). The one place the test servers, the fault harness and the benchmarks look."""
    override = os.environ.get("FENCELOCK_PG_BIN")
    if override:
        chosen = Path(override)
        if not (chosen / "initdb").is_file() or not (chosen / "postgres").is_file():
            raise FileNotFoundError(f"FENCELOCK_PG_BIN={override} holds no initdb and postgres binaries")
        return chosen

    def major(entry: Path) -> tuple[int, ...]:
        try:
            return tuple(int(part) for part in entry.name.split("."))  # "9.6" < "10" < "17"
        except ValueError:
            return ()

    candidates = [entry / "bin" for entry in root.iterdir() if major(entry)] if root.is_dir() else []
    for bindir in sorted(candidates, key=lambda b: major(b.parent), reverse=True):
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    on_path = shutil.which("initdb")
    if on_path is not None and (Path(on_path).parent / "postgres").is_file():
        return Path(on_path).parent
    raise FileNotFoundError(
        f"no PostgreSQL server binaries found (looked in {root}/<major>/bin and on PATH): install them "
        "(Debian: apt-get install postgresql), or point FENCELOCK_PG_BIN at the directory with initdb"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_pid(proc: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    """Stop one process we started, by its pid: SIGCONT (it may be stopped), SIGTERM, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGCONT)
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(grace)


def _demote_to(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


_S = TypeVar("_S", bound="_Managed")


class _Managed:
    """A server of ours as a context manager: ``start()`` on entry (and ``stop()`` if that fails or
    is interrupted: nothing half-started is left), ``stop()`` on exit."""

    def start(self: _S) -> _S:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        try:
            return self.start()
        except BaseException:  # interrupted or failed: stop what started, remove the folder
            self.stop()
            raise

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class Postgres(_Managed):
    """A throwaway PostgreSQL cluster (the newest major version installed, see ``postgres_bin_dir``):
    the one launcher for the tests, the benchmarks and the chaos harness.

    Its unix socket lives in its directory; with ``tcp=True`` it also listens on one free port of
    127.0.0.1 (for the chaos proxy). initdb and the server run as the ``postgres`` user when we are
    root (PostgreSQL refuses root), through ``Popen(user=...)``, so the pid we hold is the
    postmaster's own and we stop it by that pid. Trust auth, ``fsync=off``: a test cluster need not
    survive a power cut, and it spares the shared machine's disk (a killed postmaster loses nothing:
    the OS still has its writes).

    ``start()`` = ``initdb()`` + ``launch()``; ``halt()`` stops the server and keeps the data
    (``launch()`` brings it back: a restart); ``stop()`` also removes the directory.
    """

    def __init__(self, *, tcp: bool = True, max_connections: int = 100, start_timeout: float = 60.0) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fl-pg-"))
        self.data = self.dir / "data"
        self.tcp_port = free_port() if tcp else None
        self.max_connections = max_connections
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.bin = postgres_bin_dir()
        self._as: tuple[int, int] | None = _demote_to("postgres") if os.geteuid() == 0 else None
        if self._as is not None:
            os.chown(self.dir, *self._as)

    def _run_as(self) -> dict[str, Any]:
        env = {"PATH": f"{self.bin}:/usr/bin:/bin", "HOME": str(self.dir), "LC_ALL": "C.UTF-8"}
        if self._as is None:
            return {"env": env, "cwd": self.dir}
        uid, gid = self._as
        return {"user": uid, "group": gid, "extra_groups": [], "env": env, "cwd": self.dir}

    @property
    def owner(self) -> tuple[int, int] | None:
        """(uid, gid) the server runs as, when not ours (files it reads must belong to it)."""
        return self._as

    def start(self) -> Postgres:
        self.initdb()
        self.launch()
        return self

    def initdb(self) -> None:
        """A new, empty cluster in the data directory (which must not exist)."""
        subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
             "--no-sync", "-E", "UTF8", "--locale=C"],
            check=True, capture_output=True, timeout=120, **self._run_as(),
        )

    def launch(self) -> None:
        """Start the server on the existing data directory; return once it accepts connections."""
        listen = ["-c", "listen_addresses=127.0.0.1", "-p", str(self.tcp_port)] if self.tcp_port else \
            ["-c", "listen_addresses="]
        log = open(self.dir / "server.log", "ab")
        try:
            self.process = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data), "-k", str(self.dir), *listen,
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", f"max_connections={self.max_connections}", "-c", "shared_buffers=16MB"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **self._run_as(),
            )
        finally:
            log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        import psycopg

        end = time.monotonic() + self.start_timeout
        last: Exception | None = None
        while time.monotonic() < end:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {(self.dir / 'server.log').read_text(errors='replace')[-2000:]}")
            try:
                with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                    return
            except psycopg.Error as err:
                last = err
            time.sleep(0.05)
        self.halt()
        raise RuntimeError(f"postgres not ready after {self.start_timeout} s: {last}")

    def dsn(self, db: str) -> str:
        """A libpq URL of database ``db`` over the unix socket."""
        port = f"&port={self.tcp_port}" if self.tcp_port else ""
        return f"postgresql://postgres@/{db}?host={self.dir}{port}"

    def tcp_dsn(self, db: str, port: int | None = None) -> str:
        """The URL over TCP: this server's port, or ``port`` (a proxy in front of it)."""
        assert self.tcp_port is not None, "started without tcp"
        return f"postgresql://postgres@127.0.0.1:{port or self.tcp_port}/{db}"

    @property
    def socket(self) -> Path:
        return self.dir / f".s.PGSQL.{self.tcp_port or 5432}"

    def create_db(self, db: str) -> str:
        """A new, empty database ``db`` (dropped first if it exists); its URL."""
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{db}"')
        return self.dsn(db)

    def halt(self, *, immediate: bool = False) -> None:
        """Stop the server by its pid and keep its data: a "fast" shutdown (SIGINT: sessions are
        rolled back, a checkpoint is written), or with ``immediate`` an "immediate" one (SIGQUIT:
        every backend is told to quit at once, no checkpoint; the next start recovers from the WAL,
        as after a crash)."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
            os.kill(proc.pid, signal.SIGQUIT if immediate else signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop(self) -> None:
        self.halt()
        shutil.rmtree(self.dir, ignore_errors=True)


def zookeeper_usable() -> str | None:
    """None when a ZooKeeper server and the fencelock ZooKeeper backend are usable, else why not."""
    if not ZK_JAR.exists():
        return f"{ZK_JAR} not found (apt-get install zookeeperd)"
    if shutil.which("java") is None:
        return "java not found"
    try:
        import kazoo  # noqa: F401
    except ImportError:
        return "kazoo is not installed"
    try:
        from fencelock.backends import zookeeper  # noqa: F401
    except ImportError as err:
        return f"fencelock's ZooKeeper backend is not available yet: {err}"
    return None


class ZooKeeper(_Managed):
    """A standalone ZooKeeper (Debian's jar) on 127.0.0.1, data in a temporary directory: the one
    launcher for the tests, the benchmarks and the chaos harness.

    ``kill()`` ends the JVM at once (SIGKILL) and keeps its data, so ``start()`` brings the same
    server back on the same port; ``stop()`` also removes the directory. ``pause()`` returns only
    once every thread of the JVM has stopped: ``kill(SIGSTOP)`` only queues the signal, and a thread
    busy on the other core could still answer a request.
    """

    def __init__(self, *, tick_ms: int = 200, max_session_ms: int = 60_000, start_timeout: float = 30.0) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fl-zk-"))
        self.port = free_port()
        self.tick_ms = tick_ms
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        (self.dir / "data").mkdir()
        (self.dir / "zoo.cfg").write_text(
            f"dataDir={self.dir / 'data'}\nclientPort={self.port}\nclientPortAddress=127.0.0.1\n"
            f"tickTime={tick_ms}\n"
            # the negotiated session timeout must be the one a client asks for (fencelock's lease is
            # capped by it): widen the default window of 2..20 ticks
            f"minSessionTimeout={tick_ms * 2}\nmaxSessionTimeout={max_session_ms}\n"
            "maxClientCnxns=0\n"  # every fencelock.Lock made from a URL has its own session
            "admin.enableServer=false\n4lw.commands.whitelist=ruok\n"
            "forceSync=no\n"  # a throwaway server: speed over durability
        )

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def start(self) -> ZooKeeper:
        log = open(self.dir / "server.log", "ab")
        try:
            self.process = subprocess.Popen(
                ["java", "-Xmx256m", "-XX:+UseSerialGC", "-cp", f"/etc/zookeeper/conf:{ZK_JAR}",
                 f"-Dzookeeper.log.dir={self.dir}",
                 "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(self.dir / "zoo.cfg")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        end = time.monotonic() + self.start_timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"zookeeper exited: {(self.dir / 'server.log').read_text(errors='replace')[-2000:]}")
            if self.ruok():
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"zookeeper did not answer ruok within {self.start_timeout} s; see {self.dir}/server.log")

    def ruok(self, timeout: float = 1.0) -> bool:
        """True when the server answers the ``ruok`` four-letter command with ``imok``."""
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(b"ruok")
            return s.recv(4) == b"imok"
        return False

    def kill(self) -> None:
        """SIGKILL the JVM by its pid and reap it; the data stays (``start()`` brings it back)."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP the JVM; returns once all its threads have stopped (at most 5 s)."""
        os.kill(self.pid, signal.SIGSTOP)
        end = time.monotonic() + 5
        while time.monotonic() < end and not _all_threads_stopped(self.pid):
            time.sleep(0.001)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _all_threads_stopped(pid: int) -> bool:
    try:
        states = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
    except OSError:
        return False
    return all(state in ("T", "t") for state in states)
