"""STAND-IN consumer, producer and racing writer for the chaos harness.

This is *not* the demo system (``fencelock_demo``); it is the smallest consumer that follows the
same contract, so that the harness can inject faults at points the demo does not expose (between
commit and archive, a writer that holds its transaction open, a leader elected per file). The
runner uses the demo's ``fencelock consume`` by default (``--consumer demo``); see ``runner.py``.

It writes the demo's tables (``demo_transactions``, ``demo_files``, ``fencelock_fences``) the demo's
way: one transaction per file, ``fencelock.fencing.admit`` first (with ``--fencing``), rows inserted
``ON CONFLICT (transaction_id) DO NOTHING``, the per-file ledger row upserted (last commit wins).
Without ``--fencing`` it is the post's design: the lease token protects release, nothing protects
the data.

    python -m fencelock_chaos.standin consume --share DIR --lock URL --db URL --history PATH \\
        --fencing --pause-before-write 0.5 --ttl 1.5 --renew --max-files 1 --idle-exit 3 --id c1

History lines: see ``fencelock_chaos.history``. Order of one file's events: ``acquire invoke/ok``,
``renew ...`` (from the renewal thread), ``write invoke`` (after ``ensure_held()``), the
``--pause-before-write`` hook, ``write ok/fail/unknown``, the ``--pause-before-archive`` hook, the
archive (rename into ``.archive/``), ``release invoke/ok/fail``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import random
import string
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

__all__ = ["ARCHIVE", "SCHEMA", "ensure_schema", "main", "produce_files", "read_rows"]

ARCHIVE = ".archive"

# The demo's tables (fencelock_demo.store), for when that module is not importable.
SCHEMA = [
    """CREATE TABLE IF NOT EXISTS demo_transactions (
        transaction_id TEXT PRIMARY KEY, owner TEXT NOT NULL, account_number TEXT NOT NULL,
        card_number TEXT NOT NULL, currency TEXT NOT NULL, amount_cents BIGINT NOT NULL,
        merchant TEXT NOT NULL, tx_date DATE NOT NULL, line_no INTEGER NOT NULL, file TEXT NOT NULL,
        fence BIGINT, consumer TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS demo_files (
        name TEXT PRIMARY KEY, rows INTEGER NOT NULL, amount_cents BIGINT NOT NULL, fence BIGINT,
        consumer TEXT NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS fencelock_fences (resource TEXT PRIMARY KEY, fence BIGINT NOT NULL)",
]

_COLUMNS = ("transaction_id, owner, account_number, card_number, currency, amount_cents, merchant, tx_date, "
            "line_no, file, fence, consumer")

Row = tuple[str, str, str, str, str, int, str, str, int]


def ensure_schema(dsn: str) -> None:
    """Create the demo's tables: with the demo's own ``setup()`` when it is importable."""
    try:
        from fencelock_demo.store import open_store
    except ImportError:
        open_store = None  # type: ignore[assignment]
    if open_store is not None:
        store = open_store(dsn)
        try:
            store.setup()
        finally:
            store.close()
        return
    import psycopg

    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        for stmt in SCHEMA:
            conn.execute(stmt)


# -- producing ----------------------------------------------------------------------------------

_NAMES = "Ana Silva|Bruno Costa|Chen Wei|Dmitri Ivanov|Emma Brown|Fatima Haddad|Grace Kim|Hugo Rossi".split("|")
_SHOPS = "Padaria Real|SuperMart|Café Central|Uber *Trip|Lidl Sagt Danke|Booking.com|7-Eleven 2231".split("|")
_CCY = ("USD", "EUR", "BRL", "GBP", "JPY")


def produce_files(share: Path, files: int, lines: int, seed: int, prefix: str = "f",
                  batch: int = 0) -> dict[str, list[str]]:
    """Write ``files`` files of ``lines`` transactions (the demo's 8-field format) atomically
    (temp file in ``.tmp/``, then rename). Returns file -> its TransactionIds. Same seed, same bytes.
    Batches (``batch`` < 36, with their own ``prefix``) of one run never share a TransactionId."""
    rng = random.Random(seed * 1000 + batch)
    tmp = share / ".tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    alphabet = string.ascii_uppercase + string.digits
    run = "".join(random.Random(seed).choice(alphabet) for _ in range(2)) + alphabet[batch % 36]
    out: dict[str, list[str]] = {}
    counter = 0
    for i in range(files):
        name = f"{prefix}-{i:04d}.tsv"
        ids: list[str] = []
        body: list[str] = []
        for _ in range(lines):
            counter += 1
            tx = run + f"{counter:07d}"
            ids.append(tx)
            day = _dt.date(2024, 1, 1) + _dt.timedelta(days=rng.randrange(366))
            body.append("\t".join((
                tx, rng.choice(_NAMES), f"AC{rng.randrange(10**8):08d}", f"4{rng.randrange(10**15):015d}",
                rng.choice(_CCY), str(rng.randrange(1, 10**7)), rng.choice(_SHOPS), day.strftime("%Y%m%d"))))
        path = tmp / name
        path.write_text("\n".join(body) + "\n", encoding="utf-8")
        os.replace(path, share / name)
        out[name] = ids
    return out


def read_rows(path: Path) -> list[Row]:
    """Parse one file (8 tab-separated fields a line); the chaos data has no bad lines."""
    rows: list[Row] = []
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        tx, owner, account, card, ccy, amount, shop, date = line.split("\t")
        iso = f"{date[:4]}-{date[4:6]}-{date[6:]}"
        rows.append((tx, owner, account, card, ccy, int(amount), shop, iso, no))
    return rows


# -- consuming ----------------------------------------------------------------------------------


def _sleep(seconds: float) -> None:
    """Sleep without ``time.sleep``: under libfaketime 0.9.10 with FAKETIME_DONT_FAKE_MONOTONIC=1,
    ``time.sleep`` fails with EINVAL (its ``clock_nanosleep`` on CLOCK_MONOTONIC); ``Event.wait`` works."""
    threading.Event().wait(seconds)


class _Renewer:
    """Extends one lease every ``interval`` s and records each round in the history."""

    def __init__(self, lease: Any, hist: Any, file: str, interval: float) -> None:
        self.lease = lease
        self.hist = hist
        self.file = file
        self.interval = interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"renew-{file}")
        self.thread.start()

    def _run(self) -> None:
        from fencelock import BackendError, LeaseError

        for _ in range(100_000):  # bounded; ends long before on release or loss
            if self.stop.wait(self.interval) or self.lease.lost:
                return
            self.hist.record("renew", "invoke", file=self.file, fence=self.lease.fence)
            try:
                self.lease.extend()
            except LeaseError as err:
                self.hist.record("renew", "fail", file=self.file, fence=self.lease.fence, error=repr(err))
                return
            except BackendError as err:
                self.hist.record("renew", "fail", file=self.file, fence=self.lease.fence, error=repr(err))
                continue
            if self.stop.is_set():
                return
            self.hist.record("renew", "ok", file=self.file, fence=self.lease.fence)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def _write(conn: Any, rows: Sequence[Row], file: str, fence: int, consumer: str, fencing_on: bool,
           hold: float = 0.0, staged: Path | None = None) -> None:
    """One transaction for the whole file: the fence check first, rows, ledger row, commit."""
    from fencelock import fencing

    with conn.transaction():
        if fencing_on:
            fencing.admit(conn, file, fence)
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO demo_transactions ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (transaction_id) DO NOTHING",
                [(*r, file, fence, consumer) for r in rows],
            )
            cur.execute(
                "INSERT INTO demo_files (name, rows, amount_cents, fence, consumer) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (name) DO UPDATE SET rows = excluded.rows, amount_cents = excluded.amount_cents, "
                "fence = excluded.fence, consumer = excluded.consumer",
                (file, len(rows), sum(r[5] for r in rows), fence, consumer),
            )
        if staged is not None:
            staged.touch()
        if hold > 0:
            _sleep(hold)


def _classify(err: BaseException) -> str:
    """``fail`` when the write certainly did not commit, ``unknown`` when it may have."""
    import psycopg

    from fencelock import StaleFence

    if isinstance(err, StaleFence):
        return "fail"
    if isinstance(err, psycopg.OperationalError):
        return "unknown"  # the connection broke: the COMMIT may or may not have been applied
    return "fail"


@click.group()
def main() -> None:
    """STAND-IN consumer for the chaos harness (see the module docstring)."""


def _run_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options every stand-in command takes: where the files, the lock, the database and the
    history are, fencing on or off, the pause before the write (the chaos hook) and the lease length."""
    for option in reversed((
        click.option("--share", type=click.Path(path_type=Path), required=True),
        click.option("--lock", "lock_url", required=True),
        click.option("--db", "db_url", required=True),
        click.option("--history", type=click.Path(path_type=Path), required=True),
        click.option("--fencing/--no-fencing", default=True),
        click.option("--pause-before-write", type=float, default=0.0),
        click.option("--ttl", type=float, default=2.0),
    )):
        command = option(command)
    return command


def _release(hist: Any, name: str, lease: Any) -> None:
    """Release ``lease`` and record it: ok, fail (the lease was no longer ours: a ``LeaseError``),
    or unknown (the lock server did not answer)."""
    from fencelock import FenceLockError, LeaseError

    hist.record("release", "invoke", file=name, fence=lease.fence)
    try:
        lease.release()
        hist.record("release", "ok", file=name, fence=lease.fence)
    except LeaseError as err:
        hist.record("release", "fail", file=name, fence=lease.fence, error=repr(err))
    except FenceLockError as err:
        hist.record("release", "unknown", file=name, fence=lease.fence, error=repr(err))


@main.command()
@_run_options
@click.option("--pause-before-archive", type=float, default=0.0)
@click.option("--renew/--no-renew", default=True)
@click.option("--max-files", type=int, default=1_000_000)
@click.option("--idle-exit", type=float, default=3.0)
@click.option("--max-runtime", type=float, default=300.0)
@click.option("--id", "proc_id", required=True)
def consume(share: Path, lock_url: str, db_url: str, history: Path, fencing: bool, pause_before_write: float,
            pause_before_archive: float, ttl: float, renew: bool, max_files: int, idle_exit: float,
            max_runtime: float, proc_id: str) -> None:
    """Take files from the share one at a time under a lock and persist their rows."""
    import psycopg

    from fencelock import BackendError, Lock
    from fencelock.backends import open_backend

    from .history import HistoryWriter

    hist = HistoryWriter(history, proc_id)
    backend, _ = open_backend(lock_url)
    conn = psycopg.connect(db_url, autocommit=True, connect_timeout=10)
    archive = share / ARCHIVE
    archive.mkdir(exist_ok=True)
    started = time.monotonic()
    hard_end = started + max_runtime
    last_work = started
    done = 0

    def on_lost(lease: Any) -> None:
        hist.record("lease-lost", "ok", file=lease.name.removeprefix("file:"), fence=lease.fence,
                    error=lease.lost_reason or "")

    try:
        while done < max_files and time.monotonic() < hard_end and time.monotonic() - last_work < idle_exit:
            names = sorted(p.name for p in share.iterdir() if p.is_file() and not p.name.startswith("."))
            took = False
            for name in names:
                lock = Lock(f"file:{name}", backend, ttl=ttl, renew=False, timeout=0, on_lost=on_lost,
                            label=proc_id)
                sent = time.monotonic_ns()
                try:
                    lease = lock.try_acquire()
                except BackendError as err:
                    hist.record("acquire", "fail", file=name, error=repr(err))
                    _sleep(0.1)
                    continue
                if lease is None:
                    continue
                hist.record("acquire", "invoke", file=name, t=sent)
                hist.record("acquire", "ok", file=name, fence=lease.fence)
                took = True
                renewer = _Renewer(lease, hist, name, ttl / 3) if renew else None
                try:
                    _process(share / name, archive, lease, conn, hist, proc_id, fencing,
                             pause_before_write, pause_before_archive)
                finally:
                    if renewer is not None:
                        renewer.close()
                    _release(hist, name, lease)
                done += 1
                last_work = time.monotonic()
                break
            if not took:
                _sleep(0.05)
    finally:
        conn.close()
        hist.close()


def _process(path: Path, archive: Path, lease: Any, conn: Any, hist: Any, proc_id: str, fencing_on: bool,
             pause_before_write: float, pause_before_archive: float) -> None:
    from fencelock import LeaseError

    name = path.name
    try:
        rows = read_rows(path)
    except FileNotFoundError:  # archived by the previous holder after our listing
        return
    try:
        lease.ensure_held()
    except LeaseError:
        return  # lease-lost is in the history (callback)
    hist.record("write", "invoke", file=name, fence=lease.fence, rows=len(rows))
    if pause_before_write > 0:  # the hook: between the lease check and the write
        _sleep(pause_before_write)
    try:
        _write(conn, rows, name, lease.fence, proc_id, fencing_on)
    except Exception as err:
        hist.record("write", _classify(err), file=name, fence=lease.fence, rows=len(rows), error=repr(err))
        return
    hist.record("write", "ok", file=name, fence=lease.fence, rows=len(rows))
    if pause_before_archive > 0:  # the hook: between the commit and the archive
        _sleep(pause_before_archive)
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, archive / name)


@main.command()
@_run_options
@click.option("--file", "name", required=True)
@click.option("--campaign-timeout", type=float, default=60.0)
@click.option("--id", "proc_id", required=True)
def lead(share: Path, name: str, lock_url: str, db_url: str, history: Path, fencing: bool,
         pause_before_write: float, ttl: float, campaign_timeout: float, proc_id: str) -> None:
    """Campaign in the election of FILE; once leader, write the file's rows with the term as the
    fence (the demo's tables), then resign. Its lease renews in the background while it leads."""
    import psycopg

    from fencelock import Election

    from .history import HistoryWriter

    hist = HistoryWriter(history, proc_id)
    conn = psycopg.connect(db_url, autocommit=True, connect_timeout=10)
    archive = share / ARCHIVE
    archive.mkdir(exist_ok=True)

    def on_lost(lease: Any) -> None:
        hist.record("lease-lost", "ok", file=name, fence=lease.fence, error=lease.lost_reason or "")

    election = Election(f"leader:{name}", lock_url, value=proc_id, ttl=ttl, on_lost=on_lost)
    try:
        hist.record("acquire", "invoke", file=name)
        lease = election.campaign(timeout=campaign_timeout)
        hist.record("acquire", "ok", file=name, fence=lease.fence)
        try:
            _process(share / name, archive, lease, conn, hist, proc_id, fencing, pause_before_write, 0.0)
        finally:
            _release(hist, name, lease)
    finally:
        election.close()
        conn.close()
        hist.close()


@main.command()
@click.option("--share", type=click.Path(path_type=Path), required=True)
@click.option("--file", "name", required=True)
@click.option("--fence", type=int, required=True)
@click.option("--db", "db_url", required=True)
@click.option("--history", type=click.Path(path_type=Path), required=True)
@click.option("--fencing/--no-fencing", default=True)
@click.option("--after-file", type=click.Path(path_type=Path), help="begin the write once this file exists")
@click.option("--staged-file", type=click.Path(path_type=Path),
              help="create this file once the write is in the open transaction (before --hold and COMMIT)")
@click.option("--hold", type=float, default=0.0, help="seconds to hold the transaction open before COMMIT")
@click.option("--via", type=click.Choice(["demo", "standin"]), default="demo",
              help="whose write path: the demo's store (fencelock_demo.consumer.ingest) or the stand-in's")
@click.option("--id", "proc_id", required=True)
def write(share: Path, name: str, fence: int, db_url: str, history: Path, fencing: bool, after_file: Path | None,
          staged_file: Path | None, hold: float, via: str, proc_id: str) -> None:
    """One fenced write of one file at a given instant (two of these race at the storage)."""
    from .history import HistoryWriter

    hist = HistoryWriter(history, proc_id)
    rows = read_rows(share / name)
    data = (share / name).read_bytes()
    try:
        if via == "demo":
            from fencelock_demo.consumer import ingest
            from fencelock_demo.store import open_store

            store = open_store(db_url)
            store.setup()

            def run() -> None:
                ingest(store, lambda: [data], name, fence, proc_id, check_fence=fencing)
                if staged_file is not None:
                    staged_file.touch()
                if hold > 0:  # the transaction is open: the fence row and the ledger row are locked
                    _sleep(hold)
                store.commit()

            closer = store.close
        else:
            import psycopg

            conn = psycopg.connect(db_url, autocommit=True, connect_timeout=10)

            def run() -> None:
                _write(conn, rows, name, fence, proc_id, fencing, hold=hold, staged=staged_file)

            closer = conn.close
        try:
            if after_file is not None:
                for _ in range(6000):  # at most 60 s
                    if after_file.exists():
                        break
                    _sleep(0.01)
            hist.record("write", "invoke", file=name, fence=fence, rows=len(rows))
            try:
                run()
            except Exception as err:
                hist.record("write", _classify(err), file=name, fence=fence, rows=len(rows), error=repr(err))
                sys.exit(3)
            hist.record("write", "ok", file=name, fence=fence, rows=len(rows))
        finally:
            closer()
    finally:
        hist.close()


if __name__ == "__main__":
    main()
