"""Helpers for tests that run the ``fencelock`` command as a user would: a real subprocess, and a
check, by pid, that nothing it started is still running after it ended.

Every process the command starts inherits its environment, so each run gets a unique marker
variable; afterwards ``leftovers(marker)`` scans ``/proc/*/environ`` for live processes that carry
it. This finds orphans too (an orphan is re-parented away from the command's pid, so walking the
process tree from it would miss exactly the processes that matter).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

CLI = [sys.executable, "-m", "fencelock.cli"]
WAIT = 60.0  # generous: the machine is shared
MARKER_VAR = "FENCELOCK_TEST_RUN_MARKER"


def new_marker() -> str:
    return uuid.uuid4().hex


def marked_env(marker: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env[MARKER_VAR] = marker
    env.update(extra or {})
    return env


def run_cli(
    *args: str, marker: str | None = None, env: dict[str, str] | None = None, timeout: float = WAIT,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``fencelock ARGS...`` to completion; stdout and stderr captured (stdout is a pipe, not a tty).
    Without a ``marker`` of the caller's, whatever the command left running is killed afterwards
    (a test that checks for leftovers passes its own marker and calls ``leftovers``)."""
    own = marker or new_marker()
    try:
        return subprocess.run(
            [*CLI, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
            env=marked_env(own, env), cwd=cwd,
        )
    finally:
        if marker is None:
            for pid in marked_pids(own):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)


def start_cli(
    *args: str, marker: str, env: dict[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        env=marked_env(marker, env), cwd=cwd,
    )


def marked_pids(marker: str) -> list[int]:
    """Live (not zombie) processes whose environment carries ``marker``."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] != "Z":
            found.append(int(entry.name))
    return found


def catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler installed for ``sig`` (SigCgt in /proc/PID/status)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except OSError:
        pass
    return False


def leftovers(marker: str, settle: float = 10.0) -> list[str]:
    """Processes of this run still alive after ``settle`` seconds (each as 'pid cmdline'), then
    killed by pid so that a failing test leaves nothing behind either."""
    end = time.monotonic() + settle
    pids = marked_pids(marker)
    while pids and time.monotonic() < end:
        time.sleep(0.1)
        pids = marked_pids(marker)
    described = []
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmd = "?"
        described.append(f"{pid} {cmd[:200]}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
    return described


@contextlib.contextmanager
def reaped(marker: str) -> Iterator[None]:
    """Whatever happens in the block, kill every process of this run by pid at the end."""
    try:
        yield
    finally:
        for pid in marked_pids(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)


def wait_for(predicate_path: Path, timeout: float = WAIT) -> None:
    end = time.monotonic() + timeout
    while not predicate_path.exists():
        assert time.monotonic() < end, f"{predicate_path} never appeared"
        time.sleep(0.02)


def one_line_error(stderr: str) -> str:
    """The command's error output must be one line, without a traceback; returns that line."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{stderr}"
    return lines[0]


def blocked_import_env(modules: Sequence[str], where: Path) -> dict[str, str]:
    """Environment for a subprocess in which importing any of ``modules`` fails as if the package
    were not installed (a finder at the front of ``sys.meta_path``, set up by a sitecustomize on
    PYTHONPATH, in the folder ``where``). The package stays installed for every other process."""
    site = where / "noimport"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        f"_BLOCKED = {tuple(modules)!r}\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in _BLOCKED:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, _Block())\n"
    )
    old = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": str(site) + (os.pathsep + old if old else "")}
