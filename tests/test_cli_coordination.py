"""`fencelock run --limit N`, `fencelock elect` and `status` of semaphores, elections and read-write
locks, as a user runs them: real subprocesses, real commands, real servers; what is left running is
checked by pid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import fencelock
from fencelock._cli_ops import EXIT_LEASE_LOST, EXIT_TIMEOUT

CLI = [sys.executable, "-m", "fencelock.cli"]
WAIT = 60.0


def cli(*args: str, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def record(path: Path, seconds: float) -> list[str]:
    """A command that writes its start and end on the shared monotonic clock, and its fence."""
    code = (
        "import os, time, sys; t = time.monotonic(); time.sleep(float(sys.argv[2])); "
        "open(sys.argv[1], 'w').write(f\"{t} {time.monotonic()} {os.environ['FENCELOCK_FENCE']}\")"
    )
    return [sys.executable, "-c", code, str(path), str(seconds)]


def until_told(out: Path, stop: Path) -> list[str]:
    """A command that writes its fence to ``out``, then runs until ``stop`` exists (at most 60 s)."""
    code = (
        "import os, sys, time; open(sys.argv[1], 'w').write(os.environ['FENCELOCK_FENCE'])\n"
        "end = time.monotonic() + 60\n"
        "while not os.path.exists(sys.argv[2]) and time.monotonic() < end: time.sleep(0.02)"
    )
    return [sys.executable, "-c", code, str(out), str(stop)]


def wait_for(predicate: Any, timeout: float = WAIT) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.needs("counted")
def test_run_with_a_limit_runs_at_most_n_commands_at_once(lock_server: Any, name: str, tmp_path: Path) -> None:
    args = ["--lock", lock_server.url, "--limit", "2", "--timeout", "30", "--"]
    procs = [start("run", name, *args, *record(tmp_path / f"{i}", 1.0)) for i in range(3)]
    for p in procs:
        p.wait(WAIT)
        assert p.returncode == 0, p.stderr.read() if p.stderr else ""
    spans = [tuple(float(x) for x in (tmp_path / f"{i}").read_text().split()) for i in range(3)]
    starts = sorted(s for s, _, _ in spans)
    ends = sorted(e for _, e, _ in spans)
    assert starts[2] >= ends[0], "a third command ran while two held the permits"
    assert len({f for _, _, f in spans}) == 3


@pytest.mark.needs("counted")
def test_status_shows_a_semaphores_permits_and_holders(lock_server: Any, name: str) -> None:
    sem = fencelock.Semaphore(name, lock_server.url, limit=3, ttl=30, label="worker-a")
    lease = sem.acquire(timeout=5)
    try:
        data = json.loads(cli("status", name, "--lock", lock_server.url, "--json").stdout)
        assert data["kind"] == "semaphore of 3" and data["limit"] == 3
        assert [h["holder"] for h in data["holders"]] == ["worker-a"]
        text = cli("status", name, "--lock", lock_server.url).stdout
        assert "1 of 3 permits held" in text and "worker-a" in text
    finally:
        lease.release()


def test_elect_runs_the_command_as_leader_with_the_term(lock_server: Any, name: str, tmp_path: Path) -> None:
    out, stop = tmp_path / "term", tmp_path / "stop"
    leader = start("elect", name, "--value", "http://a:8080", "--lock", lock_server.url, "--", *until_told(out, stop))
    try:
        election = fencelock.Election(name, lock_server.url)
        assert wait_for(out.exists, 30), "the leader's command never ran"
        now = election.leader()
        assert now is not None and now.value == "http://a:8080"
        assert int(out.read_text()) == now.term, "FENCELOCK_FENCE is the term"
        data = json.loads(cli("status", name, "--lock", lock_server.url, "--json").stdout)
        assert data["holder"] == "http://a:8080" and data["fence"] == now.term
        rival = cli("elect", name, "--value", "b", "--lock", lock_server.url, "--timeout", "0.3", "--", "true")
        assert rival.returncode == EXIT_TIMEOUT, rival.stderr
        stop.touch()
        leader.wait(WAIT)
        assert leader.returncode == 0, leader.stderr.read() if leader.stderr else ""
        assert election.leader() is None, "leadership is resigned when the command ends"
    finally:
        if leader.poll() is None:
            leader.kill()


@pytest.mark.needs("delete_key")
def test_elect_stops_the_command_when_leadership_is_lost(lock_server: Any, name: str, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    code = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"
    leader = start("elect", name, "--value", "a", "--lock", lock_server.url, "--ttl", "1", "--kill-grace", "1", "--",
                   sys.executable, "-c", code, str(pidfile))
    try:
        assert wait_for(pidfile.exists, 30)
        child = int(pidfile.read_text())
        lock_server.delete_lock(name)  # the leadership is gone under the leader (an operator, a failover)
        leader.wait(30)
        assert leader.returncode == EXIT_LEASE_LOST, leader.stderr.read() if leader.stderr else ""
        assert wait_for(lambda: gone(child), 10), "the command ran on after leadership was lost"
    finally:
        if leader.poll() is None:
            leader.kill()
