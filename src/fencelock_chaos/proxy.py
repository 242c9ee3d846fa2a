"""A small TCP proxy on 127.0.0.1 that can delay, blackhole or cut the traffic it carries.

    with Proxy(("unix", "/tmp/x/redis.sock")) as proxy:    # or ("tcp", "127.0.0.1", 5432)
        url = f"redis://127.0.0.1:{proxy.port}"
        proxy.set_delay(1.5)      # every chunk, both ways, forwarded 1.5 s after it arrived
        proxy.stall(3.0)          # hold everything that arrives in the next 3 s until they are over
        proxy.blackhole()         # bytes are swallowed; connections stay open, nothing answers
        proxy.heal()              # back to forwarding; blackholed connections are reset
        proxy.cut()               # every connection is reset now, new ones are refused at once

It runs an asyncio loop in one daemon thread of the harness; the control methods are thread safe.
Bounded: it stops by itself after ``max_lifetime`` seconds and accepts at most ``max_connections``
connections over its life; every queue is drained or dropped on stop. It listens only on loopback,
and forwards only to the one upstream it was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

__all__ = ["Proxy", "ProxyStats", "Upstream"]

Upstream = tuple[Literal["unix"], str] | tuple[Literal["tcp"], str, int]
Mode = Literal["pass", "blackhole", "cut"]

CHUNK = 65536


@dataclass
class ProxyStats:
    connections: int = 0
    refused: int = 0
    forwarded_bytes: int = 0
    delayed_chunks: int = 0
    dropped_bytes: int = 0
    resets: int = 0


class _Conn:
    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        for w in (self.client, self.upstream):
            if w is not None:
                with contextlib.suppress(Exception):
                    w.transport.abort()
        for t in self.tasks:
            t.cancel()


class Proxy:
    """One listening port on 127.0.0.1, one upstream (a unix socket or a loopback TCP port)."""

    def __init__(self, upstream: Upstream, *, name: str = "proxy", max_lifetime: float = 900.0,
                 max_connections: int = 10_000) -> None:
        if upstream[0] == "tcp" and upstream[1] not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the chaos proxy forwards only to loopback")
        self.upstream = upstream
        self.name = name
        self.max_lifetime = max_lifetime
        self.max_connections = max_connections
        self.port = 0
        self.stats = ProxyStats()
        self._mode: Mode = "pass"
        self._delay = 0.0
        self._stall_until = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[_Conn] = set()
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._error: BaseException | None = None

    # -- control (any thread) ---------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def delay(self) -> float:
        return self._delay

    def start(self) -> Proxy:
        self._thread = threading.Thread(target=self._run, name=f"chaos-{self.name}", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            self.stop()
            raise RuntimeError(f"proxy {self.name} did not start: {self._error}")
        return self

    def set_delay(self, seconds: float) -> None:
        """Forward every chunk (both ways) ``seconds`` after it arrived; 0 for none. Order is kept."""
        if not 0 <= seconds <= 120:
            raise ValueError("delay must be within [0, 120] s")
        self._delay = seconds

    def stall(self, seconds: float) -> None:
        """A latency spike: chunks arriving in the next ``seconds`` are held until it ends, then
        forwarded in order (a request sent now reaches the server ``seconds`` later)."""
        if not 0 <= seconds <= 120:
            raise ValueError("stall must be within [0, 120] s")
        self._stall_until = time.monotonic() + seconds

    def blackhole(self) -> None:
        """Swallow every byte, both ways, on open and new connections; nothing is closed."""
        self._mode = "blackhole"

    def cut(self) -> None:
        """Reset every open connection and refuse new ones until ``heal``."""
        self._mode = "cut"
        self._call(self._abort_all)

    def heal(self) -> None:
        """Forward again. Connections that were blackholed lost bytes, so they are reset."""
        was = self._mode
        self._mode = "pass"
        self._delay = 0.0
        self._stall_until = 0.0
        if was == "blackhole":
            self._call(self._abort_all)

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and not self._stopped.is_set():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._shutdown)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _call(self, fn: object) -> None:
        loop = self._loop
        if loop is not None and not self._stopped.is_set() and callable(fn):
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn)

    # -- the loop thread ----------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as err:  # reported to start() or kept for the post-mortem
            self._error = err
            self._ready.set()
        finally:
            self._stopped.set()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        self._stop_requested = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop_requested.wait(), self.max_lifetime)
        self._server.close()
        self._abort_all()
        await asyncio.sleep(0)

    def _shutdown(self) -> None:
        self._stop_requested.set()

    def _abort_all(self) -> None:
        for conn in list(self._conns):
            self.stats.resets += 1
            conn.abort()
        self._conns.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._mode == "cut" or self.stats.connections >= self.max_connections:
            self.stats.refused += 1
            writer.transport.abort()
            return
        self.stats.connections += 1
        conn = _Conn(writer)
        self._conns.add(conn)
        try:
            if self.upstream[0] == "unix":
                up_r, up_w = await asyncio.wait_for(asyncio.open_unix_connection(self.upstream[1]), 5)
            else:
                up_r, up_w = await asyncio.wait_for(
                    asyncio.open_connection(self.upstream[1], self.upstream[2]), 5)
        except (OSError, asyncio.TimeoutError):
            self._conns.discard(conn)
            writer.transport.abort()
            return
        conn.upstream = up_w
        conn.tasks = [asyncio.ensure_future(self._pump(reader, up_w, conn)),
                      asyncio.ensure_future(self._pump(up_r, writer, conn))]
        await asyncio.gather(*conn.tasks, return_exceptions=True)
        self._conns.discard(conn)
        conn.abort()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, conn: _Conn) -> None:
        """Copy one direction. Chunks queue up with their due time, so a delay keeps their order."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(maxsize=1024)

        async def sender() -> None:
            while True:
                item = await queue.get()
                if item is None:
                    with contextlib.suppress(Exception):
                        dst.write_eof()
                    return
                due, data = item
                wait = due - time.monotonic()
                if wait > 0:
                    self.stats.delayed_chunks += 1
                    await asyncio.sleep(wait)
                if self._mode == "blackhole":
                    self.stats.dropped_bytes += len(data)
                    continue
                self.stats.forwarded_bytes += len(data)  # counted before the peer can see it
                dst.write(data)
                await dst.drain()

        send = asyncio.ensure_future(sender())
        try:
            while True:
                data = await src.read(CHUNK)
                if not data:
                    await queue.put(None)
                    break
                if self._mode == "blackhole":
                    self.stats.dropped_bytes += len(data)
                    continue
                now = time.monotonic()
                due = now + self._delay
                if self._stall_until > now:
                    due = max(due, self._stall_until)
                await queue.put((due, data))
            await send
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            send.cancel()
            conn.abort()
