"""The fault scenarios, each injected for real on this machine.

Every scenario follows one pattern: a victim consumer ``A`` takes the first file; the harness
watches the history and strikes at a precise step (usually right after ``A`` logged
``write invoke``, i.e. after its own lease check); a healthy consumer ``B`` finishes the work; the
fault heals; everyone exits when the share is empty. The history, the fault log and the database
then go to the checker.

``expect_off``: the invariants the fencing-off run must break (the proof that the checker sees
what the scenario provokes). It is empty for scenarios where fencing is not what keeps the data
right (a crash is survived by idempotent writes; a paused lock server or a wall-clock jump cannot
stretch a lease measured on the holder's monotonic clock): there, both runs must pass.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .proxy import Proxy
from .runner import Run, ScenarioError
from .servers import ZooKeeper, zookeeper_usable

__all__ = ["SCENARIOS", "Scenario", "by_name"]

LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
STALE = frozenset({"fence-order"})
ZK_SESSION = 2.0  # s; the server (tickTime 200 ms) grants 0.4-4 s


@dataclass(frozen=True)
class Scenario:
    name: str
    number: str
    title: str
    run: Callable[[Run], None]
    expect_off: frozenset[str]
    why: str
    files: int | None = None
    persistence: bool = False
    blocked: Callable[[], str | None] | None = None  # a reason it cannot run here, or None
    off_informational: bool = False


def _hook(r: Run) -> float:
    """How long a victim sits between its lease check and its write: past its lease, with room
    for the successor's interpreter to start and take over on a loaded machine."""
    return max(2.5 * r.s.ttl, r.s.ttl + 4.0)


def _first_file(r: Run) -> str:
    return sorted(r.produced)[0]


def sigstop_holder(r: Run) -> None:
    """1. A (renewing) is frozen with SIGSTOP after its lease check, past its lease; B takes the
    file over and finishes it; A is resumed and goes on to write with its old fence."""
    r.consumer("A", pause_before_write=2.0, max_files=1)
    f = r.wait_window("A").file
    r.sigstop("A")
    r.ensure_not_written("A", f)
    r.consumer("B")
    r.wait_op("B", "write", "ok", f)
    time.sleep(r.s.ttl / 2)
    r.sigcont("A")
    r.wait_write_result("A", f)
    r.wait_all()


def pause_check_then_write(r: Run) -> None:
    """2. A (no renewal: the post's fixed lease) passes ``ensure_held()``, then stalls in the test
    hook between the check and the write for two TTLs; B takes over; A writes anyway."""
    r.consumer("A", renew=False, pause_before_write=_hook(r), max_files=1)
    f = r.wait_window("A").file
    r.ensure_not_written("A", f)
    r.faults.start("hook-pause", "A", f"--pause-before-write {_hook(r):g}s after ensure_held()")
    r.successor_overtakes("A", f)
    r.faults.end("hook-pause", "A")
    r.wait_all()


def delayed_db_write(r: Run) -> None:
    """3. A's database link goes through the proxy; right after A's lease check the proxy stalls
    A's traffic to PostgreSQL for two TTLs, so its write lands after its (non-renewed) lease."""
    proxy, db = r.db_proxy("A-db")
    r.consumer("A", db_url=db, renew=False, pause_before_write=1.5, max_files=1)
    f = r.wait_window("A").file
    stall = _hook(r) + 1
    proxy.stall(stall)
    r.ensure_not_written("A", f)
    r.faults.start("db-delay", "A", f"proxy holds A's PostgreSQL traffic for {stall:g}s")
    res = r.successor_overtakes("A", f)
    r.faults.end("db-delay", "A", f"A's write: {res.type}; proxy delayed {proxy.stats.delayed_chunks} chunks")
    if proxy.stats.delayed_chunks == 0:
        raise ScenarioError("the proxy delayed nothing: A's write did not go through it")
    r.wait_all()


def cut_from_lock_server(r: Run) -> None:
    """4. A's lock link goes through the proxy; after A's lease check the proxy blackholes it, so
    A's renewals vanish and its lease runs out, while A still reaches the database."""
    proxy, lock = r.lock_proxy("A-lock")
    r.consumer("A", lock_url=lock, pause_before_write=_hook(r), max_files=1)
    f = r.wait_window("A").file
    proxy.blackhole()
    r.ensure_not_written("A", f)
    r.faults.start("partition", "A", "A <-> lock server blackholed (proxy), database reachable")
    r.successor_overtakes("A", f)
    proxy.heal()
    r.faults.end("partition", "A", f"healed; {proxy.stats.dropped_bytes} bytes swallowed")
    if proxy.stats.dropped_bytes == 0:
        raise ScenarioError("the blackhole swallowed nothing: A sent no renewal through it")
    r.wait_all()


def pause_lock_server(r: Run) -> None:
    """5. The lock server is frozen (SIGSTOP) for two TTLs while A holds a lease and writes."""
    assert r.redis is not None and r.redis.pid is not None
    r.consumer("A", pause_before_write=2.0, max_files=1)
    f = r.wait_window("A").file
    from .runner import _wait_state

    r.redis.pause()
    state = _wait_state(r.redis.pid, "T")
    r.faults.start("sigstop", "lock-server", f"SIGSTOP redis-server pid {r.redis.pid}; state {state}")
    if state != "T":
        raise ScenarioError(f"redis-server did not stop (state {state})")
    r.consumer("B")
    time.sleep(2 * r.s.ttl)
    r.redis.resume()
    r.faults.end("sigstop", "lock-server", "SIGCONT")
    r.wait_write_result("A", f)
    r.wait_all()


def pexpire_lock_key(r: Run) -> None:
    """6. The lock key expires early on the server (``PEXPIRE key 1`` from outside: what a jump of
    the server's clock does), while A is between its check and its write; B takes the file."""
    r.consumer("A", pause_before_write=_hook(r), max_files=1)
    f = r.wait_window("A").file
    admin = r.admin()
    try:
        ok = admin.pexpire(r.lock_keys(f).lock, 1)
    finally:
        admin.close()
    r.faults.point("pexpire", "lock-server", f"PEXPIRE {r.lock_keys(f).lock} 1 -> {ok}")
    if not ok:
        raise ScenarioError("PEXPIRE found no lock key to expire")
    r.ensure_not_written("A", f)
    r.successor_overtakes("A", f)
    r.wait_all()


def _restart(r: Run, snapshot: bool) -> None:
    assert r.redis is not None
    if snapshot:
        # an earlier holder's fence on every file, then a snapshot of that older state
        from fencelock import Lock

        from .history import HistoryWriter

        hw = HistoryWriter(r.hist_dir / "setup.jsonl", "setup")
        try:
            for name in sorted(r.produced):
                lock = Lock(f"file:{name}", r.lock_url, ttl=r.s.ttl, renew=False, timeout=5)
                hw.record("acquire", "invoke", file=name)
                lease = lock.acquire()
                hw.record("acquire", "ok", file=name, fence=lease.fence)
                hw.record("release", "invoke", file=name, fence=lease.fence)
                lease.release()
                hw.record("release", "ok", file=name, fence=lease.fence)
                lock.close()
        finally:
            hw.close()
        admin = r.admin()
        try:
            admin.save()
        finally:
            admin.close()
        r.notes.append("snapshot taken after one earlier lease on every file")
    r.consumer("A", pause_before_write=_hook(r), max_files=1)
    inv = r.wait_window("A")
    f = inv.file
    fence_key = r.lock_keys(f).fence
    r.redis.kill()
    if not snapshot:
        (r.redis.dir / "dump.rdb").unlink(missing_ok=True)
    r.redis.process = None
    r.redis.start()
    admin = r.admin()
    try:
        after = admin.get(fence_key)
    finally:
        admin.close()
    what = "restart-snapshot" if snapshot else "restart-empty"
    r.faults.point(what, "lock-server",
                   f"SIGKILL + start {'from the older snapshot' if snapshot else 'without data'}; "
                   f"fence counter of {f} now {after!r}, A holds fence {inv.fence}")
    if not snapshot and after is not None:
        raise ScenarioError("the restarted server still had the fence counter: not an empty restart")
    r.ensure_not_written("A", f)
    r.successor_overtakes("A", f)
    r.wait_all()


def restart_empty(r: Run) -> None:
    """7a. The lock server is killed and restarted without persistence while A holds the lock."""
    _restart(r, snapshot=False)


def restart_snapshot(r: Run) -> None:
    """7b. The lock server is killed and restarted from an older RDB snapshot (the fence counter
    rolls back) while A holds the lock."""
    _restart(r, snapshot=True)


def sigkill_consumer(r: Run) -> None:
    """8. A is killed (SIGKILL) mid-file, before its write; C is killed between its commit and the
    archive of its file; B then finishes everything, C's file a second time."""
    r.consumer("A", pause_before_write=2.0, max_files=1)
    fa = r.wait_window("A").file
    r.sigkill("A", "mid-file (after the lease check, before the write)")
    r.ensure_not_written("A", fa)
    r.consumer("C", pause_before_archive=2.5, max_files=1)
    ok = r.wait_for("C write ok", lambda e: e.proc == "C" and e.op == "write" and e.type == "ok")
    r.sigkill("C", f"between the commit of {ok.file} and its archive")
    if not (r.share / ok.file).exists():
        raise ScenarioError(f"struck too late: C had already archived {ok.file}")
    r.consumer("B")
    r.wait_all()


def storage_race(r: Run) -> None:
    """9. Two writers race at the storage with fences N and N' > N: the holder of N' writes first and
    holds its transaction open; N's writer (its lease already over) arrives while N' is still open
    and waits on the same rows. The fence check must refuse N once N' commits."""
    from fencelock import Lock

    from .history import HistoryWriter

    f = _first_file(r)
    hw1 = HistoryWriter(r.hist_dir / "w1.jsonl", "w1")
    hw2 = HistoryWriter(r.hist_dir / "w2.jsonl", "w2")
    quiet = logging.getLogger("fencelock")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # w1's lease runs out on purpose: no warning for it
    try:
        def lost(lease: object) -> None:
            hw1.record("lease-lost", "ok", file=f, fence=getattr(lease, "fence", None))

        lock1 = Lock(f"file:{f}", r.lock_url, ttl=r.s.ttl, renew=False, timeout=5, on_lost=lost)
        hw1.record("acquire", "invoke", file=f)
        l1 = lock1.acquire()
        hw1.record("acquire", "ok", file=f, fence=l1.fence)
        if not l1.wait_lost(r.s.ttl * 4):
            raise ScenarioError("w1's lease did not run out")
        lock2 = Lock(f"file:{f}", r.lock_url, ttl=30, renew=False, timeout=10)
        hw2.record("acquire", "invoke", file=f)
        l2 = lock2.acquire()
        hw2.record("acquire", "ok", file=f, fence=l2.fence)
        staged = r.dir / "w2.staged"
        common = [sys.executable, "-m", "fencelock_chaos.standin", "write", "--share", str(r.share), "--file", f,
                  "--db", r.dsn, "--fencing" if r.fencing else "--no-fencing", "--via", r.kind()]
        # w2 writes first and holds its transaction open for a second; w1 starts only once w2's write
        # is in that open transaction (an ordering, not a timing: a slow machine cannot swap them)
        r.spawn("w2", [*common, "--fence", str(l2.fence), "--history", str(r.hist_dir / "w2.jsonl"),
                       "--staged-file", str(staged), "--hold", "1.0", "--id", "w2"])
        r.spawn("w1", [*common, "--fence", str(l1.fence), "--history", str(r.hist_dir / "w1.jsonl"),
                       "--after-file", str(staged), "--id", "w1"])
        r.faults.start("race", "w1", f"w2 (fence {l2.fence}) writes first and holds its transaction 1 s; "
                       f"w1 (fence {l1.fence}, lease over) writes once w2's rows are in")
        r.wait_write_result("w2", f)
        r.wait_write_result("w1", f)
        # no check of the history's order here: w1 is unblocked by w2's COMMIT, so the two result
        # lines race by microseconds; the handshake already puts w1's transaction after w2's rows
        r.faults.end("race", "w1")
        r.wait_all()
        hw2.record("release", "invoke", file=f, fence=l2.fence)
        l2.release()
        hw2.record("release", "ok", file=f, fence=l2.fence)
        os.replace(r.share / f, r.share / ".archive" / f)
        lock1.close()
        lock2.close()
    finally:
        quiet.setLevel(level)
        hw1.close()
        hw2.close()


def clock_skew(r: Run) -> None:
    """10. A runs under libfaketime; its wall clock jumps one hour ahead in the middle of its lease
    (FAKETIME_DONT_FAKE_MONOTONIC=1: the monotonic clock, which leases use, is left alone)."""
    if not Path(LIBFAKETIME).exists():
        raise ScenarioError(f"{LIBFAKETIME} not found (apt-get install faketime)")
    stamp = r.dir / "faketime.rc"
    stamp.write_text("+0\n")
    env = {"LD_PRELOAD": LIBFAKETIME, "FAKETIME_TIMESTAMP_FILE": str(stamp), "FAKETIME_NO_CACHE": "1",
           "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    # The stand-in for A: under libfaketime 0.9.10 with FAKETIME_DONT_FAKE_MONOTONIC=1, Python's
    # time.sleep() fails with EINVAL (clock_nanosleep on the real monotonic clock), and the demo's
    # consumer sleeps with time.sleep. The stand-in sleeps with Event.wait, which works there.
    r.consumer("A", pause_before_write=2.0 * r.s.ttl, env=env, standin=True, max_files=1)
    f = r.wait_window("A").file
    stamp.write_text("+1h\n")
    r.faults.start("clock-jump", "A", "libfaketime: A's wall clock +1h mid-lease")
    r.consumer("B")
    res = r.wait_write_result("A", f)
    r.faults.end("clock-jump", "A")
    skew = _skew(res)
    r.notes.append(f"A's wall clock was {skew:+.0f} s off at its write result")
    if abs(skew - 3600) > 60:
        raise ScenarioError(f"libfaketime did not take effect on A (skew {skew:+.0f} s)")
    r.wait_all()


def _skew(e: object) -> float:
    """Wall-clock offset of a history event's process against ours (monotonic clocks are shared)."""
    wall = float(getattr(e, "extra", {}).get("wall", 0.0))
    ours = time.time() - time.monotonic()
    return wall - getattr(e, "t", 0) / 1e9 - ours


def leader_paused(r: Run) -> None:
    """12. Election: leader A is frozen (SIGSTOP) after its check, past its lease; B is elected with
    a higher term and writes the file; A, resumed, writes with its old term."""
    f = _first_file(r)
    common = [sys.executable, "-m", "fencelock_chaos.standin", "lead", "--share", str(r.share), "--file", f,
              "--lock", r.lock_url, "--db", r.dsn, "--fencing" if r.fencing else "--no-fencing",
              "--ttl", f"{r.s.ttl:g}"]
    r.spawn("A", [*common, "--pause-before-write", "2.0", "--history", str(r.hist_dir / "A.jsonl"), "--id", "A"])
    inv = r.wait_op("A", "write", "invoke", f)
    r.sigstop("A")
    r.ensure_not_written("A", f)
    r.spawn("B", [*common, "--history", str(r.hist_dir / "B.jsonl"), "--id", "B"])
    ok = r.wait_op("B", "write", "ok", f)
    if ok.fence is None or inv.fence is None or ok.fence <= inv.fence:
        raise ScenarioError(f"B's term {ok.fence} is not above A's {inv.fence}: B was not elected after A")
    time.sleep(r.s.ttl / 2)
    r.sigcont("A")
    r.wait_write_result("A", f)
    r.ensure_successor_first("B", "A", f)
    r.wait_all()


def _pg_lock(url: str) -> str:
    """A PostgreSQL lock URL (the lock in that database, schema ``fencelock``) with a short request
    timeout: a call to an unreachable server fails within a second, as the Redis URLs here do."""
    return f"{url}{'&' if '?' in url else '?'}request_timeout=1"


def pg_paused_holder(r: Run) -> None:
    """13. PostgreSQL lock, in the same database as the data: A is frozen (SIGSTOP) after its lease
    check, past its lease; B takes the lock over on the server's clock and writes the file; A,
    resumed, writes with its old fence."""
    lock = _pg_lock(r.dsn)
    r.consumer("A", lock_url=lock, pause_before_write=2.0, max_files=1)
    f = r.wait_window("A").file
    r.sigstop("A")
    r.ensure_not_written("A", f)
    r.consumer("B", lock_url=lock)
    r.wait_op("B", "write", "ok", f)
    time.sleep(r.s.ttl / 2)
    r.sigcont("A")
    r.wait_write_result("A", f)
    r.ensure_successor_first("B", "A", f)
    r.wait_all()


def pg_lock_server_restart(r: Run) -> None:
    """14. PostgreSQL lock on its own cluster: after A's lease check the lock server stops at once
    (SIGQUIT: an immediate shutdown, recovery from the WAL at the next start) and stays down past
    A's lease, then comes back with its data; B takes the lock (a fence above A's: the counter is
    durable and seeded from the clock) and writes; A writes late with its old fence."""
    from .servers import Postgres

    with Postgres() as locks:
        lock = _pg_lock(locks.create_db("locks"))
        r.notes.append(f"lock server: postgres pid {locks.process.pid if locks.process else '?'} at {locks.dir}")
        r.consumer("A", lock_url=lock, pause_before_write=_hook(r) + 1, max_files=1)
        f = r.wait_window("A").file
        r.ensure_not_written("A", f)
        locks.halt(immediate=True)
        r.faults.start("lock-server-down", "lock-server", "PostgreSQL lock server: immediate shutdown (SIGQUIT)")
        time.sleep(1.5 * r.s.ttl)
        locks.launch()
        r.faults.end("lock-server-down", "lock-server", "started again on its data (WAL recovery)")
        r.successor_overtakes("A", f, lock_url=lock)
        r.wait_all()


def pg_cut_from_lock_server(r: Run) -> None:
    """15. PostgreSQL lock, A's lock connections through the proxy: after A's lease check the proxy
    blackholes them, so A's renewals vanish and its lease runs out on the server's clock, while A
    still reaches the database directly; B takes over; A writes late."""
    assert r.pg.tcp_port is not None
    proxy = r.proxy(("tcp", "127.0.0.1", r.pg.tcp_port), "A-pglock")
    lock_a = _pg_lock(r.pg.tcp_dsn(r.db_name, proxy.port) + "?connect_timeout=1")
    r.consumer("A", lock_url=lock_a, pause_before_write=_hook(r), max_files=1)
    f = r.wait_window("A").file
    proxy.blackhole()
    r.ensure_not_written("A", f)
    r.faults.start("partition", "A", "A <-> PostgreSQL lock blackholed (proxy), its database link direct")
    r.successor_overtakes("A", f, lock_url=_pg_lock(r.dsn))
    proxy.heal()
    r.faults.end("partition", "A", f"healed; {proxy.stats.dropped_bytes} bytes swallowed")
    r.wait_all()


def _zk_blocked() -> str | None:
    return zookeeper_usable()


def zookeeper_session_expiry(r: Run) -> None:
    """11. ZooKeeper: A's link to the ensemble is blackholed (proxy) past its session timeout, so
    the server expires A's session and deletes its lock node while A is between check and write."""
    with ZooKeeper() as zk:
        r.notes.append(f"zookeeper pid {zk.process.pid if zk.process else '?'} on {zk.hosts}")
        proxy = r.proxy(("tcp", "127.0.0.1", zk.port), "A-zk")
        opts = f"?session_timeout={ZK_SESSION:g}&timeout=1"
        url_a = f"zk://127.0.0.1:{proxy.port}{opts}"
        url_b = f"zk://{zk.hosts}{opts}"
        r.consumer("A", lock_url=url_a, pause_before_write=_hook(r) + 2, max_files=1)
        f = r.wait_window("A", timeout=60).file
        proxy.blackhole()
        r.ensure_not_written("A", f)
        r.faults.start("partition", "A", "A <-> ZooKeeper blackholed past the session timeout")
        r.successor_overtakes("A", f, timeout=60, lock_url=url_b)
        proxy.heal()
        r.faults.end("partition", "A")
        r.wait_all()


SCENARIOS: list[Scenario] = [
    Scenario("sigstop-holder", "1", "holder paused (SIGSTOP) past its lease", sigstop_holder, STALE,
             "the resumed holder writes with its old fence after the new holder's write"),
    Scenario("pause-check-write", "2", "pause between lease check and write", pause_check_then_write, STALE,
             "ensure_held() passed before the pause; the write lands after the takeover"),
    Scenario("db-write-delayed", "3", "database write delayed past the lease (proxy)", delayed_db_write, STALE,
             "the delayed write reaches PostgreSQL after the new holder's commit"),
    Scenario("cut-from-lock", "4", "holder cut off from the lock server (proxy blackhole)", cut_from_lock_server,
             STALE, "renewals vanish, the lease ends, the cut-off holder still reaches the database"),
    Scenario("pause-lock-server", "5", "lock server paused (SIGSTOP) past the lease", pause_lock_server,
             frozenset(), "nobody can take a lock from a frozen server, and the holder's lease ends on its "
             "own monotonic clock: nothing to fence"),
    Scenario("pexpire", "6", "lock key expired early on the server (PEXPIRE)", pexpire_lock_key, STALE,
             "the key vanishes under the holder; the next holder writes first"),
    Scenario("restart-empty", "7a", "lock server restarted without persistence", restart_empty, STALE,
             "the lock is gone after the restart; the new fence (seeded from TIME) is higher, the old "
             "holder's write is stale"),
    Scenario("restart-snapshot", "7b", "lock server restarted from an older snapshot", restart_snapshot, STALE,
             "the fence counter rolls back; fences must still not repeat"),
    Scenario("sigkill-consumer", "8", "consumer SIGKILLed mid-file and between commit and archive",
             sigkill_consumer, frozenset(), "crashes are survived by idempotent writes (TransactionId "
             "key), not by fencing"),
    Scenario("storage-race", "9", "two writers racing at the storage with fences N and N'", storage_race, STALE,
             "the lower fence commits after the higher one", files=1),
    Scenario("clock-skew", "10", "wall clock jump on one consumer (libfaketime)", clock_skew, frozenset(),
             "leases use the monotonic clock: a wall-clock jump changes nothing"),
    Scenario("zk-session-expiry", "11", "ZooKeeper session expires while holding the lock",
             zookeeper_session_expiry, STALE, "the session's lock node is deleted; the old holder writes late",
             blocked=_zk_blocked),
    Scenario("leader-paused", "12", "elected leader paused (SIGSTOP) past its lease", leader_paused, STALE,
             "a new leader is elected with a higher term; the deposed one writes with its old term", files=1),
    Scenario("pg-paused-holder", "13", "PostgreSQL lock: holder paused (SIGSTOP) past its lease", pg_paused_holder,
             STALE, "the lease expires on the server's clock; the resumed holder writes late", files=1),
    Scenario("pg-lock-restart", "14", "PostgreSQL lock server down past the lease, then restarted",
             pg_lock_server_restart, STALE, "the lock comes back free; the holder, cut off meanwhile, writes late",
             files=1),
    Scenario("pg-cut-off", "15", "PostgreSQL lock: holder cut off from the lock server (proxy blackhole)",
             pg_cut_from_lock_server, STALE, "renewals vanish; the holder, still reaching the data, writes late",
             files=1),
]


def long_mix(duration: float, seed: int) -> Scenario:
    """The long tier: four consumers behind their own proxies (lock and database), files arriving
    in batches, and for ``duration`` seconds a seeded random sequence of faults, one at a time,
    each healed before the next: SIGSTOP or SIGKILL (then a fresh consumer) of a consumer, its lock
    link blackholed, its database link stalled, a held key PEXPIREd, the lock server paused or
    restarted empty. Fencing on must pass; what fencing off breaks is reported, not required."""

    def run(r: Run) -> None:
        _long_mix(r, duration, seed)

    return Scenario("long-mix", "L", f"seeded random fault mix for {duration:g}s (seed {seed})", run, frozenset(),
                    "random: reported, not required", files=8, off_informational=True)


def _long_mix(r: Run, duration: float, seed: int) -> None:
    assert r.redis is not None
    rng = random.Random(seed)
    ttl = r.s.ttl
    links: dict[str, tuple[Proxy, Proxy]] = {}
    alive: list[str] = []
    generation: dict[str, int] = {}

    def start(slot: str) -> None:
        generation[slot] = generation.get(slot, -1) + 1
        proc = slot if generation[slot] == 0 else f"{slot}.{generation[slot]}"
        lp, lurl = r.lock_proxy(f"{proc}-lock")
        dp, durl = r.db_proxy(f"{proc}-db")
        links[proc] = (lp, dp)
        # a pause after the lease check on most files, so that faults often land between check and write
        r.consumer(proc, lock_url=lurl, db_url=durl, pause_before_write=rng.choice([0.0, 0.5, 1.0, 2.0]),
                   idle_exit=10.0)
        alive.append(proc)

    for slot in ("C1", "C2", "C3", "C4"):
        start(slot)
    end = time.monotonic() + duration
    batch = 1
    next_batch = time.monotonic() + 3.0
    for _ in range(10_000):  # bounded; the clock ends it long before
        now = time.monotonic()
        if now >= end or now >= r.deadline - 60:
            break
        if now >= next_batch and batch < 30:
            from .standin import produce_files

            r.produced.update(produce_files(r.share, 3, r.s.lines, r.s.seed, prefix=f"b{batch:02d}", batch=batch))
            batch += 1
            next_batch = now + rng.uniform(2.0, 4.0)
        for proc in list(alive):  # a consumer that went idle and exited gets a successor
            if r.procs[proc].poll() is not None:
                alive.remove(proc)
                start(proc.split(".")[0])
        fault = rng.choice(["sigstop", "sigstop", "sigkill", "partition", "db-delay", "pexpire", "pexpire",
                            "pause-lock-server", "restart-empty", "none"])
        victim = rng.choice(alive)
        try:
            _one_fault(r, fault, victim, rng.uniform(1.2, 2.5) * ttl, links, rng)
        except (ScenarioError, ProcessLookupError) as err:  # the victim exited by itself meanwhile
            r.notes.append(f"{fault} on {victim} skipped: {err}")
        if fault == "sigkill" and victim in alive:
            alive.remove(victim)
            start(victim.split(".")[0])
        time.sleep(rng.uniform(0.3, 1.5))
    r.notes.append(f"{batch} batches of files; {len(r.faults.entries)} fault log entries")
    r.wait_all(timeout=90)


def _one_fault(r: Run, fault: str, victim: str, hold: float, links: dict[str, tuple[Proxy, Proxy]],
               rng: random.Random) -> None:
    """Inject one fault of the long tier and heal it before returning."""
    assert r.redis is not None
    if fault == "sigstop":
        r.sigstop(victim)
        try:
            time.sleep(hold)
        finally:
            r.sigcont(victim)
    elif fault == "sigkill":
        r.sigkill(victim, "long tier")
    elif fault == "partition":
        lp = links[victim][0]
        lp.blackhole()
        r.faults.start("partition", victim, "lock link blackholed")
        try:
            time.sleep(hold)
        finally:
            lp.heal()
            r.faults.end("partition", victim)
    elif fault == "db-delay":
        links[victim][1].stall(hold)
        r.faults.start("db-delay", victim, f"database link stalled {hold:.1f}s")
        time.sleep(hold)
        r.faults.end("db-delay", victim)
    elif fault == "pexpire":
        admin = r.admin()
        try:
            keys = sorted(admin.scan_iter(match="fencelock:*:lock", count=1000))
            if keys:
                key = rng.choice(keys)
                ok = admin.pexpire(key, 1)
                r.faults.point("pexpire", "lock-server", f"PEXPIRE {key!r} 1 -> {ok}")
        finally:
            admin.close()
    elif fault == "pause-lock-server":
        r.redis.pause()
        r.faults.start("sigstop", "lock-server", "SIGSTOP redis-server")
        try:
            time.sleep(hold / 2)
        finally:
            r.redis.resume()
            r.faults.end("sigstop", "lock-server", "SIGCONT")
    elif fault == "restart-empty":
        r.redis.kill()
        (r.redis.dir / "dump.rdb").unlink(missing_ok=True)
        r.redis.process = None
        r.redis.start()
        r.faults.point("restart-empty", "lock-server", "SIGKILL + start without data")


def by_name(name: str) -> Scenario:
    for s in SCENARIOS:
        if name in (s.name, s.number):
            return s
    raise KeyError(f"no scenario {name!r}; known: {', '.join(s.name for s in SCENARIOS)}")
