"""The chaos proxy really forwards, delays, blackholes and cuts (against a local echo server)."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from fencelock_chaos.proxy import Proxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def proxy(echo: int) -> Iterator[Proxy]:
    with Proxy(("tcp", "127.0.0.1", echo), max_lifetime=120) as p:
        yield p


def _connect(p: Proxy, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", p.port), timeout=timeout)
    return s


def _roundtrip(s: socket.socket, data: bytes) -> tuple[bytes, float]:
    start = time.monotonic()
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return got, time.monotonic() - start


def test_forwards_both_ways(proxy: Proxy) -> None:
    with _connect(proxy) as s:
        got, _ = _roundtrip(s, b"hello")
    assert got == b"hello"
    assert proxy.stats.forwarded_bytes >= 10


def test_delay_holds_each_chunk_back_at_least_the_delay(proxy: Proxy) -> None:
    proxy.set_delay(0.4)
    with _connect(proxy) as s:
        got, took = _roundtrip(s, b"ping")
    assert got == b"ping"
    # a lower bound only: the delay is applied on the way there and on the way back
    assert took >= 0.8
    assert proxy.stats.delayed_chunks >= 2


def test_blackhole_swallows_bytes_and_heal_resets_the_connection(proxy: Proxy) -> None:
    with _connect(proxy, timeout=0.5) as s:
        assert _roundtrip(s, b"before")[0] == b"before"
        proxy.blackhole()
        s.sendall(b"lost")
        with pytest.raises(TimeoutError):
            s.recv(10)
        assert proxy.stats.dropped_bytes >= 4
        proxy.heal()
        s.settimeout(5)
        with pytest.raises((ConnectionError, OSError)) as info:
            data = s.recv(10)
            if data == b"":
                raise ConnectionResetError("closed")
        assert info.value is not None
    with _connect(proxy) as s2:
        assert _roundtrip(s2, b"after")[0] == b"after"


def test_cut_resets_open_connections_and_refuses_new_ones(proxy: Proxy) -> None:
    s = _connect(proxy)
    try:
        assert _roundtrip(s, b"x")[0] == b"x"
        proxy.cut()
        with pytest.raises((ConnectionError, OSError)):
            for _ in range(50):  # bounded: the reset arrives within a few tries
                s.sendall(b"y")
                if s.recv(10) == b"":
                    raise ConnectionResetError("closed")
                time.sleep(0.05)
    finally:
        s.close()
    s3 = _connect(proxy)
    try:
        with pytest.raises((ConnectionError, OSError)):
            s3.sendall(b"z")
            if s3.recv(10) == b"":
                raise ConnectionResetError("refused")
    finally:
        s3.close()
    assert proxy.stats.refused >= 1
    proxy.heal()
    with _connect(proxy) as s4:
        assert _roundtrip(s4, b"back")[0] == b"back"


def test_stops_by_itself_after_its_lifetime(echo: int) -> None:
    p = Proxy(("tcp", "127.0.0.1", echo), max_lifetime=0.3).start()
    try:
        assert p._thread is not None
        p._thread.join(10)
        assert not p._thread.is_alive()
    finally:
        p.stop()


def test_refuses_an_upstream_off_loopback() -> None:
    with pytest.raises(ValueError):
        Proxy(("tcp", "192.0.2.1", 80))


def test_stall_holds_requests_until_it_ends_then_forwards_in_order(proxy: Proxy) -> None:
    with _connect(proxy) as s:
        proxy.stall(0.6)
        got, took = _roundtrip(s, b"first")
        assert got == b"first"
        assert took >= 0.6  # held at least until the stall ended (a lower bound, never flaky)
        got2, _ = _roundtrip(s, b"second")
    assert got2 == b"second"
