"""A consumer: competes for files, and persists each one exactly once.

For each waiting file, in random order (so that consumers spread out instead of all fighting over
the first name):

1. ``try_acquire`` the lock ``file:<name>``; busy means another consumer has it: try the next file.
2. Open the file safely (``Share.open``); a file that vanished (someone else finished it while we
   were listing) or cannot be read is skipped with a logged reason.
3. ``lease.ensure_held()``, then in ONE database transaction: the fence check
   (``fencelock.fencing.admit``: refused if a newer holder of this file already wrote), then the
   rows, streamed from the file in batches, inserted ``ON CONFLICT DO NOTHING`` (idempotent by
   TransactionId), then the ledger row. Commit.
4. Only after the commit: move the file to ``done/`` (or delete it). A consumer that dies between
   3 and 4 leaves the file waiting; the next one ingests it again and adds nothing new.

A file with any bad line writes nothing (rollback) and goes to ``quarantine/`` with a reason file
naming every bad line. A TransactionId already persisted from another file (or twice in one file)
is a bad line too: DO NOTHING would otherwise drop that row without a word.

Why the fence check and not just ``ensure_held()``: the check in step 3 is local and instant; the
process can be paused right after it (``--pause-before-write`` shows this) while its lease runs
out and another consumer takes the file. The storage, not the holder, has the last word.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import fencelock
from fencelock import BackendError, ConfigurationError, LeaseError, StaleFence
from fencelock._cli_ops import EXIT_USAGE, plural
from fencelock.backends import open_backend
from fencelock.backends.base import Backend, Passthrough

from .history import History
from .parsing import BadLine, Row, parse_lines, split_lines
from .share import DONE, NotRegularFile, ReasonFile, Share
from .store import Store, check_store_url, open_store

__all__ = ["ConsumerConfig", "IngestResult", "Stats", "check_config", "ingest", "run_consumer", "run_workers"]

log = logging.getLogger("fencelock_demo.consumer")

_never_set = threading.Event()


def _sleep(seconds: float) -> None:
    """``time.sleep`` that also works under libfaketime: with FAKETIME_DONT_FAKE_MONOTONIC=1,
    libfaketime 0.9.10 makes ``time.sleep`` fail with EINVAL, ``Event.wait`` does not."""
    _never_set.wait(max(0.0, seconds))

BATCH = 2000


@dataclass
class ConsumerConfig:
    share: str
    lock: str
    db: str
    id: str = ""
    history: str | None = None
    fencing: bool = True
    pause_before_write: float = 0.0
    pause_mid_write: float = 0.0
    pause_after_commit: float = 0.0
    ttl: float = 30.0
    renew: bool = True
    max_files: int | None = None
    idle_exit: float | None = None
    archive: bool = True
    poll: float = 0.2


@dataclass
class Stats:
    done: int = 0
    unarchived: int = 0  # committed, but the file could not be moved out of the share
    quarantined: int = 0
    rows: int = 0
    inserted: int = 0
    busy: int = 0
    lock_errors: int = 0
    stale: int = 0
    lost: int = 0
    skipped: int = 0
    db_errors: int = 0

    def line(self, who: str) -> str:
        parts = [plural(self.done, "file") + " done"]
        if self.unarchived:
            parts.append(f"{plural(self.unarchived, 'file')} committed but not archived")
        parts += [
            f"{self.quarantined:,} quarantined",
            f"{plural(self.rows, 'row')} ({self.inserted:,} new)",
            plural(self.busy, "busy lock"),
            plural(self.lock_errors, "lock server error"),
            plural(self.stale, "stale-fence refusal"),
            plural(self.lost, "lease") + " lost",
            f"{self.skipped:,} skipped",
            plural(self.db_errors, "database error"),
        ]
        return f"consumer {who}: " + ", ".join(parts)


@dataclass
class IngestResult:
    """``bad`` > 0: nothing was written (the transaction was rolled back)."""

    rows: int = 0
    inserted: int = 0
    amount_cents: int = 0
    bad: int = 0
    first_bad: list[str] = field(default_factory=list)


def ingest(
    store: Store,
    chunks: Callable[[], Iterable[bytes]],
    file: str,
    fence: int | None,
    consumer: str,
    *,
    check_fence: bool,
    on_bad: Callable[[int, str], None] | None = None,
    mid_write: Callable[[], None] | None = None,
) -> IngestResult:
    """Parse ``file`` and write it in one transaction, left open for the caller to commit.

    Returns with the transaction open when the file is good; rolls back and returns ``bad > 0``
    when it is not. Raises ``StaleFence`` (transaction rolled back) when the fence is refused.
    This is the whole write path, shared by the consumer and the benchmark's no-lock baseline.
    """
    res = IngestResult()

    def bad(line_no: int, reason: str) -> None:
        res.bad += 1
        if len(res.first_bad) < 5:
            res.first_bad.append(f"line {line_no}: {reason}" if line_no else reason)
        if on_bad is not None:
            on_bad(line_no, reason)

    store.begin()
    try:
        if check_fence and fence is not None:
            store.admit(f"file:{file}", fence)
        batch: list[Row] = []
        batches = 0
        for item in parse_lines(split_lines(chunks())):
            if isinstance(item, BadLine):
                bad(item.line_no, item.reason)
                batch = []
                continue
            res.rows += 1
            res.amount_cents += item.amount_cents
            if res.bad:
                continue  # keep reading: every bad line is reported, but nothing more is written
            batch.append(item)
            if len(batch) >= BATCH:
                store.add(batch, file, fence, consumer)
                batch = []
                batches += 1
                if batches == 1 and mid_write is not None:
                    mid_write()
        if res.bad:
            store.rollback()
            return res
        if batch:
            store.add(batch, file, fence, consumer)
        res.inserted = store.finish()
        if res.inserted != res.rows and store.count_file(file) != res.rows:
            _explain_duplicates(store, chunks, file, bad)
            if res.bad == 0:  # pragma: no cover - counts disagree without a duplicate: refuse anyway
                bad(0, "row count in the database does not match the file")
            store.rollback()
            return res
        store.record_file(file, res.rows, res.amount_cents, fence, consumer)
        return res
    except BaseException:
        with contextlib.suppress(Exception):
            store.rollback()
        raise


def _explain_duplicates(
    store: Store, chunks: Callable[[], Iterable[bytes]], file: str, bad: Callable[[int, str], None]
) -> None:
    """Second pass, only when the counts disagree: name each line whose TransactionId is stored
    from another file or another line (the rows of this transaction are visible to it)."""
    pending: list[Row] = []

    def flush() -> None:
        origin = store.origins([r.transaction_id for r in pending])
        for r in pending:
            where = origin.get(r.transaction_id)
            if where is not None and where != (file, r.line_no):
                if where[0] == file:
                    bad(r.line_no, f"TransactionId {r.transaction_id} repeats line {where[1]} of this file")
                else:
                    bad(r.line_no, f"TransactionId {r.transaction_id} already persisted from "
                                   f"{where[0]} line {where[1]}")
        pending.clear()

    for item in parse_lines(split_lines(chunks())):
        if isinstance(item, Row):
            pending.append(item)
            if len(pending) >= 500:
                flush()
    flush()


class RecordingBackend(Passthrough):
    """Wraps the lock backend to put every lease renewal (``extend``) into the history: renewals
    run in the lock's own renewer thread, which has no hook of its own. Every other primitive is
    passed through untouched."""

    def __init__(self, inner: Backend, history: History) -> None:
        super().__init__(inner)
        self.history = history
        self.fences: dict[str, int] = {}  # token -> fence, for leases this process holds

    def extend(self, key: str, token: str, ttl_ms: int) -> bool:
        file, fence = key.removeprefix("file:"), self.fences.get(token)
        self.history.record("renew", "invoke", file, fence)
        try:
            ok = bool(self.inner.extend(key, token, ttl_ms))
        except BaseException as err:
            self.history.record("renew", "fail", file, fence, error=f"{type(err).__name__}: {err}")
            raise
        if ok:
            self.history.record("renew", "ok", file, fence)
        else:
            self.history.record("renew", "fail", file, fence, error="the lock is no longer ours")
        return ok


def check_config(cfg: ConsumerConfig) -> None:
    """Raise ``ConfigurationError`` for a bad ``--lock`` or ``--db`` (or a missing driver) before
    anything starts: said once, not once per worker. Opening the lock backend does no I/O."""
    check_store_url(cfg.db)
    if cfg.db.startswith(("postgresql://", "postgres://")):
        try:
            import psycopg  # noqa: F401
        except ImportError as err:
            raise ConfigurationError(
                "a postgresql:// database needs psycopg 3: pip install 'fencelock[postgres]'"
            ) from err
    backend, _ = open_backend(cfg.lock)
    with contextlib.suppress(Exception):
        backend.close()


class Consumer:
    def __init__(self, cfg: ConsumerConfig, should_stop: Callable[[], bool]) -> None:
        self.cfg = cfg
        self.id = cfg.id or f"{os.uname().nodename}:{os.getpid()}"
        self.should_stop = should_stop
        self.history = History(cfg.history, self.id)
        self.share = Share(cfg.share)
        self.store = open_store(cfg.db)
        self.store.setup()
        inner, _ = open_backend(cfg.lock)
        self.backend = RecordingBackend(inner, self.history)
        self.stats = Stats()
        self.skip_until: dict[str, float] = {}  # files we could not read, and when to look again
        self.unarchivable: set[str] = set()  # committed by us, but they could not leave the share
        self._db_broken = False
        self._db_backoff = cfg.poll

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.backend.close()
        with contextlib.suppress(Exception):
            self.store.close()
        self.share.close()
        self.history.close()

    def run(self) -> None:
        cfg = self.cfg
        idle_since = time.monotonic()
        files = 0
        while not self.should_stop():
            now = time.monotonic()
            listing = self.share.listing()
            for name, why in listing.unsafe.items():
                self._skip(name, why, logging.WARNING)
            ready = [n for n in listing.ready if self.skip_until.get(n, 0.0) <= now and n not in self.unarchivable]
            if ready:
                idle_since = now
            random.shuffle(ready)
            did = False
            for name in ready:
                if self.should_stop() or (cfg.max_files is not None and files >= cfg.max_files):
                    break
                outcome = self.try_file(name)
                if outcome == "lock-error":
                    break  # the lock server is down: do not hammer it with every waiting file
                if outcome != "busy":
                    did = True
                if outcome in ("done", "unarchived", "quarantined", "stale", "lost"):
                    files += 1
                    break  # list again: the share has changed
            if cfg.max_files is not None and files >= cfg.max_files:
                return
            if not did:
                if cfg.idle_exit is not None and time.monotonic() - idle_since >= cfg.idle_exit:
                    return
                _sleep(cfg.poll * random.uniform(0.5, 1.5))

    def _skip(self, name: str, why: str, level: int) -> None:
        if name not in self.skip_until:
            log.log(level, "%s: skipping %s: %s", self.id, name, why)
            self.stats.skipped += 1
        self.skip_until[name] = time.monotonic() + 30.0

    def _db_failed(self, err: BaseException) -> None:
        """The database failed mid-file (server restarted, connection cut...): the transaction is
        gone, so nothing of the file was written, or the commit's outcome is unknown (then a later
        idempotent re-ingest settles it). Drop the connection; reconnect before the next file."""
        self.stats.db_errors += 1
        log.warning("%s: database error, will reconnect: %s: %s", self.id, type(err).__name__, err)
        with contextlib.suppress(Exception):
            self.store.close()
        self._db_broken = True

    def _reconnect(self) -> bool:
        try:
            store = open_store(self.cfg.db)
            store.setup()
        except Exception as err:  # the driver's errors, whatever the driver
            log.warning("%s: database still unavailable (retry in %.1f s): %s", self.id, self._db_backoff, err)
            _sleep(self._db_backoff)
            self._db_backoff = min(5.0, self._db_backoff * 2)
            return False
        self.store, self._db_broken, self._db_backoff = store, False, self.cfg.poll
        log.warning("%s: database connection restored", self.id)
        return True

    def try_file(self, name: str) -> str:
        cfg, h = self.cfg, self.history
        if self._db_broken and not self._reconnect():
            return "busy"  # no lock taken: nothing to do until the database is back
        lock = fencelock.Lock(
            f"file:{name}", self.backend, ttl=cfg.ttl, renew=cfg.renew, label=self.id, on_lost=self._on_lost
        )
        h.record("acquire", "invoke", name)
        try:
            lease = lock.try_acquire()
        except BackendError as err:
            # Not contention: the lock server is down or refused us. Counted and said as such.
            self.stats.lock_errors += 1
            h.record("acquire", "fail", name, error=f"{type(err).__name__}: {err}")
            log.warning("%s: lock server error for %s: %s", self.id, name, err)
            _sleep(cfg.poll)
            return "lock-error"
        if lease is None:
            h.record("acquire", "fail", name, error="busy")
            self.stats.busy += 1
            return "busy"
        self.backend.fences[lease.token] = lease.fence
        h.record("acquire", "ok", name, lease.fence)
        try:
            return self._process(name, lease)
        finally:
            h.record("release", "invoke", name, lease.fence)
            try:
                lease.release()
                h.record("release", "ok", name, lease.fence)
            except (LeaseError, BackendError) as err:
                h.record("release", "fail", name, lease.fence, error=f"{type(err).__name__}: {err}")
            self.backend.fences.pop(lease.token, None)

    def _on_lost(self, lease: Any) -> None:
        self.stats.lost += 1
        self.history.record(
            "lease-lost", "ok", lease.name.removeprefix("file:"), lease.fence, error=str(lease.lost_reason)
        )

    def _process(self, name: str, lease: fencelock.Lease) -> str:
        cfg, h, share = self.cfg, self.history, self.share
        try:
            fd = share.open(name)
        except FileNotFoundError:
            log.info("%s: skipping %s: it vanished (another consumer finished it)", self.id, name)
            return "vanished"
        except NotRegularFile as err:
            self._skip(name, err.strerror or "not a regular file", logging.WARNING)
            return "skipped"
        except OSError as err:
            self._skip(name, f"unreadable: {err.strerror}", logging.WARNING)
            return "skipped"
        reasons: ReasonFile | None = None
        try:
            try:
                lease.ensure_held()
            except LeaseError as err:
                log.warning("%s: %s: %s", self.id, name, err)
                return "lost"
            if cfg.pause_before_write > 0:
                _sleep(cfg.pause_before_write)  # test hook: the lease may run out right here
            reasons = share.reason_writer(name)
            h.record("write", "invoke", name, lease.fence)
            mid = (lambda: _sleep(cfg.pause_mid_write)) if cfg.pause_mid_write > 0 else None
            try:
                res = ingest(
                    self.store, lambda: Share.chunks(fd), name, lease.fence, self.id,
                    check_fence=cfg.fencing, on_bad=reasons.add, mid_write=mid,
                )
            except StaleFence as err:
                self.stats.stale += 1
                h.record("write", "fail", name, lease.fence, error=f"StaleFence: {err}")
                log.warning("%s: %s", self.id, err)
                return "stale"
            except OSError as err:
                h.record("write", "fail", name, lease.fence, error=f"{type(err).__name__}: {err}")
                self._skip(name, f"unreadable: {err}", logging.WARNING)
                return "skipped"
            except self.store.errors as err:
                h.record("write", "fail", name, lease.fence, error=f"{type(err).__name__}: {err}")
                self._db_failed(err)
                return "db-error"
            if res.bad:
                h.record("write", "fail", name, lease.fence, rows=0, error=f"quarantined: {res.bad} bad lines")
                try:
                    share.quarantine(name, reasons)
                except FileNotFoundError:  # moved meanwhile by a consumer whose lease was newer
                    log.warning("%s: %s vanished before it could be quarantined", self.id, name)
                    return "vanished"
                reasons = None
                self.stats.quarantined += 1
                log.warning("%s: quarantined %s: %s", self.id, name, "; ".join(res.first_bad))
                return "quarantined"
            try:
                self.store.commit()
            except self.store.errors as err:
                # The commit may or may not have happened: the file stays, and an idempotent
                # re-ingest settles it later.
                h.record("write", "unknown", name, lease.fence, rows=res.rows, error=f"{type(err).__name__}: {err}")
                self._db_failed(err)
                return "db-error"
            h.record("write", "ok", name, lease.fence, rows=res.rows)
            self.stats.done += 1
            self.stats.rows += res.rows
            self.stats.inserted += res.inserted
            if cfg.pause_after_commit > 0:
                _sleep(cfg.pause_after_commit)  # test hook: die here, and the file stays
            try:
                if cfg.archive:
                    share.archive(name)
                else:
                    share.remove(name)
            except FileNotFoundError:
                log.warning("%s: %s was moved away by someone else after our commit", self.id, name)
            except OSError as err:
                # The rows are in (committed), the file cannot leave the share (read-only share,
                # permissions). Ingesting it again would add nothing, so this consumer leaves it be.
                self.stats.done -= 1
                self.stats.unarchived += 1
                self.unarchivable.add(name)
                where = f"{DONE}/" if cfg.archive else "(delete)"
                log.warning(
                    "%s: %s: %s committed, but the file could not be %s: %s. It stays in the share; "
                    "this consumer will not ingest it again (the ledger has it, a new ingest would add "
                    "no row). Make %s writable, then move or delete the file yourself",
                    self.id, name, plural(res.rows, "row"),
                    f"moved to {where}" if cfg.archive else "removed", err.strerror or err,
                    share.root / DONE if cfg.archive else share.root,
                )
                h.record("archive", "fail", name, lease.fence, error=f"{type(err).__name__}: {err}")
                return "unarchived"
            return "done"
        finally:
            if reasons is not None:
                reasons.discard()
            os.close(fd)


# -- processes ---------------------------------------------------------------------------------

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_UNAVAILABLE = 3
EXIT_WORKER_FAILED = 4


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _StopFlag:
    """First SIGTERM/SIGINT/SIGHUP: finish the current file, then stop. Second: stop at once
    (``SystemExit``: the lease is still released on the way out)."""

    def __init__(self) -> None:
        self.stopped = False

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stopped:
            raise SystemExit(128 + signum)
        self.stopped = True

    def __call__(self) -> bool:
        return self.stopped


def check_lock_server(url: str, within: float) -> str | None:
    """Bounded round trips to the lock server before any worker starts: why it cannot be used, on
    one line, or None. An unreachable server is asked again for up to ``within`` seconds (a server
    restarting, or paused for a moment, is not a reason to refuse to start); credentials or ACLs
    refused fail at once. The URL was checked already (``check_config``)."""
    from fencelock import BackendUnavailable
    from fencelock.backends import safe_url

    deadline = time.monotonic() + within
    backend, _ = open_backend(url)
    try:
        for _attempt in range(10_000):  # bounded in count as well as in time
            try:
                backend.inspect("consumer:startup-check")
                return None
            except BackendUnavailable as err:
                if time.monotonic() + 0.2 >= deadline:
                    why = f"unavailable for {within:g} s (--start-timeout)"
                    return f"lock server {safe_url(url)} {why}: {' '.join(str(err).split())}"
                time.sleep(0.2)
            except BackendError as err:
                return f"lock server {safe_url(url)} refused us: {' '.join(str(err).split())}"
        return f"lock server {safe_url(url)} did not answer"
    finally:
        with contextlib.suppress(Exception):
            backend.close()


def run_consumer(cfg: ConsumerConfig) -> int:
    """Run one consumer until idle/max-files/a signal; returns the process exit code."""
    stop = _StopFlag()
    stop.install()
    try:
        consumer = Consumer(cfg, stop)
    except ConfigurationError as err:
        print(f"fencelock consume: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (BackendError, OSError) as err:
        print(f"fencelock consume: cannot start: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except Exception as err:  # psycopg.OperationalError, sqlite3.OperationalError
        why = " ".join(str(err).split())  # libpq's messages span lines
        print(f"fencelock consume: cannot start: {type(err).__name__}: {why}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        consumer.run()
    except SystemExit:
        raise
    except Exception:
        log.exception("%s: stopped by an unexpected error", consumer.id)
        print(consumer.stats.line(consumer.id), file=sys.stderr)
        return EXIT_ERROR
    finally:
        consumer.close()
    print(consumer.stats.line(consumer.id), file=sys.stderr)
    return EXIT_OK


def _worker_main(cfg: ConsumerConfig, log_level: int) -> None:
    logging.basicConfig(level=log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sys.exit(run_consumer(cfg))


def run_workers(cfg: ConsumerConfig, workers: int) -> int:
    """``workers`` consumer processes (one per core: parsing is CPU-bound, so threads would share
    one GIL). Signals are passed on to each child by its pid."""
    if workers <= 1:
        return run_consumer(cfg)
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    base = cfg.id or f"{os.uname().nodename}:{os.getpid()}"
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(dataclasses.replace(cfg, id=f"{base}.{k}"), logging.getLogger().level),
            name=f"consumer-{k}",
        )
        for k in range(workers)
    ]
    received: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        for p in procs:
            if p.pid is not None and p.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signum)

    # Installed before the first worker starts: a signal that ends us is passed on to every worker
    # (each finishes its file and stops), never left to kill only us and orphan them.
    for sig in STOP_SIGNALS:
        signal.signal(sig, forward)
    for p in procs:
        if received:  # stopped while starting: start no more
            break
        p.start()
        if received:  # it may have started after the signal was passed on
            forward(received[0], None)
    for p in procs:
        if p.pid is not None:
            p.join()
    codes = [p.exitcode or 0 for p in procs]
    # A worker that the passed-on signal ended before it had installed its own handler (it was
    # still starting) stopped as asked: not a failure.
    return EXIT_OK if all(c == 0 or -c in received for c in codes) else EXIT_WORKER_FAILED
