#!/usr/bin/env python3
"""Semaphores against the mutex they generalise, same server, same run.

    .venv/bin/python bench/bench_primitives.py                     # embedded valkey-server
    .venv/bin/python bench/bench_primitives.py --lock sqlite:////tmp/b.db --quick
    .venv/bin/python bench/bench_primitives.py --lock postgresql://...  # any lock URL

Measures:
  1. uncontended acquire+release, one name: Lock, Semaphore(limit=1), Semaphore(limit=4) and a
     ReadWriteLock's reader (interleaved rounds, medians; ratios to Lock)
  2. 16 processes, one name, a 1 ms critical section: Lock against Semaphore(limit=4):
     acquisitions/s (the ratio should come close to 4), fairness (min/max acquisitions per worker),
     wait p50/p99, and the most holders ever at once (never above the limit)

Not a test: no thresholds. The machine is shared and noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
import uuid
from typing import Any

from _contention import summarize  # bench/ is the script's own directory

import fencelock
from fencelock.embedded import EmbeddedRedis, find_server_binary

CTX = mp.get_context("spawn")


def make(kind: str, name: str, url: str) -> Any:
    if kind == "lock":
        return fencelock.Lock(name, url, ttl=30, renew=False)
    if kind == "sem1":
        return fencelock.Semaphore(name, url, limit=1, ttl=30, renew=False)
    if kind == "sem4":
        return fencelock.Semaphore(name, url, limit=4, ttl=30, renew=False)
    if kind == "reader":
        return fencelock.ReadWriteLock(name, url, ttl=30, renew=False).read()
    raise ValueError(kind)


def cycles_per_second(lock: Any, seconds: float) -> float:
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        lease = lock.acquire(timeout=5)
        lease.release()
        n += 1
    return n / seconds


def uncontended(url: str, rounds: int, seconds: float) -> dict[str, float]:
    kinds = ["lock", "sem1", "sem4", "reader"]
    locks = {k: make(k, f"bench:{k}:{uuid.uuid4().hex[:8]}", url) for k in kinds}
    for lock in locks.values():
        cycles_per_second(lock, 0.2)  # warm up: connections, scripts, tables
    results: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(rounds):
        for k in kinds:
            results[k].append(cycles_per_second(locks[k], seconds))
    return {k: statistics.median(v) for k, v in results.items()}


def _worker(kind: str, name: str, url: str, seconds: float, start: Any, out: Any) -> None:
    lock = make(kind, name, url)
    start.wait(60)
    end = time.monotonic() + seconds
    events = []
    while time.monotonic() < end:
        asked = time.monotonic()
        lease = lock.acquire(timeout=30)
        got = time.monotonic()
        busy = got + 0.001
        while time.monotonic() < busy:  # a 1 ms critical section that keeps the CPU honest
            pass
        released = time.monotonic()
        lease.release()
        events.append((asked, got, released))
    out.put((os.getpid(), events))


def contended(kind: str, url: str, workers: int, seconds: float) -> dict[str, float]:
    name = f"bench:contended:{kind}:{uuid.uuid4().hex[:8]}"
    start, out = CTX.Event(), CTX.Queue()
    procs = [CTX.Process(target=_worker, args=(kind, name, url, seconds, start, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # let every worker import and connect
    start.set()
    per_worker = {}
    for _ in procs:
        pid, events = out.get(timeout=seconds + 120)
        per_worker[pid] = events
    for p in procs:
        p.join(30)
    stats = summarize(per_worker, list(per_worker), seconds, sum(len(e) for e in per_worker.values()))
    # the most holders at once, from the recorded intervals on the shared monotonic clock
    edges = sorted([(g, 1) for e in per_worker.values() for _, g, _ in e]
                   + [(r, -1) for e in per_worker.values() for _, _, r in e], key=lambda x: (x[0], x[1]))
    now = most = 0
    for _, d in edges:
        now += d
        most = max(most, now)
    stats["most at once"] = most
    return stats


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n**{title}**\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lock", help="a lock URL (default: an embedded valkey-server on a unix socket)")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args(argv)
    rounds, seconds, contended_s = (3, 0.5, 3.0) if args.quick else (5, 1.5, 6.0)
    server: EmbeddedRedis | None = None
    url = args.lock
    if url is None:
        server = EmbeddedRedis(find_server_binary("valkey"))
        server.start()
        url = server.url
    try:
        print(f"lock backend: {url.split('://')[0]}; python {sys.version.split()[0]}; {os.cpu_count()} cores")
        unc = uncontended(url, rounds, seconds)
        base = unc["lock"]
        table(f"uncontended acquire+release, one name (median of {rounds} interleaved rounds)",
              ["primitive", "ops/s", "vs Lock", "cost vs Lock"],
              [[k, f"{v:,.0f}", f"{v / base:.2f}x", f"{base / v:.2f}x"] for k, v in unc.items()])
        rows = []
        results = {}
        for kind in ("lock", "sem4"):
            results[kind] = contended(kind, url, args.workers, contended_s)
        for kind, st in results.items():
            rows.append([kind, f"{st['ops/s']:,.0f}", f"{st['ops/s'] / results['lock']['ops/s']:.2f}x",
                         f"{st['fairness']:.2f}", f"{st['wait p50 ms']:.1f}", f"{st['wait p99 ms']:.1f}",
                         str(int(st["most at once"]))])
        table(f"{args.workers} processes, one name, 1 ms critical section ({contended_s:g} s each)",
              ["primitive", "acquisitions/s", "vs Lock", "fairness", "wait p50 ms", "wait p99 ms", "most at once"],
              rows)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
