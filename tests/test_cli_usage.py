"""One convention for bad usage across every ``fencelock`` subcommand: exit status 64 (EX_USAGE,
sysexits.h), said in each ``--help``; and no tracker wording or broken plurals in what users read."""

from __future__ import annotations

import re

import pytest

from cli_helpers import one_line_error, run_cli
from fencelock import cli
from fencelock._cli_ops import EXIT_USAGE

SUBCOMMANDS = ["run", "status", "release", "produce", "consume", "demo", "chaos", "elect"]

BAD_USAGE = {
    "top level: unknown command": ["no-such-command"],
    "top level: unknown option": ["--bogus"],
    "run: no command": ["run", "x", "--lock", "redis://127.0.0.1:1"],
    "run: unknown option": ["run", "x", "--lock", "redis://127.0.0.1:1", "--bogus", "--", "true"],
    "status: no --lock": ["status", "x"],
    "release: no --force": ["release", "x", "--lock", "sqlite:///unused.db"],
    "produce: no --share": ["produce"],
    "produce: bad number": ["produce", "--share", "s", "--files", "-1"],
    "consume: no --lock": ["consume", "--share", "s", "--db", "d.db"],
    "consume: bad workers": ["consume", "--share", "s", "--lock", "sqlite:///l.db", "--db", "d.db", "--workers", "0"],
    "consume: bad lock URL": ["consume", "--share", "s", "--lock", "ftp://x", "--db", "d.db"],
    "demo: bad consumers": ["demo", "--consumers", "0"],
    "demo: bad lock URL": ["demo", "--lock", "redis://127.0.0.1:notaport"],
    "chaos: bad tier": ["chaos", "--tier", "medium"],
    "chaos: unknown scenario": ["chaos", "--scenario", "no-such-scenario"],
    "elect: no --value": ["elect", "x", "--lock", "sqlite:///l.db", "--", "true"],
    "run: --kill-grace nan": ["run", "x", "--lock", "sqlite:///l.db", "--kill-grace", "nan", "--", "true"],
    "run: --kill-grace inf": ["run", "x", "--lock", "sqlite:///l.db", "--kill-grace", "inf", "--", "true"],
    "elect: --kill-grace nan": ["elect", "x", "--lock", "sqlite:///l.db", "--value", "v", "--kill-grace", "nan",
                                "--", "true"],
    "status: redis protocol 7": ["status", "x", "--lock", "redis://127.0.0.1:1?protocol=7"],
    "status: redis max_connections -1": ["status", "x", "--lock", "redis://127.0.0.1:1?max_connections=-1"],
    "run: unknown postgres option": ["run", "x", "--lock", "postgresql://u@127.0.0.1:1/db?shema=a", "--", "true"],
    "status: postgres port not a number": ["status", "x", "--lock", "postgresql://u@127.0.0.1:port/db"],
}


def test_the_usage_code_is_the_same_constant_everywhere() -> None:
    assert cli.EXIT_USAGE == EXIT_USAGE == 64


@pytest.mark.parametrize("args", list(BAD_USAGE.values()), ids=list(BAD_USAGE))
def test_bad_usage_exits_64_with_an_error_line(args: list[str], tmp_path: object) -> None:
    result = run_cli(*args, cwd=str(tmp_path))
    assert result.returncode == EXIT_USAGE, (args, result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    said = result.stderr + result.stdout  # the demo speaks on its screen (stdout)
    assert re.search(r"^(Error|fencelock(?: \w+)?): ", said, re.M), said


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_each_help_documents_the_usage_code(sub: str) -> None:
    result = run_cli(sub, "--help")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^\s*64\s+bad usage", result.stdout, re.M), result.stdout


def test_the_top_level_help_documents_the_usage_code_and_bare_fencelock_shows_help() -> None:
    bare = run_cli()
    assert bare.returncode == 0, bare.stderr
    assert "Usage:" in bare.stdout and "demo" in bare.stdout
    assert re.search(r"\b64\b.*bad usage", bare.stdout), bare.stdout


@pytest.mark.parametrize("sub", ["", *SUBCOMMANDS])
def test_help_has_no_tracker_wording(sub: str) -> None:
    result = run_cli(*([sub] if sub else []), "--help")
    assert result.returncode == 0
    assert not re.search(r"\b(issue|item|ticket)s? #?\d", result.stdout, re.I), result.stdout


@pytest.mark.parametrize("url", ["REDIS://127.0.0.1:{port}", "postgresql://u@127.0.0.1:{port}/db"])
def test_a_lock_server_not_listening_is_one_line_and_exit_69(url: str, tmp_path: object) -> None:
    """An upper-case scheme reaches the server (no traceback, exit 1); libpq's two-line "connection
    refused ... Is the server running" is told on one line."""
    if url.startswith("postgresql"):
        pytest.importorskip("psycopg")
    from servers import free_port

    result = run_cli("status", "x", "--lock", url.format(port=free_port()), cwd=str(tmp_path))
    assert result.returncode == 69, (result.returncode, result.stderr)
    line = one_line_error(result.stderr)
    assert line.startswith("fencelock: ") and "unreachable" in line, line


def test_a_redis_url_at_a_port_where_something_else_answers_is_69_not_credentials(tmp_path: object) -> None:
    """A typo'd port that lands on another service (here one that answers like an HTTP server) is
    "no Redis there" (69, unreachable), not 77 ("credentials or ACL refused"), and the line says so."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(30)
    port = srv.getsockname()[1]
    done = threading.Event()

    def answer() -> None:
        for _ in range(20):  # bounded: a few connections (connect, retry)
            if done.is_set():
                return
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    conn.recv(1024)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                except OSError:
                    pass

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        result = run_cli("status", "x", "--lock", f"redis://127.0.0.1:{port}", cwd=str(tmp_path))
    finally:
        done.set()
        srv.close()
        thread.join(10)
    assert result.returncode == 69, (result.returncode, result.stderr)
    line = one_line_error(result.stderr)
    assert "not a Redis server" in line, line
