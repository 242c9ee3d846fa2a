"""The fault injector: a seeded schedule of process, server and network faults, applied for real.

Only faults the backend's server handle has the capability for are drawn (``tests/servers.py``):
process faults (SIGSTOP/SIGCONT, SIGKILL, SIGTERM, a crowd of waiters killed at once) apply to every
backend; ``restart_empty``, ``restart_snapshot``, ``pause``, ``delete_key``, ``expire_key`` to
those that have them; connection cut / delay / stall to backends with a connection (through the
loopback proxy of ``fencelock_chaos.proxy``). Every fault is recorded as one ``fault`` event with
its window (``t0`` before it began, ``t1`` after it ended), so the checker can excuse what a fault
legitimately causes and nothing else.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .history import Recorder

__all__ = ["KINDS", "Injector", "allowed_kinds"]

# kind -> (weight, capability it needs or None, needs a proxy)
KINDS: dict[str, tuple[float, str | None, bool]] = {
    "sigstop": (3.0, None, False),
    "sigkill": (1.2, None, False),
    "sigterm": (0.8, None, False),
    "crowd": (0.6, None, False),
    "restart_empty": (0.6, "restart_empty", False),
    "restart_snapshot": (0.5, "restart_snapshot", False),
    "pause": (0.8, "pause", False),
    "delete_lock": (1.0, "delete_key", False),
    "expire_lock": (1.0, "expire_key", False),
    "cut": (1.0, None, True),
    "delay": (0.7, None, True),
    "stall": (0.5, None, True),
}


def allowed_kinds(capabilities: frozenset[str], has_proxy: bool) -> list[str]:
    return [
        k for k, (_, cap, proxy) in KINDS.items() if (cap is None or cap in capabilities) and (has_proxy or not proxy)
    ]


@dataclass
class Injector:
    """Applies faults to ``workers()`` (pid -> is a crowd worker), ``server`` and ``proxy``."""

    rng: random.Random
    rec: Recorder
    server: Any
    proxy: Any
    names: list[str]
    kinds: list[str]
    workers: Callable[[], dict[int, bool]]
    respawn: Callable[[], None]
    spawn_crowd: Callable[[], int | None]
    crowd_ready: Callable[[int], bool]
    until: float
    max_sigstop: float = 5.0
    counted: set[str] = field(default_factory=set)
    """Names of counted leases (semaphore, read-write lock): on Redis their holders live in other
    keys than a mutex's, which the test server's delete_lock/expire_lock do not touch."""
    quiet_crowd: bool = False
    quiet: float = 13.0
    counts: dict[str, int] = field(default_factory=dict)
    paused_server: bool = False
    stopped: set[int] = field(default_factory=set)
    calms: list[tuple[float, float]] = field(default_factory=list)
    _server_lock: threading.Lock = field(default_factory=threading.Lock)
    _proxy_lock: threading.Lock = field(default_factory=threading.Lock)
    _mutex: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, t0: float, t1: float | None = None, **fields: Any) -> None:
        with self._mutex:
            self.counts[kind] = self.counts.get(kind, 0) + 1
        self.rec.emit("fault", kind=kind, t0=t0, t1=time.monotonic() if t1 is None else t1, **fields)

    def run(self, mean_gap: float, max_faults: int = 200) -> None:
        """Apply faults until ``until`` (minus a quiet second), ``mean_gap`` s apart on average.

        Each fault runs in a thread of its own, so faults overlap (a holder frozen while the
        server restarts); faults on one server or on the proxy take turns (``_server_lock``,
        ``_proxy_lock``), and one process is never stopped twice at once."""
        weights = [KINDS[k][0] for k in self.kinds]
        threads: list[threading.Thread] = []
        crowds = 0
        # One crowd in every run: the state a FIFO queue must survive, a long queue of dead waiters
        # ahead of live ones. With ``quiet_crowd``, nothing else is injected from the crowd's start
        # until ``quiet`` s later (start ~1 s, queue, kill, dead for 2 s, a TTL, then a TTL more), so
        # the aftermath is judged against the liveness and FIFO promises, which no fault excuses.
        quiet: tuple[float, float] | None = None
        room = self.until - time.monotonic() - (self.quiet if self.quiet_crowd else 10.0)
        if "crowd" in self.kinds and (room > 0 or self.quiet_crowd):
            at = self.rng.uniform(0.0, max(0.0, room))
            crowds += 1
            if self.quiet_crowd:
                start = time.monotonic() + at
                quiet = (start - 0.5, start + self.quiet)
            th = threading.Thread(target=self._later, args=(at, "crowd", random.Random(self.rng.random())),
                                  name="fault-crowd", daemon=True)
            th.start()
            threads.append(th)
        # Storms and calms: faults come in storms of 3-6 s; the calms between (2.5-4.5 s) are where
        # liveness and FIFO are promised, so every run has stretches in which they are checked.
        storm_end = time.monotonic() + self.rng.uniform(3.0, 6.0)
        for _ in range(max_faults):
            at = time.monotonic() + min(4.0, self.rng.expovariate(1.0 / mean_gap))
            if at > storm_end:
                calm = self.rng.uniform(2.5, 4.5)
                at = storm_end + calm
                self.calms.append((storm_end, at))
                storm_end = at + self.rng.uniform(3.0, 6.0)
            if quiet is not None and quiet[0] <= at < quiet[1]:
                at = quiet[1]
                storm_end = max(storm_end, at + self.rng.uniform(3.0, 6.0))
            if at >= self.until - 1.0:
                break
            time.sleep(max(0.0, at - time.monotonic()))
            kind = self.rng.choices(self.kinds, weights)[0]
            if kind == "crowd":
                crowds += 1
                if crowds > 2:
                    kind = "sigstop"
            # draw the fault's own random numbers here, in schedule order (threads would race)
            frng = random.Random(self.rng.random())
            th = threading.Thread(target=self._apply, args=(kind, frng), name=f"fault-{kind}", daemon=True)
            th.start()
            threads.append(th)
        for th in threads:
            th.join(max(0.0, self.until + 15 - time.monotonic()))

    def _later(self, delay: float, kind: str, rng: random.Random) -> None:
        time.sleep(delay)
        self._apply(kind, rng)

    def _apply(self, kind: str, rng: random.Random) -> None:
        lock = self._server_lock if KINDS[kind][1] is not None else self._proxy_lock if KINDS[kind][2] else None
        try:
            if lock is None:
                getattr(self, f"do_{kind}")(rng)
            else:
                with lock:
                    getattr(self, f"do_{kind}")(rng)
        except Exception as err:  # a fault that could not be applied is recorded, not fatal
            self.rec.emit("fault_error", kind=kind, error=f"{type(err).__name__}: {err}")

    # -- process faults -------------------------------------------------------------------------

    def _target(self, rng: random.Random, stop: bool = False) -> int | None:
        with self._mutex:
            pids = sorted(pid for pid, is_crowd in self.workers().items() if not is_crowd and pid not in self.stopped)
            pid = rng.choice(pids) if pids else None
            if stop and pid is not None:
                self.stopped.add(pid)
            return pid

    def do_sigstop(self, rng: random.Random) -> None:
        pid = self._target(rng, stop=True)
        if pid is None:
            return
        r = rng.random()
        length = (
            rng.uniform(0.05, 0.5) if r < 0.5 else rng.uniform(0.5, 2.0) if r < 0.85
            else rng.uniform(2.0, self.max_sigstop)
        )
        t0 = time.monotonic()
        try:
            os.kill(pid, signal.SIGSTOP)
            time.sleep(length)
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            with self._mutex:
                self.stopped.discard(pid)
        self.record("sigstop", t0, target=pid, detail=round(length, 3))

    def _kill(self, rng: random.Random, sig: signal.Signals, kind: str) -> None:
        pid = self._target(rng)
        if pid is None:
            return
        t0 = time.monotonic()
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        self.record(kind, t0, target=pid)
        if self.until - time.monotonic() > 4.0:
            self.respawn()

    def do_sigkill(self, rng: random.Random) -> None:
        self._kill(rng, signal.SIGKILL, "sigkill")

    def do_sigterm(self, rng: random.Random) -> None:
        # Python's default SIGTERM disposition ends the process at once: no finally, no atexit
        self._kill(rng, signal.SIGTERM, "sigterm")

    def do_crowd(self, rng: random.Random) -> None:
        """A worker holds a lock with many waiters queued behind it; SIGKILL it, leaving them dead.
        Many: more than a queue's clean-up may skip in one step (the Redis scripts skip at most 32
        dead waiters per call), twice over."""
        t0 = time.monotonic()
        pid = self.spawn_crowd()
        if pid is None:
            return
        # kill it once its holder holds and its waiters have queued (its own history says so), a
        # little later still; bounded, so a crowd that never got the lock is killed anyway
        for _ in range(100):
            if self.crowd_ready(pid) or time.monotonic() > t0 + 8.0:
                break
            time.sleep(0.1)
        time.sleep(rng.uniform(0.2, 1.0))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.record("crowd", t0, target=pid)

    # -- server faults --------------------------------------------------------------------------

    def do_restart_empty(self, rng: random.Random) -> None:
        t0 = time.monotonic()
        self.server.restart_empty()
        self.record("restart_empty", t0)

    def do_restart_snapshot(self, rng: random.Random) -> None:
        t0 = time.monotonic()
        self.server.snapshot()
        self.record("snapshot", t0)
        time.sleep(rng.uniform(0.5, 2.0))
        t1 = time.monotonic()
        self.server.restart_from_snapshot()
        self.record("restart_snapshot", t1)

    def do_pause(self, rng: random.Random) -> None:
        length = rng.uniform(0.2, 2.5)
        t0 = time.monotonic()
        self.paused_server = True
        try:
            self.server.pause()
            time.sleep(length)
        finally:
            self.server.resume()
            self.paused_server = False
        self.record("pause", t0, detail=round(length, 3))

    def _named(self, rng: random.Random, kind: str, fn: Callable[[str], None]) -> None:
        name = rng.choice(self.names)
        t0 = time.monotonic()
        try:
            fn(name)
        except (AssertionError, IndexError, LookupError):
            return  # nobody held it: nothing happened, nothing to record
        except Exception as err:
            if "NoNode" in type(err).__name__:
                return
            raise
        self.record(kind, t0, name=name)

    def do_delete_lock(self, rng: random.Random) -> None:
        self._named(rng, "delete_lock", lambda name: self._counted_redis(name, False) or self.server.delete_lock(name))

    def do_expire_lock(self, rng: random.Random) -> None:
        self._named(rng, "expire_lock", lambda name: self._counted_redis(name, True) or self.server.expire_lock(name))

    def _counted_redis(self, name: str, expire: bool) -> bool:
        """A counted name on Redis: drop (or expire in 1 ms) its permits, holders and leases keys, so
        that the server forgets every holder of the name (what delete_lock does to a mutex's key).
        False when ``name`` is not such a name (the server's own delete_lock/expire_lock apply)."""
        if name not in self.counted or getattr(self.server, "kind", None) != "redis":
            return False
        from fencelock.backends.redis.keys import RedisKeys

        k = RedisKeys("fencelock:", name)
        keys = [k.permits, k.holders, k.leases]
        if expire:
            assert sum(bool(self.server.admin.pexpire(key, 1)) for key in keys) >= 1
        else:
            assert self.server.admin.delete(*keys) >= 1
        return True

    # -- network faults (through the proxy) -------------------------------------------------------

    def do_cut(self, rng: random.Random) -> None:
        length = rng.uniform(0.2, 2.0)
        t0 = time.monotonic()
        try:
            self.proxy.cut()
            time.sleep(length)
        finally:
            self.proxy.heal()
        self.record("cut", t0, detail=round(length, 3))

    def do_delay(self, rng: random.Random) -> None:
        delay, length = rng.uniform(0.02, 0.4), rng.uniform(1.0, 3.0)
        t0 = time.monotonic()
        try:
            self.proxy.set_delay(delay)
            time.sleep(length)
        finally:
            self.proxy.set_delay(0.0)
        # chunks queued during the window still arrive late: the window ends one delay later
        self.record("delay", t0, time.monotonic() + delay, detail=round(delay, 3))

    def do_stall(self, rng: random.Random) -> None:
        length = rng.uniform(0.5, 2.0)
        t0 = time.monotonic()
        self.proxy.stall(length)
        time.sleep(length)
        self.record("stall", t0, detail=round(length, 3))

    def heal_all(self) -> None:
        """Leave nothing frozen or cut (called in ``finally``)."""
        for pid in list(self.stopped):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        if self.paused_server:
            self.server.resume()
        if self.proxy is not None:
            self.proxy.heal()
