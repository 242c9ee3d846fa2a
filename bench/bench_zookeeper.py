"""Benchmark: fencelock's ZooKeeper backend beside kazoo's own ``Lock`` recipe, same server, same run.

Starts a private ZooKeeper (Debian's jar, exactly as the test suite does: tests/srv_zookeeper.py),
then measures

- uncontended acquire + release per second, one client, ours vs kazoo's ``Lock`` (alternating
  rounds, best round each; the ratio kazoo/ours is printed: the target is <= 1.2);
- contended: N processes, one lock, a 1 ms critical section: acquisitions per second, the wait
  for the lock (p50 / p99) and fairness (fewest / most acquisitions of one worker); alternating
  rounds too, the round with the most acquisitions of each is shown;
- the backend's primitives, one client, no contention: ``try_acquire`` + ``release`` per second
  for a mutex, a semaphore's permit and a read-write lock's reader and writer (counted leases
  take the same two round trips as the mutex).

Prints markdown tables. Runtime about 55 s with the defaults (bounded: < 80 s). Not a test.

    .venv/bin/python bench/bench_zookeeper.py [--seconds 3] [--workers 4] [--work-ms 1]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the test suite's server starter

CTX = mp.get_context("spawn")


def _rate(fn: Callable[[], None], seconds: float) -> float:
    """Calls of ``fn`` per second over ``seconds`` (after a short warm-up)."""
    for _ in range(20):
        fn()
    n = 0
    start = time.perf_counter()
    end = start + seconds
    while True:
        for _ in range(10):
            fn()
        n += 10
        now = time.perf_counter()
        if now >= end:
            return n / (now - start)


def uncontended(hosts: str, seconds: float, rounds: int) -> dict[str, float]:
    import asyncio

    from kazoo.client import KazooClient

    import fencelock
    from fencelock import aio

    url = f"zk://{hosts}/"
    ours = fencelock.Lock("bench:uncontended:ours", url, ttl=10)
    client = KazooClient(hosts=hosts)
    client.start(timeout=15)
    theirs = client.Lock("/bench/uncontended/kazoo", "bench")

    def ours_once() -> None:
        ours.acquire(timeout=10).release()

    def theirs_once() -> None:
        theirs.acquire(timeout=10)
        theirs.release()

    best = {"fencelock": 0.0, "kazoo Lock": 0.0}
    for _ in range(rounds):  # alternate, so both see the same machine load
        best["kazoo Lock"] = max(best["kazoo Lock"], _rate(theirs_once, seconds))
        best["fencelock"] = max(best["fencelock"], _rate(ours_once, seconds))

    async def async_rate() -> float:
        lock = aio.Lock("bench:uncontended:async", url, ttl=10)
        for _ in range(20):
            await (await lock.acquire(timeout=10)).release()
        n = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            await (await lock.acquire(timeout=10)).release()
            n += 1
        rate = n / (time.perf_counter() - start)
        await lock.aclose()
        return rate

    best["fencelock (asyncio)"] = asyncio.run(async_rate())
    ours.close()
    client.stop()
    client.close()
    return best


def primitives(hosts: str, seconds: float, rounds: int) -> dict[str, float]:
    """try_acquire + release per second at the backend level, per kind of lease (alternating
    rounds, best round each)."""
    from fencelock._core.params import new_token
    from fencelock.backends.base import RW_LIMIT
    from fencelock.backends.zookeeper import ZooKeeperBackend

    backend = ZooKeeperBackend.from_url(f"zk://{hosts}/")
    kinds = {
        "mutex (limit 1)": (1, 1),
        "semaphore permit (limit 5)": (5, 1),
        "read-write lock, reader": (RW_LIMIT, 1),
        "read-write lock, writer": (RW_LIMIT, RW_LIMIT),
    }
    rates = dict.fromkeys(kinds, 0.0)
    try:
        for _ in range(rounds):
            for kind, (limit, weight) in kinds.items():
                name = f"bench:primitives:{limit}:{weight}"

                def once(name: str = name, limit: int = limit, weight: int = weight) -> None:
                    token = new_token()
                    if limit == 1:  # the mutex call, as the lock handle makes it
                        attempt = backend.try_acquire(name, token, 10_000, "bench", False)
                    else:
                        attempt = backend.try_acquire(name, token, 10_000, "bench", False, limit, weight)
                    assert attempt.fence is not None
                    backend.release(name, token)

                rates[kind] = max(rates[kind], _rate(once, seconds / 2))
    finally:
        backend.close()
    return rates


def _worker(kind: str, hosts: str, ready: Any, go: Any, seconds: float, work: float, out: Any) -> None:
    import logging

    logging.getLogger("kazoo").setLevel(logging.ERROR)
    waits: list[float] = []
    if kind == "fencelock":
        import fencelock

        lock = fencelock.Lock("bench:contended", f"zk://{hosts}/", ttl=10)
        lock.inspect()  # connect before the start

        def once() -> None:
            lease = lock.acquire(timeout=30)
            waits.append(time.perf_counter() - t0)
            time.sleep(work)
            lease.release()
    else:
        from kazoo.client import KazooClient

        client = KazooClient(hosts=hosts)
        client.start(timeout=15)
        klock = client.Lock("/bench/contended/kazoo", str(os.getpid()))

        def once() -> None:
            klock.acquire(timeout=30)
            waits.append(time.perf_counter() - t0)
            time.sleep(work)
            klock.release()

    ready.put(os.getpid())
    go.wait(60)  # all workers start together
    end = time.perf_counter() + seconds
    for _ in range(1_000_000):  # bounded; ends at `end`
        t0 = time.perf_counter()
        if t0 >= end:
            break
        once()
    out.put(waits)


def contended(kind: str, hosts: str, workers: int, seconds: float, work: float) -> dict[str, float]:
    ready, go, out = CTX.Queue(), CTX.Event(), CTX.Queue()
    procs = [CTX.Process(target=_worker, args=(kind, hosts, ready, go, seconds, work, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=60)
        go.set()
        per_worker = [out.get(timeout=seconds + 60) for _ in procs]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)
    counts = [len(w) for w in per_worker]
    waits = sorted(x for w in per_worker for x in w)
    q = statistics.quantiles(waits, n=100) if len(waits) > 1 else [waits[0]] * 99
    return {
        "ops": sum(counts) / seconds,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        "fairness": min(counts) / max(counts) if max(counts) else 0.0,
        "min": min(counts),
        "max": max(counts),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each measurement (default 3)")
    parser.add_argument("--rounds", type=int, default=2, help="uncontended rounds per library (default 2)")
    parser.add_argument("--workers", type=int, default=4, help="contending processes (default 4)")
    parser.add_argument("--work-ms", type=float, default=1.0, help="critical section in ms (default 1)")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 10 or not 1 <= args.rounds <= 3 or not 1 <= args.workers <= 8:
        parser.error("keep the run bounded: --seconds in (0, 10], --rounds 1..3, --workers 1..8")

    import logging

    from fencelock_chaos.servers import ZooKeeper

    logging.getLogger("kazoo").setLevel(logging.ERROR)  # its reconnect chatter at shutdown

    began = time.monotonic()
    server = ZooKeeper().start()
    try:
        hosts = f"127.0.0.1:{server.port}"
        solo = uncontended(hosts, args.seconds, args.rounds)
        prims = primitives(hosts, args.seconds, args.rounds)
        busy: dict[str, dict[str, float]] = {}
        for _ in range(args.rounds):  # alternate, best round each (the JVM warms up as we go)
            for k in ("kazoo", "fencelock"):
                r = contended(k, hosts, args.workers, args.seconds, args.work_ms / 1000)
                if k not in busy or r["ops"] > busy[k]["ops"]:
                    busy[k] = r
    finally:
        server.stop()

    ratio = solo["kazoo Lock"] / solo["fencelock"]
    print(f"ZooKeeper 3.8 (Debian jar, tests/srv_zookeeper.py settings), loopback, {os.cpu_count()} cores\n")
    print("| uncontended, one client | acquire+release/s |")
    print("|---|---:|")
    for k, v in solo.items():
        print(f"| {k} | {v:,.0f} |")
    print(f"\nkazoo Lock / fencelock = {ratio:.2f}x (target <= 1.2x)\n")
    print(
        f"| contended: {args.workers} processes, one lock, {args.work_ms:g} ms inside | acquisitions/s "
        "| wait p50 ms | wait p99 ms | fairness min/max |"
    )
    print("|---|---:|---:|---:|---:|")
    for k, r in busy.items():
        print(
            f"| {k} | {r['ops']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
            f"| {r['fairness']:.2f} ({r['min']:.0f}/{r['max']:.0f}) |"
        )
    print("\n| backend primitives, one client | try_acquire+release/s |")
    print("|---|---:|")
    for k, v in prims.items():
        print(f"| {k} | {v:,.0f} |")
    print(f"\ntotal run {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
