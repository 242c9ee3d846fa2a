#!/usr/bin/env python3
"""What one contended acquisition costs the server, command by command (deterministic counts).

    .venv/bin/python bench/count_crowd.py [--waiters 200] [--procs 4] [--server PATH] [--rounds N]
    .venv/bin/python bench/count_crowd.py --steps 2000     # server time of each step, one thread

Runs the bench's crowd (``waiters`` threads in ``procs`` processes, 1 ms inside, each acquires once)
on a fresh embedded server and prints the ``INFO commandstats`` delta per acquisition, every
command (those the scripts call included), plus the client's own calls by backend method and by
script (counted in the client, so the EVALSHAs are split by script). Not a timing benchmark.

``--steps N``: N handoffs driven through the backend on one thread (enqueue a waiter, release to
it, its BLPOP), with the server microseconds of each step (``INFO commandstats`` around batches of
50 steps of one kind): EVALSHA's own time (its calls included) and that of the commands it called.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import threading
import time
from typing import Any

import bench_redis as br  # bench/ is the script's own directory

import fencelock
from fencelock.backends.redis import _sync as backend_mod
from fencelock.embedded import EmbeddedRedis, find_server_binary


def counting_worker(url: str, name: str, threads: int, start: Any, out: Any) -> None:
    import redis

    calls: collections.Counter[str] = collections.Counter()
    lock_ = threading.Lock()
    scripts = {n: getattr(backend_mod, n) for n in dir(backend_mod)}
    shas = {v.sha: n.strip("_") for n, v in scripts.items() if isinstance(v, backend_mod.Lua)}
    client = redis.Redis.from_url(url, max_connections=threads + 10)
    orig = client.execute_command

    def counted(*args: Any, **kw: Any) -> Any:
        what = str(args[0]) if args else "?"
        if what == "EVALSHA":
            what = "EVALSHA " + shas.get(str(args[1]), str(args[1])[:8])
        with lock_:
            calls[what] += 1
        return orig(*args, **kw)

    client.execute_command = counted  # type: ignore[method-assign]
    ready = threading.Barrier(threads + 1)
    got = [0]

    def one() -> None:
        lk = fencelock.Lock(name, client, ttl=30, timeout=60)
        ready.wait(60)
        start.wait(60)
        lease = lk.acquire()
        time.sleep(0.001)
        lease.release()
        with lock_:
            got[0] += 1

    pool = [threading.Thread(target=one) for _ in range(threads)]
    for t in pool:
        t.start()
    ready.wait(60)
    for t in pool:
        t.join(120)
    out.put((os.getpid(), (dict(calls), got[0])))


def steps(url: str, admin: Any, n: int, batch: int = 50) -> None:
    """Server time of the enqueue and of the handoff, measured over batches of ``batch`` steps of
    one kind between two ``INFO commandstats`` reads: one call between a reset and a read ran on
    caches the INFO had just flushed, and counted a third to a half more server time than the same
    step in a run of them (the figures this tool printed before 2026-12-03: enqueue 37 against 25
    us, handoff 52 against 42, same tree, same server, one after the other)."""
    import redis

    from fencelock._core.params import new_token
    from fencelock.backends.redis import RedisBackend

    backend = RedisBackend(redis.Redis.from_url(url))
    name = f"steps:{time.monotonic_ns()}"
    holder = new_token()
    backend.try_acquire(name, holder, 30_000, "x", True)
    backend.release(name + ":warm", holder)  # loads RELEASE
    skip = ("cmdstat_info", "cmdstat_config", "cmdstat_config|resetstat")
    acc: dict[str, collections.Counter[str]] = {"enqueue": collections.Counter(), "handoff": collections.Counter()}

    def measure(step: str, fn: Any) -> None:
        admin.config_resetstat()
        fn()
        for k, v in admin.info("commandstats").items():
            if k not in skip:
                acc[step][k[8:]] += float(v["usec"])

    done = 0
    while done < n:
        waiters = [new_token() for _ in range(min(batch, n - done))]

        def enqueue_all(waiters: list[str] = waiters) -> None:
            for w in waiters:
                backend.try_acquire(name, w, 30_000, "x", True)

        def hand_all(waiters: list[str] = waiters) -> None:
            nonlocal holder
            for w in waiters:
                backend.release(name, holder)
                assert backend.wait(name, w, 1.0) is not None
                holder = w

        measure("enqueue", enqueue_all)
        measure("handoff", hand_all)
        done += len(waiters)
    backend.release(name, holder)
    backend.close()
    for step, usec in acc.items():
        inner = sum(v for k, v in usec.items() if k not in ("evalsha", "blpop"))
        extra = f"; the woken waiter's BLPOP {usec['blpop'] / n:.1f} us" if step == "handoff" else ""
        print(
            f"{step}: EVALSHA {usec['evalsha'] / n:.1f} us of server time, of which its calls "
            f"{inner / n:.1f} us{extra} (batches of {batch})"
        )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--waiters", type=int, default=200)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--server", default=None)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--steps", type=int, default=0, help="time N single-thread handoffs step by step instead")
    args = ap.parse_args()
    with EmbeddedRedis(args.server or find_server_binary()) as server:
        admin = server.client()
        if args.steps:
            steps(server.url, admin, args.steps)
            return 0
        for _ in range(args.rounds):
            admin.config_resetstat()
            t0 = time.monotonic()
            name = f"count:{time.monotonic_ns()}"
            res = br.run_workers(counting_worker, (server.url, name, args.waiters // args.procs), args.procs, 180)
            elapsed = time.monotonic() - t0
            stats = br.command_stats(admin)
            calls: collections.Counter[str] = collections.Counter()
            got = 0
            for c, g in res.values():
                calls.update(c)
                got += g
            total = sum(c for c, _ in stats.values())
            print(f"acquired {got}/{args.waiters} in {elapsed * 1000:.0f} ms (incl. process start)")
            print(f"server commands per acquisition: {total / max(1, got):.2f}")
            for k, (c, us) in sorted(stats.items(), key=lambda kv: -kv[1][0]):
                print(f"  {k[8:]:<16} {c / max(1, got):7.2f}/acq  {us / max(1, c):6.1f} us/call")
            print(f"client calls per acquisition: {sum(calls.values()) / max(1, got):.2f}")
            for k, c in calls.most_common():
                print(f"  {k:<24} {c / max(1, got):7.2f}/acq")
    return 0


if __name__ == "__main__":
    sys.exit(main())
