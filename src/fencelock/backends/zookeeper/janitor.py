"""The janitor: one thread per core that ends leases on the server's side.

ZooKeeper has no expiry for an ephemeral node while its session lives, but a lease must free the
name when it runs out unrenewed (renewal off, renewer stopped, lease dropped). The janitor deletes
the node of a lease whose TTL has passed (measured from a moment no earlier than the holder's own
clock started it, so it always ends after the holder stopped trusting it), and retries deletions
that failed while disconnected (an ``abandon`` or ``release`` that could not reach the server hands
its node over by marking it due now).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from ..._errors import BackendError
from .errors import map_errors

if TYPE_CHECKING:
    from .core import Core, Node

__all__ = ["JANITOR_MAX_SLEEP", "Janitor"]

JANITOR_MAX_SLEEP = 1.0
"""The janitor looks again at least this often (retrying deletions that failed)."""

log = logging.getLogger("fencelock")


class Janitor:
    """Started on the first lease that needs it; stopped with its core."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.cv = threading.Condition()
        self.thread: threading.Thread | None = None
        self.next_wake = 0.0
        self.closed = False

    def wake(self, due: float) -> None:
        """A node becomes due at ``due`` (monotonic): make sure the janitor looks by then."""
        with self.cv:
            if self.closed:
                return
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="fencelock-zk-janitor", daemon=True)
                self.thread.start()
            elif due < self.next_wake:
                # only when it must wake earlier than planned: a notify per acquire would cost a
                # context switch each time, and most leases are released long before their end
                self.cv.notify()

    def poke(self) -> None:
        """Look now (we reconnected: retry what failed while we were away)."""
        with self.cv:
            self.cv.notify()

    def stop(self) -> None:
        with self.cv:
            self.closed = True
            self.cv.notify_all()

    def _loop(self) -> None:
        core = self.core
        while True:
            with self.cv:
                if self.closed:
                    return
                now = time.monotonic()
                dues = [d for n in list(core.nodes.values()) if (d := n.due()) is not None]
                sleep = min([JANITOR_MAX_SLEEP, *(d - now for d in dues)])
                if sleep > 0:
                    self.next_wake = now + sleep
                    self.cv.wait(sleep)
                    continue
                self.next_wake = now
            try:
                self._reap_due()
            except Exception:  # never let the janitor die: leases would stop ending on the server
                log.exception("fencelock zookeeper janitor failed; retrying")
                threading.Event().wait(JANITOR_MAX_SLEEP)  # not time.sleep: see backend.wait

    def _reap_due(self) -> None:
        core = self.core
        now = time.monotonic()
        session = core.session_id()
        due: list[tuple[tuple[str, str], Node]] = []
        with core.mutex:
            for k, node in list(core.nodes.items()):
                when = node.due()
                if when is None or when > now:
                    continue
                if node.name is not None and node.session != session and session != 0:
                    del core.nodes[k]  # its session is gone, and ZooKeeper deleted the node with it
                    continue
                node.reaping = True
                due.append((k, node))
        if due and not core.connected.wait(min(core.timeout, JANITOR_MAX_SLEEP)):
            with core.mutex:
                for _, node in due:
                    node.reaping = False
            return
        for k, node in due:
            try:
                with map_errors("delete an expired lease"):
                    core.delete_node(node)
            except BackendError as err:
                log.warning("could not delete an expired lock node under %s (will retry): %s", node.parent, err)
                with core.mutex:
                    node.reaping = False
                    node.retry_at = time.monotonic() + JANITOR_MAX_SLEEP
                continue
            core.forget(k, node)
