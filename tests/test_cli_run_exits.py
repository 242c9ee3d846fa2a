"""`fencelock run` never keeps a lock it cannot use: every way out after the grant releases it.

A command that cannot be executed is 126 (found, not executable: no shebang, no x bit, a
directory) or 127 (not found), with one line saying what to do; a signal between the grant and the
command's start releases the lock and starts nothing. Real subprocesses and a real redis-server;
afterwards the lock is free and no process of the run is left (checked by pid)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

import fencelock
from cli_helpers import leftovers, new_marker, one_line_error, reaped, run_cli, start_cli, wait_for
from fencelock._cli_ops import EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, PAUSE_AFTER_GRANT_ENV
from servers import RedisLockServer

WAIT = 60.0


@pytest.fixture
def server(redis_debian_server: RedisLockServer) -> RedisLockServer:
    return redis_debian_server


def assert_free(server: RedisLockServer, name: str) -> None:
    lock = fencelock.Lock(name, server.url)
    try:
        assert lock.inspect() is None, "the lock is still held"
    finally:
        lock.close()


def script(tmp_path: Path, text: str, mode: int = 0o755) -> Path:
    path = tmp_path / "job.sh"
    path.write_text(text)
    path.chmod(mode)
    return path


CANNOT_EXECUTE = {
    "no shebang": ("echo hi\n", 0o755, "#!"),
    "not executable": ("#!/bin/sh\necho hi\n", 0o644, "chmod +x"),
}


@pytest.mark.parametrize("case", list(CANNOT_EXECUTE), ids=list(CANNOT_EXECUTE))
def test_a_command_that_cannot_be_executed_is_126_and_the_lock_is_released(
    server: RedisLockServer, name: str, tmp_path: Path, case: str
) -> None:
    text, mode, hint = CANNOT_EXECUTE[case]
    path = script(tmp_path, text, mode)
    marker = new_marker()
    with reaped(marker):
        result = run_cli("run", name, "--lock", server.url, "--", str(path), marker=marker)
        assert result.returncode == EXIT_CANNOT_EXECUTE, result.stderr
        line = one_line_error(result.stderr)
        assert str(path) in line and hint in line, line
        assert not leftovers(marker)
    assert_free(server, name)
    # and the next run gets the lock at once
    again = run_cli("run", name, "--lock", server.url, "--timeout", "0", "--", "true")
    assert again.returncode == 0, again.stderr


def test_a_directory_as_the_command_is_126(server: RedisLockServer, name: str, tmp_path: Path) -> None:
    result = run_cli("run", name, "--lock", server.url, "--", str(tmp_path))
    assert result.returncode == EXIT_CANNOT_EXECUTE, result.stderr
    assert str(tmp_path) in one_line_error(result.stderr)
    assert_free(server, name)


def test_a_command_not_found_is_127_in_one_line(server: RedisLockServer, name: str) -> None:
    result = run_cli("run", name, "--lock", server.url, "--", "fencelock-no-such-command")
    assert result.returncode == EXIT_NOT_FOUND, result.stderr
    line = one_line_error(result.stderr)
    assert "fencelock-no-such-command" in line and "PATH" in line, line
    assert_free(server, name)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_between_the_grant_and_the_start_releases_the_lock_and_starts_nothing(
    server: RedisLockServer, name: str, tmp_path: Path, sig: signal.Signals
) -> None:
    # The test hook makes `run` stop right after the grant (before the command starts) and say so
    # by creating a file: the signal lands exactly in that window, every time.
    granted = tmp_path / "granted"
    ran = tmp_path / "ran"
    marker = new_marker()
    with reaped(marker):
        proc = start_cli(
            "run", name, "--lock", server.url, "--", "touch", str(ran),
            marker=marker, env={PAUSE_AFTER_GRANT_ENV: str(granted)},
        )
        wait_for(granted)
        holder = fencelock.Lock(name, server.url)
        assert holder.inspect() is not None, "the hook runs while the lock is held"
        holder.close()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 128 + sig, err
        line = one_line_error(err)
        assert sig.name in line and "not started" in line and "released" in line, line
        assert not ran.exists(), "the command was started"
        assert not leftovers(marker)
    assert_free(server, name)
