#!/usr/bin/env python3
"""fencelock on PostgreSQL against the lock a user would otherwise write, same server, same run.

    .venv/bin/python bench/bench_postgres.py            # about 2 minutes
    .venv/bin/python bench/bench_postgres.py --quick    # about 1 minute

Starts a throwaway cluster with PostgreSQL's **default durability** (``fsync``, ``synchronous_commit``
and ``full_page_writes`` on: unlike the test clusters) on a unix socket, and measures:

  1. uncontended acquire+release, one name: the floor is ``pg_try_advisory_lock`` +
     ``pg_advisory_unlock`` on one connection (two round trips, no WAL, no fence, no lease: it dies
     with the session); for reference, the least two *writing* round trips cost (two autocommit
     UPDATEs of one row, asynchronous commit: what any lock that records its holder and fence in a
     table pays at minimum); fencelock by default (its writes commit with ``synchronous_commit = off``:
     the clock term of the fence protects against losing them, see the package docstring), and
     with ``durable=on`` (a WAL flush per change) for comparison
  2. 4 and 16 processes contending for one name with a 1 ms critical section that increments a
     counter row non-atomically (read, sleep, write) on another connection (asynchronous commit,
     so that the section is the 1 ms sleep, not a WAL flush): acquisitions/s, wait
     p50/p99, handoff p50/p99, fairness (min/max acquisitions per worker), lost updates

The machine is shared and noisy: rounds of the contenders are interleaved and the median is kept.
Not a test: no thresholds here; the targets (issue 12) are >= 0.7x the floor, fairness >= 0.95.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pwd
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from _contention import summarize  # bench/ is the script's own directory

import fencelock
from fencelock_chaos.servers import postgres_bin_dir

CTX = mp.get_context("spawn")


class DurableCluster:
    """initdb + postgres with the default settings (durability on), unix socket only, as the
    ``postgres`` user when we are root; stopped by its pid."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fl-bench-pg-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.bin = postgres_bin_dir()
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
            self._as = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    @property
    def url(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.dir}"

    def __enter__(self) -> DurableCluster:
        data = self.dir / "data"
        subprocess.run([str(self.bin / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                       check=True, capture_output=True, timeout=120, **self._as)
        log = open(self.dir / "server.log", "wb")
        self.proc = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(data), "-k", str(self.dir), "-c", "listen_addresses=",
             "-c", "max_connections=60"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **self._as,
        )
        log.close()
        end = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return self
            except psycopg.OperationalError:
                if time.monotonic() > end or self.proc.poll() is not None:
                    self.__exit__()
                    raise
                time.sleep(0.05)

    def settings(self) -> str:
        with psycopg.connect(self.url) as conn:
            rows = conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('fsync', 'synchronous_commit', 'full_page_writes', 'server_version', 'wal_sync_method')"
            ).fetchall()
        return ", ".join(f"{k}={v}" for k, v in rows)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def rate(fn: Callable[[], None], seconds: float) -> float:
    n = 0
    start = time.perf_counter()
    end = start + seconds
    while True:
        for _ in range(20):
            fn()
        n += 20
        now = time.perf_counter()
        if now >= end:
            return n / (now - start)


def make_cycle(kind: str, url: str, name: str) -> Callable[[], None]:
    if kind == "advisory lock (floor)":
        conn = psycopg.connect(url, autocommit=True)
        key = abs(hash(name)) % (1 << 62)

        def floor() -> None:
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            assert got is not None and got[0]
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

        return floor
    if kind.startswith("two 1-row UPDATEs"):
        conn = psycopg.connect(url, autocommit=True)
        conn.execute("SET synchronous_commit = off")
        conn.execute("CREATE TABLE IF NOT EXISTS bench_row (id int PRIMARY KEY, v bigint NOT NULL)")
        conn.execute("INSERT INTO bench_row VALUES (1, 0) ON CONFLICT DO NOTHING")

        def writes() -> None:
            conn.execute("UPDATE bench_row SET v = v + 1 WHERE id = %s", (1,))
            conn.execute("UPDATE bench_row SET v = v + 1 WHERE id = %s", (1,))

        return writes
    lock = fencelock.Lock(name, url + ("&durable=on" if "durable" in kind else ""), ttl=30, renew=False)

    def cycle() -> None:
        lease = lock.try_acquire()
        assert lease is not None
        lease.release()

    return cycle


def uncontended(url: str, rounds: int, seconds: float) -> dict[str, float]:
    kinds = ["advisory lock (floor)", "two 1-row UPDATEs, async commit", "fencelock", "fencelock durable=on"]
    cycles = {k: make_cycle(k, url, f"bench:{i}") for i, k in enumerate(kinds)}
    for fn in cycles.values():
        rate(fn, 0.2)  # warm up: connections, the schema, prepared statements
    results: dict[str, list[float]] = {k: [] for k in cycles}
    for _ in range(rounds):
        for k, fn in cycles.items():
            results[k].append(rate(fn, seconds))
    return {k: statistics.median(v) for k, v in results.items()}


def contended_worker(url: str, name: str, seconds: float, ready: Any, start: Any, out: Any) -> None:
    data = psycopg.connect(url, autocommit=True)
    data.execute("SET synchronous_commit = off")  # the section is 1 ms of sleep, not a WAL flush
    lock = fencelock.Lock(name, url, ttl=30, renew=False, timeout=60)
    lock.inspect()  # connect (and create the schema) before the start
    events: list[tuple[float, float, float]] = []
    ready.put(os.getpid())
    start.wait(120)
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at:
        asked = time.monotonic()
        lease = lock.acquire()
        got = time.monotonic()
        row = data.execute("SELECT n FROM bench_counter WHERE name = %s", (name,)).fetchone()
        time.sleep(0.001)  # the critical section (read-modify-write: only safe under the lock)
        data.execute("UPDATE bench_counter SET n = %s WHERE name = %s", ((row[0] if row else 0) + 1, name))
        released = time.monotonic()
        lease.release()
        events.append((asked, got, released))
    out.put((os.getpid(), events))


def contended(url: str, workers: int, seconds: float) -> dict[str, float]:
    name = f"bench:contended:{workers}:{time.monotonic_ns()}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_counter (name text PRIMARY KEY, n bigint NOT NULL)")
        conn.execute("INSERT INTO bench_counter VALUES (%s, 0)", (name,))
    start = CTX.Event()
    ready = CTX.Queue()
    out = CTX.Queue()
    procs = [CTX.Process(target=contended_worker, args=(url, name, seconds, ready, start, out))
             for _ in range(workers)]
    for p in procs:
        p.start()
    for _ in procs:  # every worker imported and connected: they start together
        ready.get(timeout=120)
    start.set()
    per_worker: dict[int, list[tuple[float, float, float]]] = {}
    try:
        for _ in procs:
            pid, events = out.get(timeout=seconds + 120)
            per_worker[pid] = events
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT n FROM bench_counter WHERE name = %s", (name,)).fetchone()
    return summarize(per_worker, [p.pid for p in procs if p.pid is not None], seconds, int(row[0]) if row else 0)


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    lines = [f"\n### {title}\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter rounds")
    args = ap.parse_args()
    rounds, secs, cont_secs = (3, 0.5, 4.0) if args.quick else (5, 1.0, 8.0)
    out: list[str] = []
    with DurableCluster() as pg:
        out.append(f"server: {pg.settings()}; unix socket; python {sys.version.split()[0]}; "
                   f"psycopg {psycopg.__version__}; {os.cpu_count()} cores")
        print(out[-1], flush=True)
        res = uncontended(pg.url, rounds, secs)
        base = res["advisory lock (floor)"]
        rows = [[k, f"{v:,.0f}", f"{v / base:.2f}x"] for k, v in res.items()]
        out.append(table(f"uncontended acquire+release, one name (median of {rounds} interleaved rounds)",
                         ["lock", "ops/s", "vs floor"], rows))
        print(out[-1], flush=True)
        header = ["workers", "ops/s", "wait p50 ms", "wait p99 ms", "handoff p50 ms", "handoff p99 ms",
                  "handoffs %", "fairness", "lost updates"]
        crow = []
        for workers in (4, 16):
            r = contended(pg.url, workers, cont_secs)
            crow.append([str(workers)] + [f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]) for k in r])
            print(workers, r, flush=True)
        out.append(table(f"fencelock, processes contending for one name, 1 ms critical section ({cont_secs:g} s each)",
                         header, crow))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
