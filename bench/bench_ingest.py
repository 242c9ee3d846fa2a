#!/usr/bin/env python3
"""Ingest throughput of the demo system: what the lock and the fence cost, and memory per consumer.

    .venv/bin/python bench/bench_ingest.py                        # 100 files x 10,000 lines, ~5 minutes
    .venv/bin/python bench/bench_ingest.py --files 10 --lines 2000 --dbs sqlite   # a quick look

For each database (SQLite file; PostgreSQL 15 started privately on a unix socket, as the ``postgres``
user) it ingests the same files:

- **baseline**: one process, no lock, no fence: the consumer's own write path
  (``fencelock_demo.consumer.ingest``: streaming parse, batched idempotent insert, ledger row,
  commit, archive) called directly on every file;
- **N consumers** (1, 2, 4): the real ``fencelock consume`` processes competing through an embedded
  valkey-server, one lock and one fence check per file.

Each run starts from a copy of the files (hard links) and an empty database, and is timed from
process start (imports included, for both) to the last file archived. Peak RSS is each process's
``ru_maxrss`` from ``wait4``. A last run feeds one consumer a single file made of all the others
(1,000,000 lines, ~100 MB) to show memory does not grow with the file.

The machine is shared: numbers move ~10-15% between runs. Not a test: no thresholds here.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fencelock_chaos.servers import postgres_bin_dir


@dataclass
class Result:
    db: str
    mode: str
    rows: int
    seconds: float
    peak_rss_mb: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


# -- servers -------------------------------------------------------------------------------------


class Postgres:
    """A private PostgreSQL (the newest installed) on a unix socket in a temp dir (default settings, fsync on)."""

    def __init__(self) -> None:
        self.user = pwd.getpwnam("postgres")
        self.dir = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        pg_bin = postgres_bin_dir()
        env = {"PATH": f"{pg_bin}:/usr/bin:/bin", "HOME": str(self.dir), "LC_ALL": "C.UTF-8"}
        subprocess.run([str(pg_bin / "initdb"), "-D", str(self.dir / "data"), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8"], check=True, user=self.user.pw_uid, group=self.user.pw_gid, cwd=self.dir,
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=120)
        log = open(self.dir / "server.log", "wb")
        self.proc = subprocess.Popen([str(pg_bin / "postgres"), "-D", str(self.dir / "data"), "-k", str(self.dir),
                                      "-c", "listen_addresses="], user=self.user.pw_uid, group=self.user.pw_gid,
                                     cwd=self.dir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        import psycopg

        end = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(f"postgresql://postgres@/postgres?host={self.dir}", autocommit=True) as c:
                    c.execute("CREATE DATABASE bench")
                break
            except psycopg.OperationalError:
                if time.monotonic() > end or self.proc.poll() is not None:
                    self.stop()
                    raise
                time.sleep(0.05)
        self.url = f"postgresql://postgres@/bench?host={self.dir}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


# -- one run --------------------------------------------------------------------------------------


def _fresh_share(source: Path, share: Path) -> int:
    shutil.rmtree(share, ignore_errors=True)
    share.mkdir(parents=True)
    n = 0
    for f in sorted(source.iterdir()):
        if f.is_file() and not f.name.startswith("."):
            os.link(f, share / f.name)
            n += 1
    return n


def _reset_db(db: str) -> None:
    from fencelock_demo.store import open_store

    if db.startswith("sqlite:///"):
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(db[len("sqlite:///"):] + suffix)
    store = open_store(db)
    store.reset()
    store.close()


def _wait4(pid: int, timeout: float) -> tuple[int, float]:
    """Reap ``pid`` (ours) and return (exit status, peak RSS in MB)."""
    end = time.monotonic() + timeout
    while True:
        got, status, usage = os.wait4(pid, os.WNOHANG)
        if got == pid:
            return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024
        if time.monotonic() > end:
            os.kill(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            raise RuntimeError(f"process {pid} did not exit in {timeout:g} s")
        time.sleep(0.02)


def _spawn(args: list[str], log: Path) -> int:
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    return proc.pid  # reaped with os.wait4 (for its rusage), never through Popen


def run_baseline(source: Path, work: Path, db: str, rows: int, timeout: float) -> Result:
    share = work / "share"
    files = _fresh_share(source, share)
    _reset_db(db)
    t0 = time.monotonic()
    pid = _spawn([sys.executable, __file__, "--_baseline", str(share), db], work / "baseline.log")
    code, rss = _wait4(pid, timeout)
    seconds = time.monotonic() - t0
    if code != 0:
        raise RuntimeError(f"baseline failed ({code}): {(work / 'baseline.log').read_text()[-2000:]}")
    _verify(share, db, files, rows)
    return Result(db.split(":")[0], "baseline (no lock, no fence)", rows, seconds, rss)


def run_consumers(source: Path, work: Path, db: str, lock: str, n: int, rows: int, timeout: float,
                  mode: str | None = None) -> Result:
    share = work / "share"
    files = _fresh_share(source, share)
    _reset_db(db)
    done = share / "done"
    t0 = time.monotonic()
    pids = [
        _spawn([sys.executable, "-m", "fencelock.cli", "consume", "--share", str(share), "--lock", lock,
                "--db", db, "--id", f"b{k}", "--poll", "0.05"], work / f"consumer{k}.log")
        for k in range(n)
    ]
    seconds = 0.0
    try:
        end = t0 + timeout
        while time.monotonic() < end:
            if done.exists() and sum(1 for _ in done.iterdir()) == files:
                seconds = time.monotonic() - t0
                break
            time.sleep(0.01)
        else:
            raise RuntimeError(f"{n} consumers did not finish in {timeout:g} s")
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        rss = [_wait4(pid, 60)[1] for pid in pids]
    _verify(share, db, files, rows)
    return Result(db.split(":")[0], mode or f"{n} consumer{'s' if n > 1 else ''}", rows, seconds, max(rss))


def _verify(share: Path, db: str, files: int, rows: int) -> None:
    from fencelock_demo.store import open_store

    store = open_store(db)
    s = store.summary()
    store.close()
    if s.rows != rows or s.distinct_ids != rows or len(list((share / "done").iterdir())) != files:
        raise RuntimeError(f"run incomplete: {s.rows} rows of {rows}")


def _baseline_main(share_dir: str, db: str) -> int:
    """The no-lock baseline, in its own process: the consumer's write path minus lock and fence."""
    from fencelock_demo.consumer import ingest
    from fencelock_demo.share import Share
    from fencelock_demo.store import open_store

    share = Share(share_dir)
    store = open_store(db)
    store.setup()
    for name in sorted(share.listing().ready):
        fd = share.open(name)
        try:
            res = ingest(store, lambda fd=fd: Share.chunks(fd), name, None, "baseline", check_fence=False)
            if res.bad:
                raise RuntimeError(f"{name}: {res.first_bad}")
            store.commit()
            share.archive(name)
        finally:
            os.close(fd)
    store.close()
    return 0


def per_file_cost_ms(lock_url: str, db: str, cycles: int = 300) -> tuple[float, float]:
    """What a consumer adds per file, measured directly (median of ``cycles``, in ms): the lock
    (try_acquire + release: two round trips) and the fence check (one upsert in an open write
    transaction). Robust to the noise that moves whole-run timings on a shared machine."""
    import statistics

    import fencelock
    from fencelock.backends import open_backend
    from fencelock_demo.store import open_store

    backend, _ = open_backend(lock_url)
    store = open_store(db)
    store.setup()
    lock_ms, fence_ms = [], []
    try:
        for i in range(cycles):
            t0 = time.perf_counter()
            lease = fencelock.Lock(f"file:probe-{i}", backend, ttl=30).try_acquire()
            assert lease is not None
            lease.release()
            lock_ms.append((time.perf_counter() - t0) * 1000)
            if store.dialect == "sqlite":
                store.conn.execute("BEGIN IMMEDIATE")
            else:
                store.conn.rollback()
            t0 = time.perf_counter()
            fencing_admit(store.conn, f"file:probe-{i}", lease.fence)
            fence_ms.append((time.perf_counter() - t0) * 1000)
            store.rollback()
    finally:
        store.close()
        backend.close()
    return statistics.median(lock_ms), statistics.median(fence_ms)


def fencing_admit(conn: object, resource: str, fence: int) -> None:
    from fencelock import fencing

    fencing.admit(conn, resource, fence)


# -- main -----------------------------------------------------------------------------------------


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--_baseline":
        return _baseline_main(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100, help="files to ingest (default 100)")
    ap.add_argument("--lines", type=int, default=10_000, help="lines a file (default 10,000)")
    ap.add_argument("--consumers", default="1,2,4", help="consumer counts to run (default 1,2,4)")
    ap.add_argument("--dbs", default="sqlite,postgresql", help="databases (default sqlite,postgresql)")
    ap.add_argument("--no-big-file", action="store_true", help="skip the one-big-file memory run")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds; each configuration keeps its median (rounds interleave configurations)")
    ap.add_argument("--timeout", type=float, default=600, help="bound for each run, seconds (default 600)")
    ap.add_argument("--work", type=Path, help="work folder (default: a temp dir, removed at the end)")
    args = ap.parse_args()

    from fencelock.embedded import EmbeddedRedis
    from fencelock_demo.producer import ProducerConfig, produce

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    source = work / "source"
    shutil.rmtree(source, ignore_errors=True)
    rows = args.files * args.lines
    print(f"producing {args.files} files x {args.lines:,} lines ...", file=sys.stderr)
    produce(ProducerConfig(source, files=args.files, lines=args.lines, seed=1))
    shutil.rmtree(source / ".tmp", ignore_errors=True)
    counts = [int(c) for c in args.consumers.split(",")]
    results: list[Result] = []
    costs: dict[str, tuple[float, float]] = {}
    server = EmbeddedRedis().start()
    pg: Postgres | None = None
    try:
        for kind in args.dbs.split(","):
            if kind == "sqlite":
                db = f"sqlite:///{work / 'bench.db'}"
            else:
                pg = pg or Postgres()
                db = pg.url
            lock_ms, fence_ms = per_file_cost_ms(server.url, db)
            costs[kind] = (lock_ms, fence_ms)
            rounds: dict[str, list[Result]] = {}
            for r in range(args.repeat):
                print(f"{kind}: round {r + 1}: baseline ...", file=sys.stderr)
                rounds.setdefault("base", []).append(run_baseline(source, work, db, rows, args.timeout))
                for n in counts:
                    print(f"{kind}: round {r + 1}: {n} consumers ...", file=sys.stderr)
                    rounds.setdefault(str(n), []).append(
                        run_consumers(source, work, db, server.url, n, rows, args.timeout))
            for runs in rounds.values():
                runs.sort(key=lambda x: x.seconds)
                results.append(runs[len(runs) // 2])
            if not args.no_big_file and kind == args.dbs.split(",")[0]:
                big = work / "big"
                shutil.rmtree(big, ignore_errors=True)
                big.mkdir()
                with open(big / "all-in-one.tsv", "wb") as out:
                    for f in sorted(source.iterdir()):
                        with open(f, "rb") as src:
                            shutil.copyfileobj(src, out)
                size = (big / "all-in-one.tsv").stat().st_size / 1e6
                print(f"{kind}: one consumer, one {size:.0f} MB file ...", file=sys.stderr)
                results.append(run_consumers(big, work, db, server.url, 1, rows, args.timeout,
                                             mode=f"1 consumer, one {size:.0f} MB file"))
    finally:
        server.stop()
        if pg is not None:
            pg.stop()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.files} files x {args.lines:,} lines = {rows:,} rows; {os.cpu_count()} cores\n")
    print("| database | run | seconds | rows/s | vs baseline | peak RSS per process |")
    print("|---|---|---:|---:|---:|---:|")
    base_rate: dict[str, float] = {}
    for r in results:
        if r.mode.startswith("baseline"):
            base_rate[r.db] = r.rate
        ratio = r.rate / base_rate[r.db]
        print(f"| {r.db} | {r.mode} | {r.seconds:.1f} | {r.rate:,.0f} | {ratio:.2f} | {r.peak_rss_mb:.0f} MB |")
    print()
    for db, rate in base_rate.items():
        one = next((r for r in results if r.db == db and r.mode == "1 consumer"), None)
        if one is not None:
            print(f"{db}: lock + fencing overhead at 1 consumer, whole runs: {(rate / one.rate - 1) * 100:+.1f}%")
        if db in costs:
            lock_ms, fence_ms = costs[db]
            file_ms = 1000 * args.lines / rate
            print(f"{db}: per file, measured directly: lock {lock_ms:.2f} ms + fence check {fence_ms:.2f} ms "
                  f"= {(lock_ms + fence_ms) / file_ms * 100:.2f}% of the {file_ms:.0f} ms a "
                  f"{args.lines:,}-line file takes in the baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
