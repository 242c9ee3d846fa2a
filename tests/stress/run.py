"""One stress run against one backend: workers, faults, history, verdict.

Two scenarios, by seed: odd seeds inject every fault the backend allows, in storms with calms
between; even seeds start with a crowd of waiters that is killed, then inject nothing else for 13 s,
so that what a queue of dead waiters does to the live ones is judged by liveness and FIFO, which no
fault excuses.

    result = run_stress("redis-debian", server, Settings(seed=7, duration=12), directory)
    result.violations      # [] when every property held
    result.summary()       # what ran: operations, faults per kind, leases, writes

Everything is bounded: workers stop by themselves at ``until`` and are SIGKILLed by pid
``grace`` s later; the injector stops a second before ``until``; in ``finally`` every worker is
killed by pid, the proxy stopped, and the server resumed (and restarted if it does not answer), so
the session's server stays usable for the other tests.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sqlite3
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fencelock import fencing
from fencelock_chaos.proxy import Proxy

from . import workload
from .checker import Bounds, Violation, build, check
from .faults import Injector, allowed_kinds
from .history import Recorder, load_dir

__all__ = ["BOUNDS", "RunResult", "Settings", "bounds_for", "run_stress"]

BOUNDS: dict[str, Bounds] = {
    # redis-py socket timeout fencelock sets (5 s); a dead waiter stays "alive" for its 2 s
    # registration window and may be handed the lock in it (then holds it for its TTL)
    "redis": Bounds(request=5.0, dead_hold=2.0 + 1.0, settle=2.0),
    # kazoo request timeout (3 s); a dead contender's node lives until its session (4 s) expires
    "zookeeper": Bounds(request=3.0, dead_hold=4.0 + 1.0, settle=5.0),
    # SQLite busy timeout (5 s); no registration: a dead waiter's row is skipped once it is stale
    "sqlite": Bounds(request=5.0, dead_hold=2.0, settle=2.0),
    # request_timeout (2 s) plus the watchdog's tick; a dead waiter counts as alive for REGISTRATION_MS (2 s)
    # after its last poll and may be handed the lock in it (then holds it for its TTL)
    "postgres": Bounds(request=2.1, dead_hold=2.0 + 1.0, settle=3.0),
}


def bounds_for(kind: str, capabilities: frozenset[str]) -> Bounds:
    b = BOUNDS.get(kind, Bounds())
    if "fifo" not in capabilities:
        from dataclasses import replace

        b = replace(b, fifo=False)
    return b


@dataclass
class Settings:
    seed: int
    duration: float = 10.0
    workers: int = 3
    threads: int = 3
    tasks: int = 4
    names: int = 3
    crowd: int = 72
    mean_fault_gap: float = 0.6
    faults: bool = True
    grace: float = 25.0
    spawn_fail_share: float = 0.34
    prim_threads: int = 2
    """Threads per worker on the coordination primitives (Semaphore, ReadWriteLock, Election)."""
    prim_tasks: int = 3
    """asyncio tasks per worker on them (``fencelock.aio``)."""


@dataclass
class RunResult:
    backend: str
    seed: int
    directory: Path
    violations: list[Violation]
    events: int
    faults: Counter[str] = field(default_factory=Counter)
    ops: Counter[str] = field(default_factory=Counter)
    leases: int = 0
    stalled: float = 0.0
    """Seconds the whole host stalled (no heartbeat, no event; see checker.HOST_STALL)."""
    prims: Counter[str] = field(default_factory=Counter)
    """Leases per primitive (lock, sem, read, write, elect)."""
    calls: Counter[str] = field(default_factory=Counter)
    """fencelock calls per primitive."""
    writes: Counter[str] = field(default_factory=Counter)
    max_overrun: float = 0.0
    overrun: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        rules = Counter(v.rule for v in self.violations)
        return (
            f"{self.backend} seed {self.seed}: {self.wall:.1f} s, {self.events} events, "
            f"ops {dict(sorted(self.ops.items()))}, leases {self.leases} {dict(sorted(self.prims.items()))}, "
            f"writes {dict(self.writes)}, "
            f"faults {dict(sorted(self.faults.items()))}, host stalled {self.stalled} s, "
            f"longest past timeout {self.overrun}, "
            f"violations {dict(sorted(rules.items())) or 0}"
        )


def _init_fence_db(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        fencing.create_table(conn)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS writes (seq INTEGER PRIMARY KEY AUTOINCREMENT, resource TEXT, "
            "fence INTEGER, token TEXT, pid INTEGER, t REAL)"
        )
    finally:
        conn.close()


def _db_writes(path: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(path, timeout=30)
    try:
        rows = conn.execute("SELECT seq, resource, fence, token, pid, t FROM writes ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [
        {"t": r[5], "ev": "dbwrite", "pid": r[4], "seq": r[0], "resource": r[1], "fence": r[2], "token": r[3]}
        for r in rows
    ]


def _stop_process(proc: multiprocessing.process.BaseProcess, timeout: float) -> None:
    """Wait for a worker, then SIGCONT + SIGKILL it by its pid, and reap it."""
    pid = proc.pid
    proc.join(max(0.0, timeout))
    if proc.is_alive() and pid is not None:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
        proc.join(10)


def run_stress(backend: str, server: Any, settings: Settings, directory: Path) -> RunResult:
    started = time.monotonic()
    directory.mkdir(parents=True, exist_ok=True)
    hist = directory / "history"
    hist.mkdir(exist_ok=True)
    fence_db = directory / "fences.db"
    _init_fence_db(fence_db)
    run_id = uuid.uuid4().hex[:6]
    names = [f"stress:{settings.seed}:{run_id}:n{i}" for i in range(settings.names)]
    # the coordination primitives: one name each, the semaphore's limit (2-4) one per run
    prims = {
        "sem": f"stress:{settings.seed}:{run_id}:sem",
        "rw": f"stress:{settings.seed}:{run_id}:rw",
        "elect": f"stress:{settings.seed}:{run_id}:elect",
        "limit": random.Random(f"{settings.seed}:limit").randint(2, 4),
    }
    capabilities = frozenset(getattr(server, "capabilities", frozenset()))
    kind = getattr(server, "kind", backend)
    bounds = bounds_for(kind, capabilities)
    rec = Recorder(hist / "injector.jsonl")
    ctx = multiprocessing.get_context("spawn")
    procs: dict[int, tuple[multiprocessing.process.BaseProcess, bool]] = {}
    proxy: Proxy | None = None
    injector: Injector | None = None
    until = time.monotonic() + 2.0 + settings.duration  # 2 s for the workers to start
    io_url = server.url if kind == "redis" else None
    counter = iter(range(1_000_000))
    result = RunResult(backend, settings.seed, directory, [], 0)

    upstream = getattr(server, "upstream", None)
    if upstream is not None:
        proxy = Proxy(upstream, name=f"stress-{backend}", max_lifetime=settings.duration + settings.grace + 120).start()
    proxy_url = server.url_through(proxy.port) if proxy is not None else None

    spawn_lock = threading.Lock()
    history_of: dict[int, Path] = {}

    def spawn(crowd: bool = False) -> int | None:
        with spawn_lock:
            return _spawn(crowd)

    def _spawn(crowd: bool) -> int | None:
        index = next(counter)
        if time.monotonic() > until - 2.0:
            return None
        wrng = random.Random(f"{settings.seed}:spawn:{index}")
        inject = ["spawn_fail"] if (not crowd and wrng.random() < settings.spawn_fail_share) else []
        cfg = {
            "seed": settings.seed,
            "worker": index,
            "history": str(hist / f"w{index}.jsonl"),
            "stderr": str(directory / f"w{index}.stderr"),
            "url": server.url,
            "proxy_url": proxy_url,
            "fence_db": str(fence_db),
            "names": names,
            "until": until,
            "threads": settings.threads,
            "tasks": settings.tasks,
            "inject": inject,
            "io_redis_url": io_url,
            "prims": prims if "counted" in capabilities else None,
            "prim_threads": settings.prim_threads,
            "prim_tasks": settings.prim_tasks,
            "crowd": settings.crowd if crowd else 0,
            "crowd_name": names[0],
        }
        proc = ctx.Process(target=workload.main, args=(cfg,), name=f"stress-w{index}", daemon=False)
        proc.start()
        assert proc.pid is not None
        procs[proc.pid] = (proc, crowd)
        history_of[proc.pid] = Path(cfg["history"])
        return proc.pid

    def respawn() -> None:
        spawn()

    def crowd_ready(pid: int) -> bool:
        """The crowd worker holds its lock and all its waiters have called acquire."""
        path = history_of.get(pid)
        if path is None or not path.exists():
            return False
        text = path.read_text(errors="replace")
        return text.count('"op":"acquire"') >= settings.crowd + 1 and '"out":"ok"' in text

    def live_workers() -> dict[int, bool]:
        with spawn_lock:
            return {pid: crowd for pid, (p, crowd) in procs.items() if p.is_alive()}

    beating = threading.Event()

    def heartbeat() -> None:
        """A tick every 0.1 s: the checker tells a stall of the whole host (no tick, no event from
        anyone) from a process that was slow on its own."""
        while not beating.wait(0.1):
            rec.emit("tick")

    beat = threading.Thread(target=heartbeat, name="stress-heartbeat", daemon=True)
    beat.start()
    try:
        for _ in range(settings.workers):
            spawn()
        if settings.faults:
            injector = Injector(
                rng=random.Random(f"{settings.seed}:faults"),
                rec=rec,
                server=server,
                proxy=proxy,
                names=names + ([prims["sem"], prims["rw"], prims["elect"]] if "counted" in capabilities else []),
                counted={prims["sem"], prims["rw"]},
                kinds=allowed_kinds(capabilities, proxy is not None),
                workers=live_workers,
                respawn=respawn,
                spawn_crowd=lambda: spawn(crowd=True),
                crowd_ready=crowd_ready,
                # even seeds: a crowd, then nothing else for a while (liveness after dead waiters);
                # odd seeds: storms of every fault with calms between
                quiet_crowd=settings.seed % 2 == 0,
                until=until,
            )
            time.sleep(1.5)
            injector.run(settings.mean_fault_gap)
        for _ in range(int(settings.duration * 10) + 100):
            if time.monotonic() >= until or not live_workers():
                break
            time.sleep(0.1)
    finally:
        if injector is not None:
            injector.heal_all()
            result.faults.update(injector.counts)
        end = until + settings.grace
        for proc, _ in list(procs.values()):
            _stop_process(proc, end - time.monotonic())
        beating.set()
        beat.join(2)
        if proxy is not None:
            proxy.stop()
        rec.close()
        _restore(server, result)
    events = load_dir(hist) + _db_writes(fence_db)
    result.events = len(events)
    result.violations = check(events, bounds)
    model = build(events)
    result.ops.update(c.op for c in model.calls.values())
    result.leases = len(model.leases)
    result.stalled = round(sum(b - a for a, b in model.stalls), 3)
    result.prims.update(x.prim for x in model.leases.values())
    result.calls.update(c.prim for c in model.calls.values())
    result.writes.update(w.get("res", "?") for w in model.writes)
    for c in model.calls.values():
        # how far past its own timeout a call returned (frozen time excluded): what rule e bounds
        if c.t1 is None or c.op == "with_exit":
            continue
        proc = model.procs.get(c.pid)
        took = c.t1 - c.t0 - (proc.frozen_in(c.t0, c.t1) if proc else 0.0)
        over = took - (c.timeout or 0.0 if c.op in ("acquire", "with") else 0.0)
        key = c.op
        result.max_overrun = max(result.max_overrun, over)
        result.overrun[key] = round(max(result.overrun.get(key, 0.0), over), 3)
    result.wall = time.monotonic() - started
    return result


def _restore(server: Any, result: RunResult) -> None:
    """Leave the server running and answering: the other tests share it."""
    if "pause" in getattr(server, "capabilities", ()):
        try:
            server.resume()
        except Exception as err:
            result.notes.append(f"resume failed: {err}")
    ping = getattr(server, "ping", None)
    if ping is not None and not ping():
        result.notes.append("server did not answer after the run: restarted empty")
        server.restart_empty()
