"""The demo system end to end, on real engines: consumer processes (the real ``fencelock consume``
command), an embedded valkey or Debian's redis-server for the locks, SQLite or PostgreSQL.

"Exactly once" is checked by counting: the producer's manifest gives rows and the sum of amounts
per file; the database must hold exactly those, and nothing else.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fencelock.embedded import EmbeddedRedis
from fencelock_demo.producer import ProducerConfig, produce
from fencelock_demo.store import open_store
from srv_postgres import postgres_url  # noqa: F401

pytestmark = pytest.mark.slow  # real processes and servers: seconds each

WAIT = 120.0  # bound for any wait in these tests (the machine is shared)


# -- helpers (also used by the other test_demo_* modules) -----------------------------------------


def fencelock_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fencelock.cli", *args]


def start_consumer(share: Path, lock: str, db: str, ident: str, history: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        fencelock_cmd("consume", "--share", str(share), "--lock", lock, "--db", db, "--id", ident,
                      "--history", str(history), "--poll", "0.05", *extra),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def finish(proc: subprocess.Popen[bytes], timeout: float = WAIT) -> tuple[int, str]:
    """Wait for a process we started; kill it by pid if it overstays. Returns (exit code, output)."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=10)
        raise AssertionError(f"process {proc.pid} did not finish: {out.decode(errors='replace')}") from None
    return proc.returncode, out.decode(errors="replace")


def kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)


def history(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def wait_history(path: Path, pred: Any, what: str) -> dict[str, Any]:
    end = time.monotonic() + WAIT
    while time.monotonic() < end:
        for e in history(path):
            if pred(e):
                return e
        time.sleep(0.02)
    raise AssertionError(f"never saw {what} in {path}")


def manifest(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def per_file(db: str) -> dict[str, tuple[int, int]]:
    store = open_store(db)
    try:
        s = store.summary()
        assert s.rows == s.distinct_ids
        return s.per_file
    finally:
        store.close()


def assert_exactly_once(db: str, entries: list[dict[str, Any]], share: Path) -> None:
    expected = {e["file"]: (e["rows"], e["amount_cents"]) for e in entries if not e["bad"]}
    assert per_file(db) == expected
    for name in expected:
        assert (share / "done" / name).exists()
        assert not (share / name).exists()


def ledger(db: str, name: str) -> tuple[int, int | None, str] | None:
    store = open_store(db)
    try:
        mark = "?" if store.dialect == "sqlite" else "%s"
        sql = f"SELECT rows, fence, consumer FROM demo_files WHERE name = {mark}"
        row = store.conn.execute(sql, (name,)).fetchone()
        store.rollback()
        return None if row is None else (int(row[0]), row[1], str(row[2]))
    finally:
        store.close()


@pytest.fixture(scope="module")
def valkey() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def debian_redis() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(binary="/usr/bin/redis-server").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_db(postgres_url: str) -> str:  # noqa: F811
    store = open_store(postgres_url)
    store.reset()  # tests share the session's database: start each one empty
    store.close()
    return postgres_url


# -- several consumers, all rows exactly once ------------------------------------------------------


def _run_many(tmp_path: Path, lock: str, db: str, consumers: int = 3) -> None:
    share, hist = tmp_path / "share", tmp_path / "history.jsonl"
    produce(ProducerConfig(share, files=8, lines=700, seed=11, bad=1, manifest=tmp_path / "m.jsonl"))
    procs = [start_consumer(share, lock, db, f"c{k}", hist, "--idle-exit", "1") for k in range(consumers)]
    outs = [finish(p) for p in procs]
    for code, out in outs:
        assert code == 0, out
    entries = manifest(tmp_path / "m.jsonl")
    assert_exactly_once(db, entries, share)
    bad = [e for e in entries if e["bad"]]
    assert [p.name for p in (share / "quarantine").iterdir() if not p.name.endswith(".reason.txt")] == [bad[0]["file"]]
    # The history agrees: each committed write came from the holder of that file's lock, with its fence.
    events = history(hist)
    held: dict[str, tuple[str, int]] = {}
    for e in events:
        if e["op"] == "acquire" and e["type"] == "ok":
            held[e["proc"]] = (e["file"], e["fence"])
        if e["op"] == "write" and e["type"] == "ok":
            assert held[e["proc"]] == (e["file"], e["fence"])
    assert sum(e["rows"] for e in events if e["op"] == "write" and e["type"] == "ok") == sum(
        e["rows"] for e in entries if not e["bad"]
    )


def test_many_consumers_sqlite_valkey(tmp_path: Path, valkey: EmbeddedRedis) -> None:
    _run_many(tmp_path, valkey.url, f"sqlite:///{tmp_path / 'demo.db'}")


def test_many_consumers_postgres_debian_redis(tmp_path: Path, debian_redis: EmbeddedRedis, pg_db: str) -> None:
    _run_many(tmp_path, debian_redis.url, pg_db)


def test_many_consumers_on_postgres_alone(tmp_path: Path, pg_db: str) -> None:
    """The lock and the data in one PostgreSQL, no Redis anywhere."""
    _run_many(tmp_path, pg_db, pg_db)


def test_workers_option_runs_several_processes(tmp_path: Path, valkey: EmbeddedRedis) -> None:
    share, hist, db = tmp_path / "share", tmp_path / "h.jsonl", f"sqlite:///{tmp_path / 'w.db'}"
    produce(ProducerConfig(share, files=4, lines=300, seed=3, manifest=tmp_path / "m.jsonl"))
    code, out = finish(start_consumer(share, valkey.url, db, "w", hist, "--workers", "2", "--idle-exit", "1"))
    assert code == 0, out
    assert_exactly_once(db, manifest(tmp_path / "m.jsonl"), share)
    assert {e["proc"] for e in history(hist)} <= {"w.0", "w.1"}
    assert "consumer w.0: " in out and "consumer w.1: " in out  # two processes ran (each prints its stats)


# -- consumers killed at the worst moments -------------------------------------------------------


@pytest.mark.parametrize("dbkind", ["sqlite", "postgres"])
def test_consumer_killed_mid_file(tmp_path: Path, valkey: EmbeddedRedis, dbkind: str,
                                  request: pytest.FixtureRequest) -> None:
    """SIGKILL while the file's transaction is open (rows sent, not committed): nothing of it is
    committed, the lock runs out after its TTL, the next consumer ingests the file exactly once."""
    db = f"sqlite:///{tmp_path / 'k.db'}" if dbkind == "sqlite" else request.getfixturevalue("pg_db")
    share, hist = tmp_path / "share", tmp_path / "h.jsonl"
    produce(ProducerConfig(share, files=1, lines=5000, seed=21, manifest=tmp_path / "m.jsonl"))
    victim = start_consumer(share, valkey.url, db, "victim", hist, "--ttl", "2", "--pause-mid-write", "60")
    try:
        wait_history(hist, lambda e: e["proc"] == "victim" and e["op"] == "write" and e["type"] == "invoke",
                     "the victim's write")
        time.sleep(1.0)  # let it send its first batch and reach the pause inside the transaction
    finally:
        kill(victim)
    assert per_file(db) == {}
    code, out = finish(start_consumer(share, valkey.url, db, "heir", hist, "--idle-exit", "1"))
    assert code == 0, out
    assert_exactly_once(db, manifest(tmp_path / "m.jsonl"), share)
    events = history(hist)
    assert not [e for e in events if e["proc"] == "victim" and e["op"] == "write" and e["type"] == "ok"]
    fences = {e["proc"]: e["fence"] for e in events if e["op"] == "acquire" and e["type"] == "ok"}
    assert fences["heir"] > fences["victim"]


@pytest.mark.parametrize("dbkind", ["sqlite", "postgres"])
def test_consumer_killed_after_commit_before_archive(tmp_path: Path, valkey: EmbeddedRedis, dbkind: str,
                                                     request: pytest.FixtureRequest) -> None:
    """SIGKILL right after the commit: the file is still waiting although its rows are in. The next
    consumer ingests it again, adds no row (idempotent by TransactionId), and archives it."""
    db = f"sqlite:///{tmp_path / 'k.db'}" if dbkind == "sqlite" else request.getfixturevalue("pg_db")
    share, hist = tmp_path / "share", tmp_path / "h.jsonl"
    produce(ProducerConfig(share, files=1, lines=1200, seed=22, manifest=tmp_path / "m.jsonl"))
    entries = manifest(tmp_path / "m.jsonl")
    name = entries[0]["file"]
    victim = start_consumer(share, valkey.url, db, "victim", hist, "--ttl", "2", "--pause-after-commit", "60")
    try:
        wait_history(hist, lambda e: e["proc"] == "victim" and e["op"] == "write" and e["type"] == "ok",
                     "the victim's commit")
    finally:
        kill(victim)
    assert (share / name).exists(), "killed before archiving: the file must still be waiting"
    assert per_file(db) == {name: (entries[0]["rows"], entries[0]["amount_cents"])}
    code, out = finish(start_consumer(share, valkey.url, db, "heir", hist, "--idle-exit", "1"))
    assert code == 0, out
    assert "(0 new)" in out  # the second ingest found every row already there
    assert_exactly_once(db, entries, share)
    led = ledger(db, name)
    assert led is not None and led[0] == entries[0]["rows"] and led[2] == "heir"


# -- the README's first command ------------------------------------------------------------------------


def test_demo_command_runs_and_checks(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        fencelock_cmd("demo", "--work", str(tmp_path / "work"), "--files", "5", "--lines", "400",
                      "--consumers", "2", "--seed", "1"),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    code, out = finish(proc)
    assert code == 0, out
    assert "summary" in out and "CHECK ok" in out and "CHECK FAIL" not in out
    assert "every produced row persisted exactly once" in out
    db = sqlite3.connect(tmp_path / "work" / "demo.db")
    try:
        assert db.execute("SELECT count(*) FROM demo_transactions").fetchone()[0] == 4 * 400  # one file is bad
    finally:
        db.close()


def test_demo_stops_every_process_it_started_on_ctrl_c(tmp_path: Path) -> None:
    work = tmp_path / "work"
    proc = subprocess.Popen(
        fencelock_cmd("demo", "--work", str(work), "--files", "200", "--lines", "2000", "--consumers", "2"),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        wait_history(work / "history.jsonl", lambda e: e["op"] == "write" and e["type"] == "ok", "a first write")
        pids = json.loads((work / "pids.json").read_text())
        os.kill(proc.pid, signal.SIGINT)  # the demo alone, as if Ctrl-C reached only it
        code, out = finish(proc)
    finally:
        if proc.poll() is None:
            kill(proc)
    assert code == 130, out
    assert "stopped by SIGINT: every process the demo started was stopped" in out
    for pid in [pids["producer"], pids["lock_server"], *pids["consumers"]]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_consumer_survives_a_database_restart(tmp_path: Path, valkey: EmbeddedRedis) -> None:
    """PostgreSQL goes down while a consumer holds a file: that write fails (nothing committed), the
    consumer keeps its files, retries the connection with backoff, and once the server is back
    ingests everything exactly once."""
    from srv_postgres import PostgresServer

    server = PostgresServer().start()
    try:
        share, hist = tmp_path / "share", tmp_path / "h.jsonl"
        produce(ProducerConfig(share, files=3, lines=300, seed=31, manifest=tmp_path / "m.jsonl"))
        proc = start_consumer(share, valkey.url, server.url, "c", hist, "--pause-before-write", "3",
                              "--idle-exit", "1")
        try:
            wait_history(hist, lambda e: e["op"] == "acquire" and e["type"] == "ok", "the first lock")
            server.halt()  # during the pause: the write will find the connection gone
            failed = wait_history(hist, lambda e: e["op"] == "write" and e["type"] == "fail", "the failed write")
            server.launch()
            code, out = finish(proc)
        finally:
            if proc.poll() is None:
                kill(proc)
        assert code == 0, out
        assert "database connection restored" in out
        assert "1 database error\n" in out
        assert failed["fence"] is not None and failed["error"]  # e.g. "AdminShutdown: terminating connection..."
        assert not str(failed["error"]).startswith(("StaleFence", "quarantined"))
        assert_exactly_once(server.url, manifest(tmp_path / "m.jsonl"), share)
    finally:
        server.stop()
