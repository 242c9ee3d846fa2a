#!/usr/bin/env python3
"""fencelock on its embedded SQLite backend against the one-host locks users would otherwise pick
(``filelock``, ``portalocker``: both take an OS file lock, ``flock``/``fcntl``), same dir, same run.

    .venv/bin/python bench/bench_onehost.py             # disk temp dir + /dev/shm, about 45 s
    .venv/bin/python bench/bench_onehost.py --quick     # about 25 s
    .venv/bin/python bench/bench_onehost.py --dir /var/tmp --contended-dir /var/tmp
    .venv/bin/python bench/bench_onehost.py --baseline /tmp/old/src --only-baseline   # A/B only

``--baseline SRC`` also measures this tree's fencelock against another checkout's (``SRC`` is its
``src`` directory, e.g. ``git archive v0.1.0 src | tar -x -C /tmp/old``): uncontended mutex
acquire+release on SQLite, each round in a fresh process per side, the sides alternating, medians.

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
import subprocess
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


# -- this tree against a baseline checkout, same run ------------------------------------------


def ab_child(directory: str) -> None:
    """One side of the A/B rounds (run with PYTHONPATH set to that side's src): prints the module it
    imported, then answers each line SECONDS on stdin with its rate over that long."""
    acquire, release = make_lock("fencelock", Path(directory), "ab")
    rate(acquire, release, 0.2)  # warm up: file created, connection open, statements prepared
    print(fencelock.__file__, flush=True)
    for line in sys.stdin:
        print(rate(acquire, release, float(line)), flush=True)


def ab_rounds(baseline: str, parent: str, rounds: int, seconds: float) -> dict[str, float]:
    """Uncontended mutex rate of this tree and of ``baseline``, each side in a process of its own
    on a lock file of its own (a newer layout may migrate an older file), the sides taking turns
    in short bursts so that the drifts of a shared machine hit both alike. Returns each side's
    median and the median of the per-turn ratios (the steadier figure)."""
    sides = {"this tree": str(Path(__file__).resolve().parents[1] / "src"), "baseline": os.path.abspath(baseline)}
    results: dict[str, list[float]] = {k: [] for k in sides}
    procs: dict[str, subprocess.Popen[str]] = {}
    with bench_dir(parent) as directory:
        try:
            for side, src in sides.items():
                where = directory / side.replace(" ", "-")
                where.mkdir()
                procs[side] = subprocess.Popen(
                    [sys.executable, __file__, "--ab-child", str(where)],
                    env={**os.environ, "PYTHONPATH": src},
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                module = procs[side].stdout.readline().strip()  # type: ignore[union-attr]
                if not module.startswith(src):
                    raise RuntimeError(f"{side}: imported {module!r}, not the tree under {src}")
            for i in range(rounds):
                for side in list(sides) if i % 2 == 0 else list(reversed(sides)):
                    proc = procs[side]
                    proc.stdin.write(f"{seconds}\n")  # type: ignore[union-attr]
                    proc.stdin.flush()  # type: ignore[union-attr]
                    results[side].append(float(proc.stdout.readline()))  # type: ignore[union-attr]
        finally:
            for proc in procs.values():
                proc.stdin.close()  # type: ignore[union-attr]
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(30)
    medians = {k: statistics.median(v) for k, v in results.items()}
    ratios = [a / b for a, b in zip(results["this tree"], results["baseline"], strict=True)]
    return {**medians, "ratio": statistics.median(ratios)}


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
    ap.add_argument("--baseline", metavar="SRC", help="also compare the uncontended mutex with fencelock from SRC")
    ap.add_argument("--only-baseline", action="store_true", help="with --baseline: only the A/B comparison")
    ap.add_argument("--ab-rounds", type=int, default=40, help="A/B turns per side (default 40, of 0.25 s)")
    ap.add_argument("--ab-child", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ab_child:
        ab_child(args.ab_child)
        return 0
    rounds, secs, cont_secs = (3, 0.25, 1.5) if args.quick else (5, 0.4, 3.0)
    out = [
        f"python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}, filelock {filelock.__version__}, "
        f"portalocker {portalocker.__version__}, {os.cpu_count()} cores"
    ]
    print(out[0], flush=True)
    if args.baseline:
        parent = (args.dir or default_dirs)[0]
        ab_secs = 0.25
        res = ab_rounds(args.baseline, parent, args.ab_rounds, ab_secs)
        rows = [
            ["this tree", f"{res['this tree']:,.0f}", f"{res['ratio']:.2f}x"],
            ["baseline", f"{res['baseline']:,.0f}", "1.00x"],
        ]
        title = (
            f"fencelock mutex on SQLite, uncontended acquire+release, this tree vs {args.baseline}, in {parent} "
            f"({fs_type(parent)}; {args.ab_rounds} alternating turns of {ab_secs:g} s per side, one process a side; "
            "ops/s: medians; vs baseline: median of the per-turn ratios)"
        )
        out.append(table(title, ["fencelock", "ops/s", "vs baseline"], rows))
        print(out[-1], flush=True)
        if args.only_baseline:
            return 0
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
