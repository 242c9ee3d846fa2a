"""`fencelock run / status / release` as a user runs them: real subprocesses, real commands, a real
redis-server (Debian's, on a private unix socket with a password; see servers.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fencelock
from fencelock._cli_ops import (
    EXIT_AUTH,
    EXIT_LEASE_LOST,
    EXIT_NOT_FOUND,
    EXIT_TIMEOUT,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)
from servers import RedisLockServer, free_port

CLI = [sys.executable, "-m", "fencelock.cli"]
WAIT = 60.0  # generous: the machine is shared


@pytest.fixture
def server(redis_debian_server: RedisLockServer) -> RedisLockServer:
    return redis_debian_server


def fencelock_cli(*args: str, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def start_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
    )


def py(code: str) -> list[str]:
    """A real command: this Python running ``code``."""
    return [sys.executable, "-c", code]


def wait_for(path: Path, timeout: float = WAIT) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.02)


def read_written(path: Path, timeout: float = WAIT) -> str:
    """The text a command wrote to ``path`` (write_text creates the file before it writes)."""
    end = time.monotonic() + timeout
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < end, f"nothing written to {path}"
        time.sleep(0.02)
    return path.read_text()


def descendants(pid: int) -> list[int]:
    """Pids of every process below ``pid`` (from /proc), so a test can stop the commands that
    `fencelock run` started in their own process groups."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; killed by pid at the end whatever happened."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            below = descendants(proc.pid)
            proc.terminate()  # fencelock forwards it to its command, then exits
            try:
                proc.wait(WAIT / 2)
            except subprocess.TimeoutExpired:
                proc.kill()
            for pid in below:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        proc.communicate(timeout=WAIT)


# -- run ------------------------------------------------------------------------------------------


def test_run_gives_the_command_its_fence_token_and_name_and_returns_its_status(
    server: RedisLockServer, name: str, tmp_path: Path
) -> None:
    out = tmp_path / "env.json"
    code = (
        "import json, os, sys; "
        f"json.dump({{k: v for k, v in os.environ.items() if k.startswith('FENCELOCK_')}}, open({str(out)!r}, 'w')); "
        "sys.exit(3)"
    )
    result = fencelock_cli("run", name, "--lock", server.url, "--", *py(code))
    assert result.returncode == 3, result.stderr
    env = json.loads(out.read_text())
    assert env["FENCELOCK_NAME"] == name
    assert int(env["FENCELOCK_FENCE"]) == server.last_fence(name) > 0
    assert len(env["FENCELOCK_TOKEN"]) == 32 and int(env["FENCELOCK_TOKEN"], 16) >= 0
    assert fencelock.Lock(name, server.url).inspect() is None, "released after the command ended"


def test_run_holds_the_lock_while_the_command_runs_and_status_shows_it(
    server: RedisLockServer, name: str, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    ready, go = tmp_path / "ready", tmp_path / "go"
    code = (
        "import os, time, pathlib; "
        f"pathlib.Path({str(ready)!r}).write_text(os.environ['FENCELOCK_FENCE']); "
        f"[time.sleep(0.02) for _ in range(3000) if not pathlib.Path({str(go)!r}).exists()]"
    )
    holder = start_cli("run", name, "--lock", server.url, "--label", "ops-test:1", "--", *py(code))
    procs.append(holder)
    fence = int(read_written(ready))

    shown = fencelock_cli("status", name, "--lock", server.url, "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["held"] is True
    assert data["fence"] == fence == data["last_fence"]
    assert data["holder"] == "ops-test:1"
    assert 0 < data["ttl_remaining"] <= fencelock.DEFAULT_TTL
    assert data["waiters"] == 0

    text = fencelock_cli("status", name, "--lock", server.url)
    assert f"held by ops-test:1, fence {fence}" in text.stdout

    # A second run cannot get it meanwhile: exit 75 (not obtained in time).
    busy = fencelock_cli("run", name, "--lock", server.url, "--timeout", "0.2", "--", "true")
    assert busy.returncode == EXIT_TIMEOUT, busy.stderr
    assert "still held by another owner" in busy.stderr

    go.touch()
    assert holder.wait(WAIT) == 0
    after = json.loads(fencelock_cli("status", name, "--lock", server.url, "--json").stdout)
    assert after["held"] is False and after["last_fence"] == fence


def test_run_default_label_is_hostname_and_pid(server: RedisLockServer, name: str, tmp_path: Path) -> None:
    out = tmp_path / "holder"
    code = (
        "import redis, sys, pathlib, fencelock; "
        f"info = fencelock.Lock({name!r}, {server.url!r}).inspect(); "
        f"pathlib.Path({str(out)!r}).write_text(info.holder)"
    )
    proc = subprocess.Popen([*CLI, "run", name, "--lock", server.url, "--", *py(code)], stdin=subprocess.DEVNULL)
    assert proc.wait(WAIT) == 0
    assert out.read_text() == f"{socket.gethostname()}:{proc.pid}"


def test_run_reports_a_command_killed_by_a_signal_as_128_plus_n(server: RedisLockServer, name: str) -> None:
    result = fencelock_cli("run", name, "--lock", server.url, "--", "sh", "-c", "kill -KILL $$")
    assert result.returncode == 128 + signal.SIGKILL
    assert fencelock.Lock(name, server.url).inspect() is None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_run_forwards_signals_to_the_command(
    server: RedisLockServer, name: str, tmp_path: Path, procs: list[subprocess.Popen[str]], signum: int
) -> None:
    ready, got = tmp_path / "ready", tmp_path / "got"
    code = (
        "import signal, sys, time, pathlib\n"
        "def on(n, f):\n"
        f"    pathlib.Path({str(got)!r}).write_text(str(n)); sys.exit(42)\n"
        "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP): signal.signal(s, on)\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "for _ in range(3000): time.sleep(0.02)\n"
    )
    runner = start_cli("run", name, "--lock", server.url, "--", *py(code))
    procs.append(runner)
    wait_for(ready)
    runner.send_signal(signum)
    assert runner.wait(WAIT) == 42
    assert got.read_text() == str(int(signum)), "the command received the very signal fencelock got"
    assert fencelock.Lock(name, server.url).inspect() is None, "released after the command ended"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_waiting_ends_the_wait_and_leaves_the_queue(
    server: RedisLockServer, name: str, tmp_path: Path, procs: list[subprocess.Popen[str]], signum: int
) -> None:
    lock = fencelock.Lock(name, server.url, label="holder-in-test")
    lease = lock.acquire()
    try:
        started = tmp_path / "started"
        waiter = start_cli("run", name, "--lock", server.url, "--timeout", "50", "--", "touch", str(started))
        procs.append(waiter)
        end = time.monotonic() + WAIT
        while (info := lock.inspect()) is not None and info.waiters != 1:
            assert time.monotonic() < end and waiter.poll() is None
            time.sleep(0.02)
        waiter.send_signal(signum)
        _, err = waiter.communicate(timeout=WAIT)
        assert waiter.returncode == 128 + signum, err
        assert "while waiting for lock" in err and signal.Signals(signum).name in err
        assert not started.exists(), "the command never ran"
        info = lock.inspect()
        assert info is not None and info.waiters == 0, "it left the queue"
        assert info.fence == lease.fence and lease.held, "the holder is untouched"
    finally:
        lease.release()
        lock.close()


def test_run_lease_lost_terminates_the_command_and_says_so(
    server: RedisLockServer, name: str, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    ready, survived = tmp_path / "ready", tmp_path / "survived"
    code = (
        "import time, pathlib\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "for _ in range(3000): time.sleep(0.02)\n"
        f"pathlib.Path({str(survived)!r}).touch()\n"
    )
    runner = start_cli("run", name, "--lock", server.url, "--ttl", "1", "--kill-grace", "10", "--", *py(code))
    procs.append(runner)
    wait_for(ready)
    server.delete_lock(name)  # from outside: an operator, or a failover that lost the key
    _, err = runner.communicate(timeout=WAIT)
    assert runner.returncode == EXIT_LEASE_LOST, err
    assert "LEASE LOST" in err and name in err
    assert f"status was {128 + signal.SIGTERM}" in err, "the command was terminated with SIGTERM"
    assert not survived.exists()


def test_run_lease_lost_escalates_to_sigkill_after_the_grace(
    server: RedisLockServer, name: str, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    ready = tmp_path / "ready"
    code = (
        "import signal, time, pathlib\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "for _ in range(3000): time.sleep(0.02)\n"
    )
    runner = start_cli("run", name, "--lock", server.url, "--ttl", "1", "--kill-grace", "0.2", "--", *py(code))
    procs.append(runner)
    wait_for(ready)
    server.delete_lock(name)
    _, err = runner.communicate(timeout=WAIT)
    assert runner.returncode == EXIT_LEASE_LOST, err
    assert "SIGKILL" in err and f"status was {128 + signal.SIGKILL}" in err


def test_run_lease_lost_without_kill_lets_the_command_finish_but_exit_says_lost(
    server: RedisLockServer, name: str, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    ready, go, finished = tmp_path / "ready", tmp_path / "go", tmp_path / "finished"
    code = (
        "import time, pathlib\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.02)\n"
        f"pathlib.Path({str(finished)!r}).touch()\n"
    )
    runner = start_cli("run", name, "--lock", server.url, "--ttl", "1", "--no-kill-on-loss", "--", *py(code))
    procs.append(runner)
    wait_for(ready)
    server.delete_lock(name)
    assert runner.stderr is not None
    line = runner.stderr.readline()
    while "LEASE LOST" not in line and line:
        line = runner.stderr.readline()
    assert "LEASE LOST" in line and "keeps running" in line
    go.touch()
    _, err = runner.communicate(timeout=WAIT)
    assert finished.exists(), "the command was allowed to finish"
    assert runner.returncode == EXIT_LEASE_LOST, err


def test_run_exit_codes_for_unreachable_bad_credentials_bad_usage_and_missing_command(
    server: RedisLockServer, name: str
) -> None:
    down = fencelock_cli("run", name, "--lock", f"redis://127.0.0.1:{free_port()}", "--", "true")
    assert down.returncode == EXIT_UNAVAILABLE, down.stderr
    assert "unreachable" in down.stderr

    wrong = fencelock_cli("run", name, "--lock", server.url_with_password("not-the-password"), "--", "true")
    assert wrong.returncode == EXIT_AUTH, wrong.stderr
    assert "credentials" in wrong.stderr
    assert "not-the-password" not in wrong.stderr

    for bad in (
        ["run", name, "--lock", server.url],  # no command
        ["run", name, "--", "true"],  # no --lock
        ["run", name, "--lock", "ftp://x", "--", "true"],  # not a lock URL
        ["run", name, "--lock", server.url, "--ttl", "-1", "--", "true"],
        ["run", name, "--lock", server.url, "--bogus", "--", "true"],
    ):
        result = fencelock_cli(*bad)
        assert result.returncode == EXIT_USAGE, (bad, result.stderr)

    missing = fencelock_cli("run", name, "--lock", server.url, "--", "/nonexistent/fencelock-test-cmd")
    assert missing.returncode == EXIT_NOT_FOUND
    assert fencelock.Lock(name, server.url).inspect() is None, "released when the command could not start"


def test_run_replicas_not_acknowledging_is_exit_unavailable(server: RedisLockServer, name: str) -> None:
    # Our test server has no replica: WAIT 1 can never be satisfied.
    url = f"{server.url}?wait_replicas=1&wait_timeout=0.05"
    result = fencelock_cli("run", name, "--lock", url, "--", "true")
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr
    assert "0 of 1 replica" in result.stderr
    assert fencelock.Lock(name, server.url).inspect() is None, "the unconfirmed grant was given up"


def test_run_help_documents_the_exit_codes() -> None:
    result = fencelock_cli("run", "--help")
    assert result.returncode == 0
    for code, words in [
        (EXIT_USAGE, "bad usage"),
        (EXIT_UNAVAILABLE, "unreachable"),
        (EXIT_TIMEOUT, "not obtained"),
        (EXIT_AUTH, "refused"),
        (EXIT_LEASE_LOST, "lease lost"),
    ]:
        assert any(line.strip().startswith(f"{code} ") and words in line for line in result.stdout.splitlines()), (
            code,
            words,
        )


# -- status ---------------------------------------------------------------------------------------


def test_status_of_a_free_lock(server: RedisLockServer, name: str) -> None:
    text = fencelock_cli("status", name, "--lock", server.url)
    assert text.returncode == 0 and f"{name}: free" in text.stdout
    data = json.loads(fencelock_cli("status", name, "--lock", server.url, "--json").stdout)
    assert data == {"name": name, "backend": "redis", "held": False, "last_fence": 0}


def test_status_counts_waiters(server: RedisLockServer, name: str, procs: list[subprocess.Popen[str]]) -> None:
    lock = fencelock.Lock(name, server.url, label="in-test")
    lease = lock.acquire()
    try:
        waiter = start_cli("run", name, "--lock", server.url, "--timeout", "30", "--", "true")
        procs.append(waiter)
        end = time.monotonic() + WAIT
        while True:
            data = json.loads(fencelock_cli("status", name, "--lock", server.url, "--json").stdout)
            if data["waiters"] == 1:
                break
            assert time.monotonic() < end, data
            time.sleep(0.05)
        assert data["holder"] == "in-test" and data["fence"] == lease.fence
    finally:
        lease.release()
        lock.close()
    assert waiter.wait(WAIT) == 0, "the waiter got the lock when it was released"


# -- release --------------------------------------------------------------------------------------


def test_release_requires_force_and_the_name_typed_again(server: RedisLockServer, name: str) -> None:
    lock = fencelock.Lock(name, server.url, label="victim:7", renew=False)
    lease = lock.acquire()
    try:
        no_force = fencelock_cli("release", name, "--lock", server.url, "--confirm", name)
        assert no_force.returncode == EXIT_USAGE and "--force" in no_force.stderr
        typo = fencelock_cli("release", name, "--lock", server.url, "--force", "--confirm", name + "x")
        assert typo.returncode == EXIT_USAGE and "--confirm" in typo.stderr
        assert lock.inspect() is not None, "nothing removed on a refused release"

        done = fencelock_cli("-v", "release", name, "--lock", server.url, "--force", "--confirm", name)
        assert done.returncode == 0, done.stderr
        assert f"removed the lock held by victim:7 with fence {lease.fence}" in done.stdout
        assert "force release" in done.stderr and f"fence={lease.fence}" in done.stderr, "logged"
        assert lease.token not in done.stdout + done.stderr, "the holder's token is never shown"
        assert lock.inspect() is None
        with pytest.raises(fencelock.LeaseLost):
            lease.extend()

        again = fencelock_cli("release", name, "--lock", server.url, "--force", "--confirm", name)
        assert again.returncode == 0 and "was not held" in again.stdout
    finally:
        lock.close()


def test_commands_never_echo_a_password_on_errors(server: RedisLockServer, name: str) -> None:
    result = fencelock_cli("status", name, "--lock", server.url_with_password("hunter2-pw"))
    assert result.returncode == EXIT_AUTH
    assert "hunter2-pw" not in result.stdout + result.stderr


def test_lock_url_from_the_environment(server: RedisLockServer, name: str) -> None:
    env = dict(os.environ, FENCELOCK_LOCK=server.url)
    result = subprocess.run([*CLI, "status", name, "--json"], capture_output=True, text=True, timeout=WAIT, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["held"] is False


# -- other backends -------------------------------------------------------------------------------


def test_run_status_release_on_sqlite(tmp_path: Path, name: str, procs: list[subprocess.Popen[str]]) -> None:
    url = f"sqlite:///{tmp_path / 'locks.db'}"
    ready = tmp_path / "ready"
    code = (
        "import os, time, pathlib\n"
        f"pathlib.Path({str(ready)!r}).write_text(os.environ['FENCELOCK_FENCE'])\n"
        "for _ in range(3000): time.sleep(0.02)\n"
    )
    holder = start_cli("run", name, "--lock", url, "--label", "sqlite-holder", "--", *py(code))
    procs.append(holder)
    fence = int(read_written(ready))
    data = json.loads(fencelock_cli("status", name, "--lock", url, "--json").stdout)
    assert data["held"] and data["fence"] == fence and data["holder"] == "sqlite-holder"
    done = fencelock_cli("release", name, "--lock", url, "--force", "--confirm", name)
    assert done.returncode == 0, done.stderr
    assert f"removed the lock held by sqlite-holder with fence {fence}" in done.stdout
    _, err = holder.communicate(timeout=WAIT)
    assert holder.returncode == EXIT_LEASE_LOST, err
    assert "LEASE LOST" in err


def test_run_status_release_on_postgres(
    postgres_server: Any, tmp_path: Path, name: str, procs: list[subprocess.Popen[str]]
) -> None:
    url = postgres_server.url
    ready = tmp_path / "ready"
    code = (
        "import os, time, pathlib\n"
        f"pathlib.Path({str(ready)!r}).write_text(os.environ['FENCELOCK_FENCE'])\n"
        "for _ in range(3000): time.sleep(0.02)\n"
    )
    holder = start_cli("run", name, "--lock", url, "--label", "pg-holder", "--", *py(code))
    procs.append(holder)
    fence = int(read_written(ready))
    data = json.loads(fencelock_cli("status", name, "--lock", url, "--json").stdout)
    assert data["held"] and data["fence"] == fence and data["holder"] == "pg-holder"
    assert data["backend"] == "postgres"
    done = fencelock_cli("release", name, "--lock", url, "--force", "--confirm", name)
    assert done.returncode == 0, done.stderr
    assert f"removed the lock held by pg-holder with fence {fence}" in done.stdout
    _, err = holder.communicate(timeout=WAIT)
    assert holder.returncode == EXIT_LEASE_LOST, err
    assert "LEASE LOST" in err
    after = json.loads(fencelock_cli("status", name, "--lock", url, "--json").stdout)
    assert after["held"] is False and after["last_fence"] == fence


def test_run_and_status_on_zookeeper(
    zookeeper_server: Any, name: str, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    url = zookeeper_server.url
    ready, go = tmp_path / "ready", tmp_path / "go"
    code = (
        "import os, time, pathlib\n"
        f"pathlib.Path({str(ready)!r}).write_text(os.environ['FENCELOCK_FENCE'])\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.02)\n"
    )
    holder = start_cli("run", name, "--lock", url, "--label", "zk-holder", "--", *py(code))
    procs.append(holder)
    fence = int(read_written(ready))
    data = json.loads(fencelock_cli("status", name, "--lock", url, "--json").stdout)
    assert data["held"] and data["fence"] == fence and data["holder"] == "zk-holder"
    assert data["backend"] == "zookeeper"
    go.touch()
    assert holder.wait(WAIT) == 0
    after = json.loads(fencelock_cli("status", name, "--lock", url, "--json").stdout)
    assert after["held"] is False


def test_run_reports_a_lease_in_doubt_on_zookeeper(
    zookeeper_server: Any, name: str, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    """ZooKeeper stops answering (SIGSTOP): the holder's connection is suspended and its lease in
    doubt; `run` says so on stderr and, once it resolves, says how (recovered, or lost: exit 79)."""
    ready, go = tmp_path / "ready", tmp_path / "go"
    code = (
        "import time, pathlib\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.02)\n"
    )
    runner = start_cli("run", name, "--lock", zookeeper_server.url, "--no-kill-on-loss", "--", *py(code))
    procs.append(runner)
    wait_for(ready)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(runner.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    zookeeper_server.pause()
    try:
        end = time.monotonic() + WAIT
        while not any("in doubt:" in line for line in lines):
            assert time.monotonic() < end and runner.poll() is None, lines
            time.sleep(0.02)
    finally:
        zookeeper_server.resume()
    end = time.monotonic() + WAIT
    while not any("no longer in doubt" in line or "LEASE LOST" in line for line in lines):
        assert time.monotonic() < end, lines
        time.sleep(0.02)
    go.touch()
    runner.wait(WAIT)
    reader.join(WAIT)
    text = "".join(lines)
    if "LEASE LOST" in text:
        assert runner.returncode == EXIT_LEASE_LOST, text
    else:
        assert "no longer in doubt" in text and runner.returncode == 0, text


def test_release_on_zookeeper(zookeeper_server: Any, name: str) -> None:
    """Removes the lock where the ZooKeeper backend offers an operator override; otherwise says
    clearly that it cannot (the backend is another engineer's and may gain the override)."""
    from fencelock.backends.zookeeper import ZooKeeperBackend

    lock = fencelock.Lock(name, zookeeper_server.url, label="zk-victim")
    lease = lock.acquire()
    try:
        result = fencelock_cli("release", name, "--lock", zookeeper_server.url, "--force", "--confirm", name)
        if hasattr(ZooKeeperBackend, "force_release"):
            assert result.returncode == 0, result.stderr
            assert f"removed the lock held by zk-victim with fence {lease.fence}" in result.stdout
            assert lock.inspect() is None
            assert lease.wait_lost(WAIT), "the holder is told (its node is gone)"
        else:
            assert result.returncode == EXIT_USAGE
            assert "cannot force-release" in result.stderr
    finally:
        with contextlib.suppress(fencelock.LeaseError):
            lease.release()
        lock.close()


class _WithoutForceRelease:
    """A backend that has every primitive but no operator override."""

    name = "no-override"

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, attr: str) -> Any:
        if attr == "force_release":
            raise AttributeError(attr)
        return getattr(self._inner, attr)


def test_release_on_a_backend_without_force_release_is_a_clear_usage_error(
    server: RedisLockServer, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from fencelock import _cli_ops
    from fencelock.cli import main

    monkeypatch.setattr(
        _cli_ops, "_backend_spec", lambda url, *tls: _WithoutForceRelease(fencelock.RedisBackend.from_url(url))
    )
    result = CliRunner().invoke(main, ["release", name, "--lock", server.url, "--force", "--confirm", name])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "the no-override backend cannot force-release a lock" in result.output
