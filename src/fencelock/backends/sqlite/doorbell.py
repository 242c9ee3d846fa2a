"""Wake-ups between the processes of one host, best effort: a hint that shortens a waiter's sleep,
never something correctness depends on."""

from __future__ import annotations

import math
import os
import select
import socket
import sys
import threading
import time

__all__ = ["Doorbells", "drain"]


class Doorbells:
    """Wake-ups between the processes of one host, best effort (see "Waiting" above).

    A waiter listens on the abstract unix datagram socket ``\\0fencelock-wake-<token>`` while it
    waits; ``ring(token)`` sends it one byte. Abstract names need no file and disappear when their
    socket is closed or the process dies. Anyone on the host could ring: a spurious ring only costs
    one refused attempt.
    """

    enabled = sys.platform.startswith("linux")

    def __init__(self) -> None:
        self._listening: dict[str, socket.socket] = {}
        self._mutex = threading.Lock()
        self._sender: tuple[int, socket.socket] | None = None

    @staticmethod
    def address(token: str) -> str:
        return "\0fencelock-wake-" + token

    def listen(self, token: str) -> socket.socket | None:
        """The socket ``token`` waits on (bound on first use); None where doorbells cannot work."""
        sock = self._listening.get(token)
        if sock is not None or not self.enabled:
            return sock
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(self.address(token))
            sock.setblocking(False)
        except OSError:
            return None  # e.g. a sandbox without unix sockets: polling only
        with self._mutex:
            self._listening[token] = sock
        return sock

    def hang_up(self, token: str) -> None:
        """Stop listening for ``token`` (its acquire ended: granted or given up)."""
        if token in self._listening:
            with self._mutex:
                sock = self._listening.pop(token, None)
            if sock is not None:
                sock.close()

    def wait(self, token: str, seconds: float) -> bool:
        """Sleep up to ``seconds``, less if ``token``'s bell rings; True if it rang."""
        sock = self.listen(token)
        if sock is None:
            time.sleep(seconds)
            return False
        poller = select.poll()  # not select.select: it fails on descriptors above 1023
        poller.register(sock, select.POLLIN)
        if poller.poll(math.ceil(max(0.0, seconds) * 1000)):
            drain(sock)
            return True
        return False

    def ring(self, token: str) -> None:
        """Wake ``token``'s waiter if it listens; silently nothing otherwise."""
        if not self.enabled:
            return
        pid = os.getpid()
        try:
            if self._sender is None or self._sender[0] != pid:
                sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sender.setblocking(False)
                self._sender = (pid, sender)
            self._sender[1].sendto(b"!", self.address(token))
        except OSError:
            pass  # nobody listening (ECONNREFUSED), buffer full (already rung): the waiter polls anyway

    def close(self) -> None:
        with self._mutex:
            socks, self._listening = list(self._listening.values()), {}
        if self._sender is not None and self._sender[0] == os.getpid():
            socks.append(self._sender[1])
        self._sender = None
        for sock in socks:
            sock.close()


def drain(sock: socket.socket) -> None:
    """Read every ring that queued up, so the next wait sleeps until a new one."""
    for _ in range(64):
        try:
            sock.recv(16)
        except OSError:  # BlockingIOError: empty
            return
