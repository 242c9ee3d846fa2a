"""``fencelock produce``, ``fencelock consume`` and ``fencelock demo`` (plugged into the ``fencelock``
command through the ``fencelock.commands`` entry point: ``COMMANDS`` below)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from fencelock.backends import url_help

__all__ = ["COMMANDS", "consume", "demo", "produce"]


@click.command(epilog="""\b
Exit status:
  0      every file written
  3      cannot write to the share (the cause is on screen)
  64     bad usage (options, arguments)
  128+N  stopped by signal N (SIGINT, SIGTERM, SIGHUP); no partial file is left behind""")
@click.option("--share", required=True, type=click.Path(file_okay=False, path_type=Path), help="The shared folder.")
@click.option("--files", default=10, show_default=True, type=click.IntRange(0), help="How many files to write.")
@click.option("--lines", default=10_000, show_default=True, type=click.IntRange(1), help="Transactions per file.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True),
              help="Files per second (default: as fast as possible).")
@click.option("--seed", type=int, help="Seed: the same seed writes the same files, byte for byte.")
@click.option("--bad", default=0, show_default=True, type=click.IntRange(0),
              help="Make this many of the files bad on purpose (one broken line each), to see quarantine.")
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path),
              help="Append one JSON line per file written (name, rows, sum of amounts, bad).")
def produce(share: Path, files: int, lines: int, rate: float | None, seed: int | None, bad: int,
            manifest: Path | None) -> None:
    """Write transaction files into SHARE, each atomically (hidden temporary name, fsync, rename).

    Format: no header, one transaction a line, 8 tab-separated fields: TransactionId (10
    alphanumerics), Owner, AccountNumber, CardNumber, Currency (ISO 4217), Amount (integer cents),
    MerchantName, Date (yyyyMMdd).
    """
    from fencelock._cli_ops import Terminated, ended_by_signals, plural, say

    from .producer import ProducerConfig
    from .producer import produce as run

    written = [0]
    try:
        with ended_by_signals():
            run(ProducerConfig(share, files, lines, rate, seed, bad, manifest),
                on_file=lambda: written.__setitem__(0, written[0] + 1))
    except Terminated as stop:
        say(f"fencelock produce: stopped by {stop.signame} after {plural(written[0], 'file')} "
            f"(no partial file left in {share})")
        sys.exit(stop.exit_code)
    except OSError as err:  # a share that cannot be created or written: not a traceback
        why = err.strerror or str(err)
        where = f" ({err.filename})" if err.filename and str(err.filename) != str(share) else ""
        say(f"fencelock produce: cannot write to the share {share}: {why}{where}, after "
            f"{plural(written[0], 'file')}")
        sys.exit(3)
    click.echo(f"produced {plural(written[0], 'file')} of {plural(lines, 'line')} in {share}", err=True)


@click.command(epilog="""\b
Exit status:
  0   stopped normally (--idle-exit, --max-files, or SIGTERM/SIGINT/SIGHUP after the
      current file; a second signal stops at once, releasing the lock)
  1   stopped by an unexpected error (logged)
  3   could not start: lock server (within --start-timeout), database or share unavailable
  4   --workers N: at least one worker process did not exit with 0
  64  bad usage (options, arguments, --lock or --db URL, a missing driver such as psycopg)
""")
@click.option("--share", required=True, type=click.Path(file_okay=False), help="The shared folder.")
@click.option("--lock", "lock_url", required=True, help=f"Lock server URL ({url_help()}).")
@click.option("--db", required=True, help="Database: sqlite:///path/demo.db (or a path) or postgresql://...")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1), help="Consumer processes.")
@click.option("--id", "ident", default="", help="Consumer id in logs and the history (default host:pid).")
@click.option("--history", type=click.Path(dir_okay=False),
              help="Append one JSON line per operation step (for the fault harness). O_APPEND: shareable.")
@click.option("--fencing/--no-fencing", default=True, show_default=True,
              help="Check the fence at the database. --no-fencing shows what goes wrong without it.")
@click.option("--pause-before-write", default=0.0, type=click.FloatRange(0), metavar="SECONDS",
              help="Test hook: sleep after lease.ensure_held() and before the write.")
@click.option("--pause-mid-write", default=0.0, type=click.FloatRange(0), hidden=True)
@click.option("--pause-after-commit", default=0.0, type=click.FloatRange(0), hidden=True)
@click.option("--ttl", default=30.0, show_default=True, type=click.FloatRange(0.01), help="Lease length (s).")
@click.option("--renew/--no-renew", default=True, show_default=True, help="Renew the lease while working.")
@click.option("--max-files", type=click.IntRange(1), help="Stop after this many files (per worker).")
@click.option("--idle-exit", type=click.FloatRange(0), metavar="SECONDS",
              help="Exit once the share has had no waiting file for this long.")
@click.option("--archive/--remove", default=True, show_default=True,
              help="After the commit, move the file to SHARE/done/ or delete it.")
@click.option("--poll", default=0.2, show_default=True, type=click.FloatRange(0.01), help="Seconds between looks.")
@click.option("--start-timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 3600), metavar="SECONDS",
              help="Before any worker starts, wait at most this long for the lock server to answer; then exit 3.")
def consume(share: str, lock_url: str, db: str, workers: int, ident: str, history: str | None, fencing: bool,
            pause_before_write: float, pause_mid_write: float, pause_after_commit: float, ttl: float,
            renew: bool, max_files: int | None, idle_exit: float | None, archive: bool, poll: float,
            start_timeout: float) -> None:
    """Compete for files in SHARE and persist each one exactly once.

    One lock per file (file:<name>); all rows of a file in one transaction guarded by the fence;
    the file is archived only after the commit. Files with a bad line go to SHARE/quarantine/ with
    <file>.reason.txt naming each bad line.
    """
    from fencelock import ConfigurationError
    from fencelock._cli_ops import EXIT_USAGE

    from .consumer import EXIT_UNAVAILABLE, ConsumerConfig, check_config, check_lock_server, run_workers

    cfg = ConsumerConfig(
        share=share, lock=lock_url, db=db, id=ident, history=history, fencing=fencing,
        pause_before_write=pause_before_write, pause_mid_write=pause_mid_write,
        pause_after_commit=pause_after_commit, ttl=ttl, renew=renew, max_files=max_files,
        idle_exit=idle_exit, archive=archive, poll=poll,
    )
    try:
        check_config(cfg)
    except ConfigurationError as err:
        click.echo(f"fencelock consume: {err}", err=True)
        sys.exit(EXIT_USAGE)
    # One round trip before any worker starts: a lock server that is not there is one line and
    # exit 3 within seconds, not a consumer logging "lock server error" for every file forever.
    unavailable = check_lock_server(cfg.lock, start_timeout)
    if unavailable is not None:
        click.echo(f"fencelock consume: {unavailable}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    sys.exit(run_workers(cfg, workers))


@click.command(epilog="""\b
Exit status:
  0      every produced row is in the database exactly once (and every bad file is in
         quarantine with its reason)
  1      the check failed
  3      could not start, or lost, the lock server or the database (the cause is on screen)
  64     bad usage (options, --lock or --db URL)
  128+N  stopped by signal N (SIGINT, SIGTERM, SIGHUP): every process it started is stopped""")
@click.option("--work", default="./demo-work", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Work folder: share, SQLite database, manifest, history (emptied at start; a folder that is "
              "not new, empty or made by an earlier demo is refused).")
@click.option("--consumers", default=4, show_default=True, type=click.IntRange(1), help="Consumer processes.")
@click.option("--files", default=20, show_default=True, type=click.IntRange(1))
@click.option("--lines", default=10_000, show_default=True, type=click.IntRange(1))
@click.option("--bad", default=1, show_default=True, type=click.IntRange(0), help="Files made bad on purpose.")
@click.option("--seed", type=int, help="Producer seed (repeatable data).")
@click.option("--lock", "lock_url", help=f"Use this lock server instead of the embedded one ({url_help()}); "
              "checked before any consumer starts.")
@click.option("--db", help="Use this database instead of SQLite in the work folder (postgresql://...). "
              "Its demo tables are emptied at start.")
@click.option("--fencing/--no-fencing", default=True, show_default=True,
              help="Check the fence at the database. Without faults both look the same: see `fencelock chaos`.")
@click.option("--timeout", default=600.0, show_default=True, type=click.FloatRange(1), help="Give up after (s).")
def demo(work: Path, consumers: int, files: int, lines: int, bad: int, seed: int | None, lock_url: str | None,
         db: str | None, fencing: bool, timeout: float) -> None:
    """The whole system on one machine: an embedded Redis-compatible server, a producer, competing
    consumers, live progress, and a final check that every row is persisted exactly once."""
    from .demo import DemoConfig, run_demo

    sys.exit(run_demo(DemoConfig(work=work, consumers=consumers, files=files, lines=lines, bad=bad, seed=seed,
                                 lock=lock_url, db=db, fencing=fencing, timeout=timeout)))


COMMANDS = [produce, consume, demo]
