#!/usr/bin/env python3
"""fencelock on its embedded SQLite backend against the one-host locks users would otherwise pick
(``filelock``, ``portalocker``: both take an OS file lock, ``flock``/``fcntl``), same dir, same run.

    .venv/bin/python bench/bench_onehost.py             # disk temp dir + /dev/shm, about 45 s
    .venv/bin/python bench/bench_onehost.py --quick     # about 25 s
    .venv/bin/python bench/bench_onehost.py --dir /var/tmp --contended-dir /var/tmp

Measures:
  1. uncontended acquire+release of one lock, in each directory (ratios against ``filelock``);
     also fencelock's asyncio API, whose calls each run in a worker thread
  2. 4 processes contending for one lock with a 1 ms critical section (read-modify-write of a
     counter file inside it): acquisitions/s, wait p50/p99, handoff to a *different* worker
     p50/p99 and its share, fairness (min/max acquisitions per worker), lost counter updates

What differs, so the numbers are read right: the file locks give mutual exclusion only while the
holder's process lives (the kernel drops the lock at exit) and hand out no lease and no fence; a
holder paused for a minute keeps them all waiting for that minute. fencelock writes a lease with a
fence to the SQLite file (one short transaction to acquire, one statement to release) and serves
waiters first come, first served. The file locks wait by polling at a fixed interval (filelock
50 ms, portalocker 250 ms by default; the "1 ms" rows set it to 1 ms).

The machine is shared and noisy: uncontended rounds are interleaved and the median is kept.
Not a test: no thresholds here.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import queue
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import filelock
import portalocker
from _contention import summarize  # bench/ is the script's own directory

import fencelock
from fencelock import aio

CTX = mp.get_context("spawn")


# -- contenders -------------------------------------------------------------------------------


def make_lock(kind: str, directory: Path, name: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """(acquire, release) of ``kind`` for lock ``name`` in ``directory``; acquire waits up to 60 s."""
    if kind.startswith("filelock"):
        fl = filelock.FileLock(str(directory / f"{name}.lock"))
        poll = 0.001 if kind.endswith("1 ms") else 0.05

        def acq_fl() -> None:
            fl.acquire(timeout=60, poll_interval=poll)

        return acq_fl, fl.release
    if kind.startswith("portalocker"):
        pl = portalocker.Lock(
            str(directory / f"{name}.plock"),
            timeout=60,
            check_interval=0.001 if kind.endswith("1 ms") else 0.25,
        )

        def acq_pl() -> None:
            pl.acquire()

        return acq_pl, pl.release
    if kind.startswith("fencelock"):
        lk = fencelock.Lock(name, f"sqlite:///{directory}/fencelock.db", ttl=30, renew=kind.endswith("renew"))
        held: list[fencelock.Lease] = []

        def acq_fc() -> None:
            held.append(lk.acquire(timeout=60))

        def rel_fc() -> None:
            held.pop().release()

        return acq_fc, rel_fc
    raise ValueError(kind)


UNCONTENDED = ["filelock", "portalocker", "fencelock", "fencelock+renew"]
CONTENDED = ["filelock", "filelock 1 ms", "portalocker", "portalocker 1 ms", "fencelock"]


def rate(acquire: Callable[[], None], release: Callable[[], None], seconds: float) -> float:
    n = 0
    start = time.perf_counter()
    end = start + seconds
    while True:
        for _ in range(20):
            acquire()
            release()
        n += 20
        now = time.perf_counter()
        if now >= end:
            return n / (now - start)


async def async_rate(lock: aio.Lock, seconds: float) -> float:
    """fencelock.aio: each call runs in a worker thread (asyncio.to_thread)."""
    n = 0
    start = time.perf_counter()
    end = start + seconds
    while True:
        for _ in range(20):
            lease = await lock.acquire(timeout=60)
            await lease.release()
        n += 20
        now = time.perf_counter()
        if now >= end:
            return n / (now - start)


def uncontended(directory: Path, rounds: int, seconds: float) -> dict[str, float]:
    locks = {kind: make_lock(kind, directory, f"u-{kind.replace(' ', '-').replace('+', '-')}") for kind in UNCONTENDED}
    for acquire, release in locks.values():  # warm up: files created, connection open
        rate(acquire, release, 0.1)
    results: dict[str, list[float]] = {k: [] for k in [*locks, "fencelock.aio"]}
    for _ in range(rounds):
        for kind, (acquire, release) in locks.items():
            results[kind].append(rate(acquire, release, seconds))
        alock = aio.Lock("u-aio", f"sqlite:///{directory}/fencelock.db", ttl=30, renew=False)
        results["fencelock.aio"].append(asyncio.run(async_rate(alock, seconds)))
    return {k: statistics.median(v) for k, v in results.items()}


# -- contended --------------------------------------------------------------------------------


def contended_worker(kind: str, directory: str, name: str, seconds: float, ready: Any, start: Any, out: Any) -> None:
    acquire, release = make_lock(kind, Path(directory), name)
    counter = Path(directory) / f"{name}.counter"
    ready.put(os.getpid())
    start.wait(60)
    events: list[tuple[float, float, float]] = []  # (asked, got, released), CLOCK_MONOTONIC
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at:
        asked = time.monotonic()
        acquire()
        got = time.monotonic()
        value = int(counter.read_text() or 0)  # read-modify-write: only safe under the lock
        time.sleep(0.001)
        counter.write_text(str(value + 1))
        released = time.monotonic()
        release()
        events.append((asked, got, released))
    out.put((os.getpid(), events))


def contended(kind: str, directory: Path, workers: int, seconds: float) -> dict[str, float]:
    name = f"c-{kind.replace(' ', '-')}-{time.monotonic_ns()}"
    (directory / f"{name}.counter").write_text("0")
    ready, start, out = CTX.Queue(), CTX.Event(), CTX.Queue()
    procs = [
        CTX.Process(target=contended_worker, args=(kind, str(directory), name, seconds, ready, start, out))
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    per_worker: dict[int, list[tuple[float, float, float]]] = {}
    try:
        for _ in procs:
            ready.get(timeout=60)  # every worker imported and made its lock
        start.set()
        give_up = time.monotonic() + seconds + 60
        while len(per_worker) < len(procs):
            if time.monotonic() > give_up:
                raise RuntimeError(f"{kind}: workers did not report within {seconds + 60:g} s")
            try:
                pid, events = out.get(timeout=0.5)
            except queue.Empty:
                dead = [p.pid for p in procs if p.exitcode not in (None, 0)]
                if dead:  # a worker raised (its traceback is on stderr): stop now, not at the timeout
                    raise RuntimeError(f"{kind}: worker(s) {dead} failed") from None
                continue
            per_worker[pid] = events
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, 9)
                p.join(10)
    final = int((directory / f"{name}.counter").read_text() or 0)
    return summarize(per_worker, [p.pid for p in procs if p.pid is not None], seconds, final)


# -- main -------------------------------------------------------------------------------------


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    lines = [f"\n### {title}\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


@contextmanager
def bench_dir(parent: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fencelock-bench-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def fs_type(path: str) -> str:
    best, kind = "", "?"
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and path.startswith(parts[1]) and len(parts[1]) > len(best):
                    best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_dirs = [tempfile.gettempdir()] + (["/dev/shm"] if os.path.isdir("/dev/shm") else [])
    ap.add_argument(
        "--dir",
        action="append",
        help=f"parent dir for the uncontended runs (repeatable; default: {' and '.join(default_dirs)})",
    )
    ap.add_argument("--contended-dir", default=tempfile.gettempdir(), help="parent dir for the contended runs")
    ap.add_argument("--quick", action="store_true", help="shorter rounds (about 25 s in all)")
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()
    rounds, secs, cont_secs = (3, 0.25, 1.5) if args.quick else (5, 0.4, 3.0)
    out = [
        f"python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}, filelock {filelock.__version__}, "
        f"portalocker {portalocker.__version__}, {os.cpu_count()} cores"
    ]
    print(out[0], flush=True)
    for parent in args.dir or default_dirs:
        with bench_dir(parent) as directory:
            res = uncontended(directory, rounds, secs)
        base = res["filelock"]
        rows = [[k, f"{v:,.0f}", f"{v / base:.2f}x"] for k, v in res.items()]
        title = (
            f"uncontended acquire+release, one lock, in {parent} ({fs_type(parent)}; "
            f"median of {rounds} interleaved rounds of {secs:g} s)"
        )
        out.append(table(title, ["lock", "ops/s", "vs filelock"], rows))
        print(out[-1], flush=True)
    rows = []
    with bench_dir(args.contended_dir) as directory:
        for kind in CONTENDED:
            r = contended(kind, directory, args.workers, cont_secs)
            rows.append(
                [kind]
                + [f"{v:.0f}" if k in ("ops/s", "lost updates", "handoffs %") else f"{v:.2f}" for k, v in r.items()]
            )
            print(kind, {k: round(v, 2) for k, v in r.items()}, flush=True)
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
    out.append(
        table(
            f"{args.workers} processes, one lock, 1 ms critical section, in {args.contended_dir} "
            f"({fs_type(args.contended_dir)}; {cont_secs:g} s each)",
            header,
            rows,
        )
    )
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
