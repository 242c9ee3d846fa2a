"""Run scenarios for real: servers, consumers, faults, history, check, verdict.

One ``Run`` is one scenario with the storage-side fence check on or off. It owns everything it
starts (a redis-server, a database in the shared throwaway PostgreSQL cluster, consumer
processes, proxies) and stops all of it by pid in ``close()``, also when the scenario fails.
Every wait is bounded (``Settings.step_timeout``, ``Settings.run_timeout``).

The database gets one piece of harness instrumentation: a trigger on the demo's per-file ledger
(``demo_files``) that appends every accepted write to ``chaos_commits`` with a sequence number.
A writer holds the ledger row's lock from its upsert to its commit, so per file the sequence is
the commit order: that is what ``fence-order`` is checked against.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fencelock._cli_ops import cleanup_shield
from fencelock.embedded import EmbeddedRedis

from .checker import Commit, RunFacts, Storage, Violation, check
from .history import Event, Fault, FaultLog, read_events, read_faults
from .proxy import Proxy, Upstream
from .servers import Postgres, stop_pid
from .standin import ARCHIVE, ensure_schema, produce_files

__all__ = ["Run", "RunResult", "ScenarioError", "Settings", "demo_consumer_available"]

DEBIAN_REDIS = "/usr/bin/redis-server"

INSTRUMENT = [
    """CREATE TABLE IF NOT EXISTS chaos_commits (
        seq BIGSERIAL PRIMARY KEY, resource TEXT NOT NULL, fence BIGINT, writer TEXT NOT NULL,
        rows INTEGER NOT NULL, at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())""",
    """CREATE OR REPLACE FUNCTION chaos_log_commit() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         INSERT INTO chaos_commits (resource, fence, writer, rows) VALUES (NEW.name, NEW.fence, NEW.consumer, NEW.rows);
         RETURN NEW;
       END $$""",
    "DROP TRIGGER IF EXISTS chaos_log_commit ON demo_files",
    """CREATE TRIGGER chaos_log_commit AFTER INSERT OR UPDATE ON demo_files
       FOR EACH ROW EXECUTE FUNCTION chaos_log_commit()""",
]


class ScenarioError(RuntimeError):
    """The scenario could not be driven as planned (a fault could not be injected, a step timed out)."""


def demo_consumer_available() -> bool:
    """True once ``fencelock consume`` (the demo's consumer) exists."""
    try:
        from fencelock_demo import cli
    except ImportError:
        return False
    return any(getattr(c, "name", None) == "consume" for c in getattr(cli, "COMMANDS", []))


@dataclass
class Settings:
    ttl: float = 1.5
    files: int = 3
    lines: int = 200
    seed: int = 1
    consumer: str = "auto"  # "demo" (fencelock consume), "standin", or "auto": the demo when it exists
    redis_binary: str | None = DEBIAN_REDIS if os.access(DEBIAN_REDIS, os.X_OK) else None
    done_bound: float = 20.0
    step_timeout: float = 30.0
    run_timeout: float = 90.0


@dataclass
class RunResult:
    scenario: str
    fencing: bool
    violations: list[Violation]
    events: list[Event]
    faults: list[Fault]
    storage: Storage
    produced: dict[str, list[str]]
    start_t: int
    end_t: int
    seconds: float
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    directory: str = ""
    ttl_ns: int = 1_500_000_000

    def invariants(self) -> set[str]:
        return {v.invariant for v in self.violations}


class Run:
    """One scenario run: its servers, processes, share, history and fault log."""

    def __init__(self, scenario: str, fencing: bool, settings: Settings, pg: Postgres, out: Path,
                 index: int) -> None:
        self.scenario = scenario
        self.fencing = fencing
        self.s = settings
        self.pg = pg
        self.dir = out / f"{scenario}-{'on' if fencing else 'off'}"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.share = self.dir / "share"
        self.share.mkdir()
        (self.share / ARCHIVE).mkdir()
        self.hist_dir = self.dir / "history"
        self.hist_dir.mkdir()
        self.logs = self.dir / "logs"
        self.logs.mkdir()
        self.faults = FaultLog(self.dir / "faults.jsonl")
        # unix socket paths are short (~107 bytes): the server's directory lives in /tmp
        self.redis_dir = Path(tempfile.mkdtemp(prefix="flc-"))
        self.redis: EmbeddedRedis | None = None
        self.db_name = f"chaos_{index}_{'on' if fencing else 'off'}"
        self.dsn = ""
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.proxies: list[Proxy] = []
        self.produced: dict[str, list[str]] = {}
        self.notes: list[str] = []
        self.start_t = time.monotonic_ns()
        self.deadline = time.monotonic() + settings.run_timeout
        self.extra_ttl_ns = 0
        self._standin: dict[str, bool] = {}

    # -- setup ------------------------------------------------------------------------------

    def start_redis(self, persistence: bool = False) -> EmbeddedRedis:
        self.redis = EmbeddedRedis(self.s.redis_binary, directory=self.redis_dir, persistence=persistence)
        self.redis.start()
        return self.redis

    def setup(self, files: int | None = None, lines: int | None = None, persistence: bool = False) -> None:
        """Start the lock server, create the database (demo schema + commit log), produce files."""
        self.start_redis(persistence)
        self.dsn = self.pg.create_db(self.db_name)
        ensure_schema(self.dsn)
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            for stmt in INSTRUMENT:
                conn.execute(stmt)
        self.produced = produce_files(self.share, files or self.s.files, lines or self.s.lines, self.s.seed)
        self.start_t = time.monotonic_ns()

    @property
    def lock_url(self) -> str:
        assert self.redis is not None
        return f"{self.redis.url}?socket_timeout=1&socket_connect_timeout=1"

    def proxy(self, upstream: Upstream, name: str) -> Proxy:
        p = Proxy(upstream, name=name, max_lifetime=self.s.run_timeout + 60).start()
        self.proxies.append(p)
        return p

    def lock_proxy(self, name: str) -> tuple[Proxy, str]:
        """A proxy in front of the lock server, and the lock URL through it."""
        assert self.redis is not None
        p = self.proxy(("unix", str(self.redis.socket)), name)
        return p, f"redis://127.0.0.1:{p.port}?socket_timeout=0.5&socket_connect_timeout=0.5"

    def db_proxy(self, name: str) -> tuple[Proxy, str]:
        """A proxy in front of PostgreSQL's loopback TCP port, and the database URL through it."""
        assert self.pg.tcp_port is not None
        p = self.proxy(("tcp", "127.0.0.1", self.pg.tcp_port), name)
        return p, self.pg.tcp_dsn(self.db_name, p.port) + "?connect_timeout=5"

    # -- consumers --------------------------------------------------------------------------

    def consumer(self, proc: str, *, lock_url: str | None = None, db_url: str | None = None,
                 ttl: float | None = None, renew: bool = True, pause_before_write: float = 0.0,
                 pause_before_archive: float = 0.0, max_files: int | None = None, idle_exit: float = 3.0,
                 env: dict[str, str] | None = None, standin: bool = False) -> subprocess.Popen[bytes]:
        """Start one consumer process: the demo's ``fencelock consume``, or the stand-in (when
        ``Settings.consumer`` says so, or ``standin=True`` for this one process)."""
        args = [
            "--share", str(self.share), "--lock", lock_url or self.lock_url, "--db", db_url or self.dsn,
            "--history", str(self.hist_dir / f"{proc}.jsonl"),
            "--fencing" if self.fencing else "--no-fencing",
            "--pause-before-write", str(pause_before_write), "--ttl", str(ttl or self.s.ttl),
            "--renew" if renew else "--no-renew", "--idle-exit", str(idle_exit), "--id", proc,
        ]
        if max_files is not None:
            args += ["--max-files", str(max_files)]
        if self.kind(standin) == "demo":
            # a consumer may be started while the lock server is frozen on purpose (scenario 5: two
            # TTLs): its start-up check must outwait that, not exit 3
            args += ["--poll", "0.05", "--start-timeout", str(max(10.0, 4 * (ttl or self.s.ttl)))]
            if pause_before_archive:  # the demo's (hidden) hook between commit and archive
                args += ["--pause-after-commit", str(pause_before_archive)]
            cmd = [sys.executable, "-m", "fencelock.cli", "consume", *args]
        else:
            args += ["--pause-before-archive", str(pause_before_archive),
                     "--max-runtime", str(self.s.run_timeout)]
            cmd = [sys.executable, "-m", "fencelock_chaos.standin", "consume", *args]
        full_env = dict(os.environ, PYTHONUNBUFFERED="1")
        full_env.update(env or {})
        log = open(self.logs / f"{proc}.log", "ab")  # the child has its own copy; ours is closed below
        try:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=full_env)
        finally:
            log.close()
        self.procs[proc] = p
        self._standin[proc] = self.kind(standin) == "standin"
        return p

    def spawn(self, proc: str, cmd: Sequence[str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{proc}.log", "ab")
        try:
            p = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 env=dict(os.environ, PYTHONUNBUFFERED="1"))
        finally:
            log.close()
        self.procs[proc] = p
        return p

    def kind(self, standin: bool = False) -> str:
        """Which consumer runs: ``demo`` or ``standin``."""
        if standin or self.s.consumer == "standin":
            return "standin"
        if self.s.consumer == "demo" or demo_consumer_available():
            return "demo"
        return "standin"

    # -- observing --------------------------------------------------------------------------

    def wait_window(self, proc: str, timeout: float | None = None) -> Event:
        """Wait until ``proc`` has passed its lease check and sits in its pause-before-write hook;
        returns the event that says so (its ``file`` is the file being worked on).

        The stand-in logs ``write invoke`` right after ``ensure_held()``, before the hook. The demo
        logs it after the hook, so for the demo the signal is ``acquire ok``: its lease check follows
        within microseconds, and the harness waits 0.15 s more (every hook used here is longer).
        """
        if self.kind() == "standin" or self._standin.get(proc, False):
            return self.wait_op(proc, "write", "invoke", timeout=timeout)
        e = self.wait_op(proc, "acquire", "ok", timeout=timeout)
        time.sleep(0.15)
        return e

    def events(self) -> list[Event]:
        return read_events(sorted(self.hist_dir.glob("*.jsonl")))

    def wait_for(self, what: str, pred: Callable[[Event], bool], timeout: float | None = None) -> Event:
        """The first history event matching ``pred``; ``ScenarioError`` after ``timeout`` s."""
        end = time.monotonic() + (timeout or self.s.step_timeout)
        while time.monotonic() < min(end, self.deadline):
            for e in self.events():
                if pred(e):
                    return e
            time.sleep(0.02)
        raise ScenarioError(f"timed out waiting for {what}")

    def wait_op(self, proc: str, op: str, type_: str, file: str | None = None,
                timeout: float | None = None) -> Event:
        return self.wait_for(
            f"{proc} {op} {type_}{' on ' + file if file else ''}",
            lambda e: e.proc == proc and e.op == op and e.type == type_ and (file is None or e.file == file),
            timeout)

    def wait_write_result(self, proc: str, file: str, timeout: float | None = None) -> Event:
        return self.wait_for(f"{proc}'s write result on {file}",
                             lambda e: e.proc == proc and e.op == "write" and e.file == file
                             and e.type in ("ok", "fail", "unknown"), timeout)

    def ensure_not_written(self, proc: str, file: str) -> None:
        """The fault must strike before ``proc``'s write: if its write already has a result (the
        machine was too slow for the hook's margin), say so instead of passing vacuously."""
        for e in self.events():
            if e.proc == proc and e.op == "write" and e.file == file and e.type != "invoke":
                raise ScenarioError(f"struck too late: {proc}'s write on {file} had already ended ({e.type})")

    def ensure_successor_first(self, successor: str, stale: str, file: str) -> None:
        """The successor's write must have ended before the stale holder's (what the scenario
        arranges); if the machine was too slow for that, say so instead of passing vacuously."""
        evs = self.events()
        ok = [e.t for e in evs if e.proc == successor and e.op == "write" and e.file == file and e.type == "ok"]
        res = [e.t for e in evs if e.proc == stale and e.op == "write" and e.file == file and e.type != "invoke"]
        if not ok or not res or min(ok) > min(res):
            raise ScenarioError(f"out of order: {successor}'s write on {file} did not end before {stale}'s")

    def successor_overtakes(self, stale: str, file: str, successor: str = "B", timeout: float | None = None,
                            **consumer: Any) -> Event:
        """The end of most scenarios: ``successor`` starts, takes ``file`` over and writes it; then
        the ``stale`` holder's write ends (the harness checks whether the storage refused it), and
        the successor's write must have ended first. Returns the stale write's result."""
        self.consumer(successor, **consumer)
        self.wait_op(successor, "write", "ok", file, timeout)
        res = self.wait_write_result(stale, file, timeout)
        self.ensure_successor_first(successor, stale, file)
        return res

    def wait_exit(self, proc: str, timeout: float | None = None) -> int | None:
        p = self.procs[proc]
        try:
            return p.wait(min(timeout or self.s.step_timeout, max(0.1, self.deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            return None

    def wait_all(self, timeout: float | None = None) -> None:
        """Wait for every consumer to finish by itself (idle exit); stop stragglers by pid."""
        end = time.monotonic() + (timeout or self.s.step_timeout * 2)
        for name, p in self.procs.items():
            left = max(0.1, min(end, self.deadline) - time.monotonic())
            try:
                p.wait(left)
            except subprocess.TimeoutExpired:
                self.notes.append(f"{name} did not exit by itself; stopped by the harness")
                stop_pid(p)

    # -- faults -----------------------------------------------------------------------------

    def pid(self, proc: str) -> int:
        return self.procs[proc].pid

    def sigstop(self, proc: str) -> None:
        pid = self.pid(proc)
        os.kill(pid, signal.SIGSTOP)
        state = _wait_state(pid, "T")
        self.faults.start("sigstop", proc, f"SIGSTOP pid {pid}; /proc state {state}")
        if state != "T":
            raise ScenarioError(f"SIGSTOP of {proc} did not take effect (state {state})")

    def sigcont(self, proc: str) -> None:
        pid = self.pid(proc)
        os.kill(pid, signal.SIGCONT)
        self.faults.end("sigstop", proc, f"SIGCONT pid {pid}")

    def sigkill(self, proc: str, detail: str = "") -> None:
        p = self.procs[proc]
        p.kill()
        rc = p.wait(10)
        self.faults.point("sigkill", proc, f"SIGKILL pid {p.pid} {detail}; exit status {rc}".strip())
        if rc != -signal.SIGKILL:
            raise ScenarioError(f"{proc} was not killed by SIGKILL (status {rc}): it had already exited")

    def lock_keys(self, file: str) -> Any:
        from fencelock.backends.redis import DEFAULT_PREFIX, RedisKeys

        return RedisKeys(DEFAULT_PREFIX, f"file:{file}")

    def admin(self) -> Any:
        assert self.redis is not None
        return self.redis.client(socket_timeout=5)

    # -- the end ----------------------------------------------------------------------------

    def storage(self) -> Storage:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            commits = [Commit(int(seq), str(res), None if f is None else int(f), str(w), int(n))
                       for seq, res, f, w, n in conn.execute(
                           "SELECT seq, resource, fence, writer, rows FROM chaos_commits ORDER BY seq").fetchall()]
            counts = {str(tx): int(n) for tx, n in conn.execute(
                "SELECT transaction_id, count(*) FROM demo_transactions GROUP BY transaction_id").fetchall()}
        return Storage(commits=commits, rejections=[], row_counts=counts)

    def result(self, started: float, error: str | None) -> RunResult:
        end_t = time.monotonic_ns()
        events = self.events()
        faults = read_faults(self.faults.path)
        storage = Storage()
        violations: list[Violation] = []
        if self.dsn:
            try:
                storage = self.storage()
            except Exception as err:  # the database is part of the evidence: say it is missing
                error = error or f"reading the database failed: {err!r}"
        ttl_ns = int(self.s.ttl * 1e9) + self.extra_ttl_ns
        if error is None:
            facts = RunFacts(self.produced, ttl_ns, int(self.s.done_bound * 1e9), self.start_t, end_t)
            violations = check(events, faults, storage, facts)
        return RunResult(self.scenario, self.fencing, violations, events, faults, storage, self.produced,
                         self.start_t, end_t, time.monotonic() - started, error, self.notes, str(self.dir), ttl_ns)

    def close(self) -> None:
        for p in self.procs.values():
            stop_pid(p)
        for proxy in self.proxies:
            proxy.stop()
        if self.redis is not None:
            self.redis.stop()
        shutil.rmtree(self.redis_dir, ignore_errors=True)
        if self.dsn:
            with contextlib.suppress(Exception):
                import psycopg

                with psycopg.connect(self.pg.dsn("postgres"), autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')


def _wait_state(pid: int, want: str, timeout: float = 2.0) -> str:
    """The process state letter from /proc (``T`` stopped), waiting up to ``timeout`` s for ``want``."""
    end = time.monotonic() + timeout
    state = "?"
    while time.monotonic() < end:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return "gone"
        state = stat[stat.rindex(")") + 2]
        if state == want:
            return state
        time.sleep(0.005)
    return state


@contextlib.contextmanager
def postgres() -> Iterator[Postgres]:
    pg = Postgres()
    try:  # also when start() itself is interrupted: its temporary folder goes too
        pg.start()
        yield pg
    finally:
        with cleanup_shield():
            pg.stop()


@dataclass
class Verdict:
    """A scenario's two runs and what they prove."""

    name: str
    number: str
    title: str
    expect_off: frozenset[str]
    off_informational: bool = False  # the long tier: what fencing-off breaks there is random
    on: RunResult | None = None
    off: RunResult | None = None
    blocked: str | None = None

    @property
    def ok_on(self) -> bool:
        return self.on is not None and self.on.error is None and not self.on.violations

    @property
    def ok_off(self) -> bool:
        """The fencing-off run shows what it must: the expected violation, or none if none is expected."""
        if self.off is None or self.off.error is not None:
            return False
        if self.off_informational:
            return True
        if self.expect_off:
            return bool(self.off.invariants() & self.expect_off)
        return not self.off.violations

    @property
    def passed(self) -> bool:
        return self.blocked is None and self.ok_on and self.ok_off


def run_once(scenario: Any, fencing: bool, settings: Settings, pg: Postgres, out: Path, index: int) -> RunResult:
    """Run one scenario in one mode; never raises for a scenario failure (it is in ``error``)."""
    started = time.monotonic()
    run = Run(scenario.name, fencing, settings, pg, out, index)
    error: str | None = None
    try:  # the `finally` also runs for a signal that ends the harness (Terminated)
        try:
            run.setup(files=scenario.files, persistence=scenario.persistence)
            scenario.run(run)
        except ScenarioError as err:
            error = str(err)
        except Exception as err:  # a harness bug must not hide behind a verdict
            error = f"{type(err).__name__}: {err}"
        for p in run.procs.values():
            stop_pid(p)
        return run.result(started, error)
    finally:
        with cleanup_shield():
            run.close()


def run_scenario(scenario: Any, settings: Settings, pg: Postgres, out: Path, index: int,
                 modes: Sequence[bool] = (True, False)) -> Verdict:
    v = Verdict(scenario.name, scenario.number, scenario.title, scenario.expect_off,
                getattr(scenario, "off_informational", False))
    blocked = scenario.blocked() if scenario.blocked is not None else None
    if blocked:
        v.blocked = blocked
        return v
    for fencing in modes:
        res = run_once(scenario, fencing, settings, pg, out, index)
        if fencing:
            v.on = res
        else:
            v.off = res
    return v
